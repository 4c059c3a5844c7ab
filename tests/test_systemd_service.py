"""Service hygiene, the unit: sandbox exposure rated by systemd itself, serial ports of USB
adapters allowed, a service user without a login shell."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from simulators.pytest_plugin import require_tool

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge-agent.service"
MAX_EXPOSURE = 2.0


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_rates_the_sandbox_exposure_at_most_2() -> None:
    analyze = require_tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d)", done.stdout)
    assert match, done.stdout[-2000:]
    exposure = float(match[1])
    assert exposure <= MAX_EXPOSURE, done.stdout
    # systemd understood the device list: the serial ports are the only real devices allowed
    allowed = re.search(r"DeviceAllow=.*?: (.*?)\s{2,}", done.stdout)
    assert allowed, done.stdout
    devices = set(allowed[1].split())
    assert {"char-ttyS:rw", "char-ttyUSB:rw", "char-ttyACM:rw"} <= devices, devices
    assert devices <= {"char-ttyS:rw", "char-ttyUSB:rw", "char-ttyACM:rw", "char-rtc:r"}


def test_serial_ports_of_usb_adapters_are_allowed() -> None:
    unit = directives()
    assert unit["DevicePolicy"] == ["closed"]  # the pseudo devices and the list below, no more
    assert sorted(unit["DeviceAllow"]) == ["char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"]
    assert unit["SupplementaryGroups"] == ["dialout"]  # the group owning /dev/tty{S,USB,ACM}*


def test_the_sandbox_directives_hold() -> None:
    unit = directives()
    expected = {
        "User": "edge-agent",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateMounts": "yes",
        "ProtectProc": "invisible",
        "ProtectClock": "yes",
        "RemoveIPC": "yes",
        "SystemCallErrorNumber": "EPERM",  # a denied call fails, the agent stays up and says so
        "CapabilityBoundingSet": "",
        "UMask": "0027",
    }
    assert {key: unit[key][-1] for key in expected} == expected
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "ProcSubset" not in unit  # /proc/locks names who holds the state database


def test_the_service_user_has_no_login_shell() -> None:
    readme = (ROOT / "README.md").read_text()
    service = readme[readme.index("## Running as a service") :]
    (useradd,) = re.findall(r"^sudo useradd .*$", service, re.M)
    assert "--system" in useradd and "--shell /usr/sbin/nologin" in useradd, useradd
    assert useradd.split()[-1] == directives()["User"][0]
    assert "--shell /usr/sbin/nologin" in UNIT.read_text()  # the unit's own install note
