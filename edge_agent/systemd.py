"""sd_notify without dependencies: READY=1, WATCHDOG=1 and STATUS= to systemd.

A no-op when NOTIFY_SOCKET is unset (terminal, tests, demo). The watchdog is fed by the line's
heartbeat loop, which only runs while the event loop and the PLC link work, so a hung agent is
restarted by systemd instead of being kept alive by a timer beside it; while no order runs the
daemon's own idle loop feeds it (``app.Agent``). STOPPING=1 is sent when a signal asks the agent
to stop; a line stop holds the order and the daemon stays up.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Never wait: this runs on the event loop that drives the PLC heartbeat, and a notify
        # socket whose reader is behind (its queue holds net.unix.max_dgram_qlen datagrams,
        # often 10) would block it. A message systemd cannot take now is dropped.
        sock.setblocking(False)
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def notify_ready(status: str) -> bool:
    return notify(f"READY=1\nSTATUS={status}")


def notify_watchdog(status: str | None = None) -> bool:
    return notify("WATCHDOG=1" + (f"\nSTATUS={status}" if status else ""))


def notify_stopping(status: str) -> bool:
    return notify(f"STOPPING=1\nSTATUS={status}")


def notify_status(status: str) -> bool:
    return notify(f"STATUS={status}")
