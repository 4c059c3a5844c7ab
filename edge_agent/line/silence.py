"""Every wait on a device is bounded: a device silent while work is expected of it stops the line.

While the PLC reports the line running, records in the printer must be printed (confirmations
arrive) and printed units must reach the camera (frames arrive). A device that stays silent
although work is waiting for it has failed in a way its link cannot show: a printer that
acknowledges records but never prints, a camera that is connected but sends nothing. At half the
limit that is an alarm; at the limit a line stop that names the device. A stopped line, a printer
being reconnected or the batch end (which has its own bound) expect nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from edge_agent.errors import LineStopped
from edge_agent.stops import StopReason

log = structlog.get_logger("edge_agent.line")


class DeviceSilence:
    """How long one device has been silent while work was waiting for it."""

    def __init__(self, limit_s: float, waiting_for: str, now: float) -> None:
        self.device = ""  # as the last check named it
        self.limit_s = limit_s
        self.waiting_for = waiting_for  # what it should have sent, e.g. "print confirmations"
        self.since = now
        self.alarmed = False

    def heard(self, now: float) -> None:
        """The device delivered work (hot path: once per confirmation or frame)."""
        self.since = now
        if self.alarmed:
            self.alarmed = False
            log.warning("device_heard_again", device=self.device)

    def check(
        self, now: float, *, device: str, expecting: bool, alarm: Callable[[str], None]
    ) -> None:
        self.device = device
        if not expecting:
            self.since = now
            return
        silent = now - self.since
        if silent >= self.limit_s:
            raise LineStopped(
                StopReason.DEVICE_ERROR,
                f"{self.device}: no {self.waiting_for} for {silent:.1f} s while the line ran and "
                f"work was waiting for it; check the {self.device}",
            )
        if silent >= self.limit_s / 2 and not self.alarmed:
            self.alarmed = True
            log.error(
                "device_silent",
                device=self.device,
                waiting_for=self.waiting_for,
                silent_s=round(silent, 1),
                stop_after_s=self.limit_s,
            )
            alarm(f"device_silent: {self.device}, no {self.waiting_for} for {silent:.1f} s")
