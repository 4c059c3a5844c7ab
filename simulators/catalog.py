"""Simulator ``type`` names → classes, by import path (kept import-free: the CLI reads it)."""

SIMULATOR_TYPES: dict[str, dict[str, str]] = {
    "printer": {
        "ascii": "simulators.printers.ascii:AsciiPrinterSim",
        "zipher": "simulators.printers.zipher:ZipherPrinterSim",
        "rci": "simulators.printers.rci:RciPrinterSim",
        "zpl": "simulators.printers.zpl:ZplPrinterSim",
    },
    "camera": {
        "tcp-frames": "simulators.cameras.tcp:TcpCameraSim",
        "smart-reader": "simulators.cameras.smart_reader:SmartReaderSim",
        "directory": "simulators.cameras.directory:DirectoryCameraSim",
        "mjpeg": "simulators.cameras.stream:MjpegCameraSim",
    },
    "plc": {
        "modbus-tcp": "simulators.plc.modbus:ModbusPlcSim",
        "modbus-rtu": "simulators.plc.modbus:ModbusRtuPlcSim",
        "opcua": "simulators.plc.opcua:OpcUaPlcSim",
    },
    "l3": {
        "http": "simulators.l3.server:L3Sim",
        "mqtt": "simulators.l3.server:L3Sim",
        "folder": "simulators.l3.server:L3Sim",
    },
}
