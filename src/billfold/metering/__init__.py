"""Usage events: ingestion (exactly once), rating, rollups, and usage analytics."""
