"""Built-in plugins. Every module below metrics/, attacks/ and defences/ is registered through the
same hooks a third-party package uses (see :mod:`iqadef.core.plugins`)."""
