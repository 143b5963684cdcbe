"""The package version (one place; bundles record it)."""

__version__ = "0.2.0"
