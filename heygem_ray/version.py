"""The package's version: a leaf, so any module may read it without importing the package's
public surface (which reaches the driver)."""

__version__ = "0.1.0"
