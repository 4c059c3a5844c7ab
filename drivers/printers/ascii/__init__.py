"""Printer driver for the "ascii" line protocol (see README.md in this package)."""

from .driver import AsciiPrinter

__all__ = ["AsciiPrinter"]
