"""PLC verdict link over OPC UA (asyncua client)."""

from drivers.plc.opcua.driver import OpcUaPlc, OpcUaPlcConfig

__all__ = ["OpcUaPlc", "OpcUaPlcConfig"]
