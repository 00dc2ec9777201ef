"""The package version, in a leaf module so submodules can read it without importing the package root."""

__version__ = "0.3.0"
