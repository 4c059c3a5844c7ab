"""sd_notify: the messages systemd gets, and silence when not under systemd."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge_agent import systemd

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edge-agent.service"


def test_ready_and_watchdog_reach_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify_ready("running batch B1")
        assert server.recv(1024) == b"READY=1\nSTATUS=running batch B1"
        assert systemd.notify_watchdog("10 units")
        assert server.recv(1024) == b"WATCHDOG=1\nSTATUS=10 units"


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify_ready("x")


def test_service_unit_declares_notify_watchdog_and_directories() -> None:
    directives = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert directives["Type"] == "notify"
    assert directives["WatchdogSec"] and directives["Restart"] == "on-failure"
    assert directives["StateDirectory"] == "edge-agent"
    assert directives["ConfigurationDirectory"] == "edge-agent"
    assert directives["RestartPreventExitStatus"] == "2 3"
    # run does the start-up checks itself: RestartPreventExitStatus does not cover ExecStartPre
    assert "ExecStartPre" not in directives
    assert directives["NoNewPrivileges"] == "yes" and directives["ProtectSystem"] == "strict"
