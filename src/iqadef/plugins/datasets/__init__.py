"""Built-in datasets: one module per dataset, registered through ``iqadef_register_datasets`` like a
third-party plugin (docs/datasets.md)."""
