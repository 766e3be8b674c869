"""Billfold: usage billing for API platforms."""

__version__ = "0.1.0"
