"""sd_notify: the messages systemd gets, and silence when not under systemd."""

from __future__ import annotations

import socket
import threading
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


def test_a_notify_socket_nobody_reads_never_blocks_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent notifies from its event loop: a full datagram queue (systemd busy, a socket
    nobody reads) must drop the message, not stall the loop that beats the PLC heartbeat."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        results: list[bool] = []
        sender = threading.Thread(
            target=lambda: results.extend(systemd.notify_watchdog() for _ in range(200)),
            daemon=True,
        )
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "notify blocked on a full notify socket"
        assert results[0] and not all(results)  # the first went through, the overflow dropped
        assert server.recv(1024) == b"WATCHDOG=1"
        monkeypatch.delenv("NOTIFY_SOCKET")  # a blocked thread (old code) must not outlive this


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
    assert directives["SuccessExitStatus"] == "143"  # SIGTERM: the line stopped cleanly
    # run does the start-up checks itself: RestartPreventExitStatus does not cover ExecStartPre
    assert "ExecStartPre" not in directives
    assert directives["NoNewPrivileges"] == "yes" and directives["ProtectSystem"] == "strict"
