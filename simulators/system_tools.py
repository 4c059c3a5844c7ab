"""System programs and libraries the tests (and integrators' tests) use beside Python packages.

Each is found in one place, with the Debian package that provides it, so a test that needs one
can say exactly what to install. ``simulators.pytest_plugin.require_tool`` turns a missing tool
into a skip naming the package (or a failure when ``EDGE_AGENT_CI=1``).
"""

from __future__ import annotations

import ctypes.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass


def _mosquitto() -> str | None:
    from simulators.upstream.mosquitto import find_mosquitto

    return find_mosquitto()


@dataclass(frozen=True)
class SystemTool:
    name: str
    package: str  # Debian package that provides it
    purpose: str
    find: Callable[[], str | None]

    @property
    def install(self) -> str:
        return f"apt-get install {self.package}"


TOOLS: dict[str, SystemTool] = {
    tool.name: tool
    for tool in (
        SystemTool("mosquitto", "mosquitto", "a real MQTT broker", _mosquitto),
        SystemTool("mbpoll", "mbpoll", "an external Modbus master", lambda: shutil.which("mbpoll")),
        SystemTool(
            "systemd-analyze",
            "systemd",
            "systemd's unit analyser (security exposure of the service unit)",
            lambda: shutil.which("systemd-analyze"),
        ),
        SystemTool(
            "chromium",
            "chromium",
            "a real browser for the operator screen tests (Playwright drives it)",
            lambda: shutil.which("chromium"),
        ),
        SystemTool(
            "libdmtx",
            "libdmtx0b",
            "the libdmtx decoder backend (pylibdmtx)",
            lambda: ctypes.util.find_library("dmtx"),
        ),
    )
}


def find_tool(name: str) -> str | None:
    """Where the tool is (path or library name), or None when it is not installed."""
    return TOOLS[name].find()
