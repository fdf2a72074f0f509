"""The package's version: a leaf of its own, so that modules recording it (run.json, exports, plugin
descriptions) need not import the package root."""

__version__ = "0.1.0"
