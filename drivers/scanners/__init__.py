"""Barcode scanner drivers (``edge_agent.contracts.Scanner``)."""
