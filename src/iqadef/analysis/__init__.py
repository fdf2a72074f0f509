"""Analysis of stored rows: the paper's gain and score aggregation, the worst-case protocol
and its verdict."""
