"""Invoice documents: a PDF of every finalized invoice and a CSV of every monthly invoice's lines,
rendered once at finalization, stored, and served byte-identical ever after."""
