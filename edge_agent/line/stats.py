"""Live counters of a running batch, read by the progress display and the benchmark."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LineStats:
    started: float = field(default_factory=time.monotonic)
    units: int = 0
    passed: int = 0
    rejected: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # frame received → verdict written
    consecutive_rejects: int = 0
    repeated_frames: int = 0  # second frames for a trigger already decided: ignored, logged
    alarms: list[str] = field(default_factory=list)
    first_verdict_at: float | None = None
    last_verdict_at: float | None = None

    def record(self, passed: bool, reason: str, latency_ms: float) -> None:
        self.units += 1
        self.latencies_ms.append(latency_ms)
        self.last_verdict_at = time.monotonic()
        if self.first_verdict_at is None:
            self.first_verdict_at = self.last_verdict_at
        if passed:
            self.passed += 1
            self.consecutive_rejects = 0
        else:
            self.rejected += 1
            self.by_reason[reason] += 1
            self.consecutive_rejects += 1

    def units_per_min(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.units * 60.0 / elapsed if elapsed > 0 else 0.0

    def sustained_units_per_min(self) -> float:
        """Rate between the first and the last verdict: start-up and batch end not counted."""
        if self.first_verdict_at is None or self.last_verdict_at is None or self.units < 2:
            return 0.0
        span = self.last_verdict_at - self.first_verdict_at
        return (self.units - 1) * 60.0 / span if span > 0 else 0.0
