"""Built-in certified defences (registry section ``certified:``): smoothings of the metric, f -> f_s."""
