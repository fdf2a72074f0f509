"""The small core: contracts, plugin manager, registry schema, runner, store, reports."""
