"""The contract: what a plugin is (base classes, parameters, score columns, hooks, the plugin manager,
certificates) and the building blocks plugins share (images and datasets, downloads, weight files, atomic
writes). No run logic: the steps of a run live beside this folder (config, plan, execute, store, analysis,
report)."""
