"""Printer driver for Zebra ZPL II label printers (see README.md in this package)."""

from .driver import ZplPrinter

__all__ = ["ZplPrinter"]
