"""Printer driver for the Zipher-style text protocol (see README.md in this package)."""

from .driver import ZipherPrinter

__all__ = ["ZipherPrinter"]
