"""Built-in scores: per-image measures (ImageScore) and per-group summaries (SummaryScore)."""
