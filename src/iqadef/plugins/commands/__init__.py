"""Built-in commands provided as plugins (``iqadef data``, ``iqadef export``), registered through
``iqadef_register_commands`` like a third-party plugin's."""
