"""The audit trail's read side: ``GET /admin/v1/audit-events`` and ``billfold audit list``.

Rows are written by ``kit/audit.py`` in the transaction of every write (HTTP and CLI); this
package only reads them. It sits just above ``teams/`` for the operator's auth dependency.
"""
