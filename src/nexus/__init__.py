"""Nexus: a microVM manager that gives every AI agent a computer of its own."""

__version__ = "0.1.0"
__all__ = ["__version__"]
