"""When a commit waits for company: one fsync for several units, only where it costs nothing.

At full speed the next frames' outcomes and the next printer refill come within milliseconds,
so a commit that waits a few of them shares its fsync instead of paying one of its own (the
writer's ``wait_s``). On a slower line nothing comes within that time: waiting would only add
to every verdict's latency, so a commit goes as soon as it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INFINITE = float("inf")


@dataclass
class CommitCompany:
    """The moving average of the time between frames decides whether commits wait."""

    window_s: float  # the longest wait; the line is at full speed below it
    weight: float = 0.1  # of the newest gap in the moving average
    _last_frame_at: float | None = field(default=None, repr=False)
    _gap_s: float = field(default=INFINITE, repr=False)

    def heard_frame(self, now: float) -> None:
        last, self._last_frame_at = self._last_frame_at, now
        if last is None:
            return
        gap = now - last
        self._gap_s = (
            gap if self._gap_s == INFINITE else self._gap_s + self.weight * (gap - self._gap_s)
        )

    def wait_s(self) -> float:
        """How long a commit may wait for others to share it: the window at full speed, else 0."""
        return self.window_s if self._gap_s < self.window_s else 0.0
