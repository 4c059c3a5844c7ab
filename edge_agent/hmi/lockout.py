"""Wrong passwords lock a name for a while (21 CFR 11.300(d): safeguards against attempts to use
someone else's identity). Counted for any name typed, known or not, so a lock tells nothing of
which names exist; kept in memory (a restart of the agent forgets them, as it ends sessions)."""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_FAILURES = 5  # wrong passwords in WINDOW_S that lock the name
WINDOW_S = 300.0
LOCK_S = 300.0
MAX_NAMES = 10_000  # names tracked at most (someone typing random names fills nothing)


class LoginGuard:
    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        lock_s: float = LOCK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lock_s = lock_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked_for(self, name: str) -> float:
        """Seconds the name stays locked; 0 when it may try."""
        until = self._locked_until.get(name.casefold(), 0.0)
        return max(0.0, until - self._clock())

    def failed(self, name: str) -> bool:
        """Count a wrong password; True when this one locks the name."""
        key, now = name.casefold(), self._clock()
        recent = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        recent.append(now)
        if len(self._failures) >= MAX_NAMES and key not in self._failures:
            self._forget(now)
        self._failures[key] = recent
        if len(recent) >= self.max_failures:
            self._locked_until[key] = now + self.lock_s
            del self._failures[key]
            return True
        return False

    def succeeded(self, name: str) -> None:
        self._failures.pop(name.casefold(), None)

    def _forget(self, now: float) -> None:
        for key in [k for k, times in self._failures.items() if now - times[-1] >= self.window_s]:
            del self._failures[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]
        while len(self._failures) >= MAX_NAMES:  # all recent: drop the oldest
            del self._failures[next(iter(self._failures))]
