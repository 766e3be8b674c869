"""Telling the outside world: webhook endpoints, their deliveries, and the deliverer that sends
the outbox's messages (``outbox/``) from the serving processes."""
