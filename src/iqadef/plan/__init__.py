"""The plan: a run's cells, their identity (plugins, image content, batch) and the units still to do."""
