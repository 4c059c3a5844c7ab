"""Config ``type`` → driver class, imported lazily.

Built-in drivers are listed by import path so that the core never imports a vendor module until a
config asks for it. Third-party drivers register under the entry-point groups
``edge_agent.printers``, ``edge_agent.cameras``, ``edge_agent.plcs``, ``edge_agent.forwarders``,
``edge_agent.l3_links``, ``edge_agent.label_printers`` and ``edge_agent.scanners``.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Literal

from edge_agent.contracts import Forwarder, ForwarderFactory, L3Link, L3LinkFactory, LineContext

DeviceKind = Literal["printer", "camera", "plc", "forwarder", "l3", "label_printer", "scanner"]

BUILTIN: dict[DeviceKind, dict[str, str]] = {
    "printer": {
        "ascii": "drivers.printers.ascii.driver:AsciiPrinter",
        "zipher": "drivers.printers.zipher.driver:ZipherPrinter",
        "rci": "drivers.printers.rci.driver:RciPrinter",
        "zpl": "drivers.printers.zpl.driver:ZplPrinter",
    },
    "camera": {
        "tcp-frames": "drivers.cameras.tcp.driver:TcpFrameSource",
        "directory": "drivers.cameras.directory:DirectoryFrameSource",
        "smart-reader": "drivers.cameras.smart_reader.driver:SmartReaderSource",
        "videocapture": "drivers.cameras.videocapture:VideoCaptureSource",
        "mjpeg": "drivers.cameras.mjpeg.driver:MjpegSource",
    },
    "plc": {
        "modbus-tcp": "drivers.plc.modbus.driver:ModbusTcpPlc",
        "modbus-rtu": "drivers.plc.modbus.rtu:ModbusRtuPlc",
        "opcua": "drivers.plc.opcua.driver:OpcUaPlc",
    },
    "forwarder": {
        "mqtt": "drivers.upstream.mqtt:MqttForwarder",
        "epcis-http": "drivers.upstream.http_capture:HttpCaptureForwarder",
    },
    "label_printer": {
        "zpl": "drivers.printers.zpl.driver:ZplLabelPrinter",
    },
    "scanner": {
        "lines": "drivers.scanners.lines:LineScanner",
    },
    "l3": {
        "http": "drivers.l3.http:HttpL3Link",
        "mqtt": "drivers.l3.mqtt:MqttL3Link",
        "folder": "drivers.l3.folder:FolderL3Link",
    },
}

_GROUPS: dict[DeviceKind, str] = {
    "printer": "edge_agent.printers",
    "camera": "edge_agent.cameras",
    "plc": "edge_agent.plcs",
    "forwarder": "edge_agent.forwarders",
    "l3": "edge_agent.l3_links",
    "label_printer": "edge_agent.label_printers",
    "scanner": "edge_agent.scanners",
}


class UnknownDriver(LookupError):
    def __init__(self, kind: DeviceKind, type_name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(type_name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(
            f"unknown {kind} type {type_name!r}; {hint}known types: {', '.join(sorted(known))}"
        )


def known_types(kind: DeviceKind) -> dict[str, str]:
    types = dict(BUILTIN[kind])
    for ep in entry_points(group=_GROUPS[kind]):
        types.setdefault(ep.name, ep.value)
    return types


def driver_class(kind: DeviceKind, type_name: str) -> Any:
    """The driver class for ``type_name``; it carries its pydantic ``Config`` model."""
    types = known_types(kind)
    if type_name not in types:
        raise UnknownDriver(kind, type_name, list(types))
    module_name, _, attr = types[type_name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def make_forwarder(driver: Any, name: str, config: Any, context: LineContext) -> Forwarder:
    """A forwarder from its driver class (``contracts.ForwarderFactory``): what a forwarder
    needs to know about the line comes in ``context``, the same way for every driver."""
    factory: ForwarderFactory = driver
    return factory(name, config, context=context)


def make_l3_link(driver: Any, config: Any, context: LineContext) -> L3Link:
    """The L3 link from its driver class (``contracts.L3LinkFactory``)."""
    factory: L3LinkFactory = driver
    return factory(config, context=context)
