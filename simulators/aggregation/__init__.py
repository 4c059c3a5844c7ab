"""Simulated aggregation devices: the case packer with its case camera and case-reject PLC, the
label printers with their label cameras, and the pallet scanner (``station.py`` wires them)."""
