"""Modbus PLC link (TCP and RTU): the agent writes verdicts into a ring the PLC's reject gate reads."""

from drivers.plc.modbus.driver import ModbusPlcBase, ModbusTcpPlc, ModbusTcpPlcConfig
from drivers.plc.modbus.rtu import ModbusRtuPlc, ModbusRtuPlcConfig

__all__ = [
    "ModbusPlcBase",
    "ModbusRtuPlc",
    "ModbusRtuPlcConfig",
    "ModbusTcpPlc",
    "ModbusTcpPlcConfig",
]
