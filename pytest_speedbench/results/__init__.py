"""Stage 5, results: the results document and its storage, gates, comparison, tables, exports and reports."""
