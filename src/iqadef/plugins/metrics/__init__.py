"""Built-in metrics: one module per plugin, each with an ``iqadef_register_metrics`` hook."""
