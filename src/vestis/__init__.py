"""vestis: attribute-aware search for fashion catalogues."""

__version__ = "0.1.0"
