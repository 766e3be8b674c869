"""The team web console: server-rendered pages under ``/console`` for a team's people
(docs/console.md)."""
