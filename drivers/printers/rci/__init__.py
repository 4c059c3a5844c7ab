"""Printer driver for the buffered remote-field binary protocol "rci" (see README.md here)."""

from .driver import RciPrinter

__all__ = ["RciPrinter"]
