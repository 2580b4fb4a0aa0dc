"""Stage 4, metrics: pure maths from records to the results' numbers (no pytest, no files, no HTTP)."""
