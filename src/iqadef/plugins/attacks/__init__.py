"""Built-in attacks: one module per plugin, each with an ``iqadef_register_attacks`` hook."""
