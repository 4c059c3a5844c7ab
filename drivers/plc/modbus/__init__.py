"""Modbus TCP PLC link: the agent writes verdicts into a ring the PLC's reject gate reads."""

from drivers.plc.modbus.driver import ModbusTcpPlc, ModbusTcpPlcConfig

__all__ = ["ModbusTcpPlc", "ModbusTcpPlcConfig"]
