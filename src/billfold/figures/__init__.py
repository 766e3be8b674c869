"""The writes that move a team's figures (spend, live credit, limits) and who is told of them.

Just above ``kit``, beside ``outbox``: every domain that moves a figure -- ingestion and
cancellation (``metering/``), the ledger (``ledger/``: grants, adjustments, top-ups, refunds,
expiries), the limits (``spend/``), cycle close (``invoicing/``) -- notes the move here, and the
implementations above (the crossing detection, ``spend/crossings.py``; auto top-up) are handed in
by ``wiring.py``. See :mod:`billfold.figures.watch`.
"""
