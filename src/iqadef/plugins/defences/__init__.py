"""Built-in defences: one module per plugin, each with an ``iqadef_register_defences`` hook."""
