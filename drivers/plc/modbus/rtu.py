"""The PLC verdict link over Modbus RTU on a serial line (RS-232 or RS-485), same register map.

The agent is the bus master; the PLC is one slave at ``device_id``. Nothing on a serial line says
"connected": a pulled cable shows as requests that time out (``DeviceTimeout``), and an unplugged
USB adapter as a link error from the serial port (``DeviceConnectionError``). Either stops the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.client.base import ModbusBaseClient

from drivers.config import validated
from drivers.plc.modbus.driver import ModbusCommonConfig, ModbusPlcBase


class ModbusRtuPlcConfig(ModbusCommonConfig):
    """``[plc]`` section for ``type = "modbus-rtu"``."""

    type: Literal["modbus-rtu"] = Field(description="Driver type: the PLC speaks Modbus RTU")
    device: str = Field(
        min_length=1,
        description="Serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/... (stable name)",
    )
    baudrate: Literal[
        1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600
    ] = Field(19200, description="Bits per second; must match the PLC's serial port")
    bytesize: Literal[7, 8] = Field(8, description="Data bits; RTU needs 8")
    parity: Literal["N", "E", "O"] = Field(
        "E", description="Parity: E(ven) is the Modbus default, N(one) needs stopbits = 2 by spec"
    )
    stopbits: Literal[1, 2] = Field(1, description="Stop bits")
    device_id: int = Field(
        1, ge=1, le=247, description="Modbus slave address of the PLC on the bus (1..247)"
    )


class ModbusRtuPlc(ModbusPlcBase):
    """PlcLink over Modbus RTU."""

    Config: ClassVar[type[ModbusRtuPlcConfig]] = ModbusRtuPlcConfig
    transport = "Modbus RTU"

    def __init__(self, name: str, config: ModbusRtuPlcConfig | Mapping[str, Any]) -> None:
        super().__init__(name)
        self.config: ModbusRtuPlcConfig = validated(ModbusRtuPlcConfig, name, config)

    def _address(self) -> str:
        c = self.config
        return f"{c.device} ({c.baudrate} {c.bytesize}{c.parity}{c.stopbits}, slave {c.device_id})"

    def _new_client(self) -> ModbusBaseClient:
        cfg = self.config
        return AsyncModbusSerialClient(
            cfg.device,
            baudrate=cfg.baudrate,
            bytesize=cfg.bytesize,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            name=f"plc:{self.name}",
            timeout=cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # 0 disables pymodbus's background reconnect task
            trace_connect=self._on_link_change,
        )
