"""The versioned price book: SKUs and their unit prices over time."""
