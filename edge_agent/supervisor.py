"""Reconnect with backoff, written once: every device driver, forwarder and L3 loop uses it.

One policy: a capped exponential backoff with "equal jitter" (half the step fixed, half random,
as AWS's "Exponential Backoff and Jitter" names it). Wait *n* (counting failures from 0) is drawn
from ``[c/2, c]`` with ``c = min(max_s, first_s * 2**n)``. The fixed half keeps a retry from
hammering a peer that just refused; the random half keeps several agents re-dialling one server
after a switch reboot from hitting it in lockstep. A peer's own ``Retry-After`` is a floor,
itself capped so that a wrong header cannot park a link for hours.

Three shapes use the policy:

- ``Backoff``: the waits themselves, for a loop that sleeps between attempts;
- ``RetryWindow``: for a driver that reconnects lazily inside its calls (Modbus, OPC UA): after a
  failed attempt, calls fail at once until the window is over, so a caller polling a dead device
  neither blocks nor hammers it;
- ``Supervisor``: "keep this device or peer connected": retries with ``Backoff``, logs once when
  the peer goes away and once when it is back (with how long it was away), and every wait is
  bounded (the cap, a number of attempts, or the caller's own stop).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

_MAX_EXPONENT = 30  # 2**30 steps: far past any cap, and no float overflow


def backoff_ceiling(attempt: int, first_s: float, max_s: float) -> float:
    """The longest wait after failure number ``attempt`` (0 for the first failure)."""
    return min(max_s, first_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))


def backoff_delay(attempt: int, first_s: float, max_s: float, rng: random.Random) -> float:
    """Wait after failure number ``attempt`` (0 first): equal jitter in ``[c/2, c]``."""
    ceiling = backoff_ceiling(attempt, first_s, max_s)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Backoff:
    """The waits between attempts at one thing; ``failures`` counts failures in a row.

    ``next_delay`` counts a failure and returns how long to wait before the next attempt;
    ``reset`` after a success. ``floor_s`` (a peer's Retry-After) raises one wait, up to
    ``retry_after_cap_s`` (default: four times ``max_s``).
    """

    def __init__(
        self,
        first_s: float,
        max_s: float,
        *,
        rng: random.Random | None = None,
        retry_after_cap_s: float | None = None,
    ) -> None:
        if first_s <= 0 or max_s <= 0:
            raise ValueError(f"backoff needs positive waits, got {first_s}, {max_s}")
        self.first_s = min(first_s, max_s)  # a first wait above the cap is the cap
        self.max_s = max_s
        self.rng = rng or random.Random()
        self.retry_after_cap_s = 4 * max_s if retry_after_cap_s is None else retry_after_cap_s
        self.failures = 0

    @property
    def ceiling(self) -> float:
        """The longest the last wait handed out could be (0 before any failure)."""
        if self.failures == 0:
            return 0.0
        return backoff_ceiling(self.failures - 1, self.first_s, self.max_s)

    def delay(self, floor_s: float | None = None) -> float:
        """The wait after the failures counted so far, without counting one more."""
        wait = backoff_delay(max(self.failures - 1, 0), self.first_s, self.max_s, self.rng)
        if floor_s is not None:
            wait = max(wait, min(floor_s, self.retry_after_cap_s))
        return wait

    def next_delay(self, floor_s: float | None = None) -> float:
        """Count a failure; the wait before the next attempt."""
        self.failures += 1
        return self.delay(floor_s)

    def reset(self) -> None:
        self.failures = 0


class RetryWindow:
    """Backoff for a driver that reconnects inside its calls: after a failed attempt no new one
    is made until the window is over; ``remaining()`` says how long that still is."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._next_attempt = 0.0  # time.monotonic() before which no attempt is made

    def remaining(self) -> float:
        return max(0.0, self._next_attempt - time.monotonic())

    def failed(self) -> float:
        """An attempt failed: open the window; returns its length."""
        wait = self.backoff.next_delay()
        self._next_attempt = time.monotonic() + wait
        return wait

    def succeeded(self) -> None:
        self.backoff.reset()
        self._next_attempt = 0.0


class Supervisor:
    """Keeps one device or peer connected; see the module docstring.

    ``name`` is logged under ``key`` (``device``, ``forwarder``, ``link``); ``lost_event`` is
    logged (warning) once when the peer goes away, ``back_event`` (info) once when it is back,
    failures in between at debug level only.
    """

    def __init__(
        self,
        name: str,
        *,
        first_s: float = 0.2,
        max_s: float = 5.0,
        rng: random.Random | None = None,
        retry_after_cap_s: float | None = None,
        key: str = "device",
        lost_event: str = "link_lost",
        still_event: str | None = None,
        back_event: str = "link_recovered",
        logger: Any = None,
    ) -> None:
        self.name = name
        self.backoff = Backoff(first_s, max_s, rng=rng, retry_after_cap_s=retry_after_cap_s)
        self.down_since: float | None = None  # time.monotonic() when the peer went away
        self.reconnects = 0  # times the peer came back after it was lost (metrics)
        self._key = key
        self._lost_event = lost_event
        self._still_event = still_event or f"{lost_event}_still"
        self._back_event = back_event
        self._log = logger if logger is not None else structlog.get_logger(__name__)

    @property
    def failures(self) -> int:
        return self.backoff.failures

    @failures.setter
    def failures(self, value: int) -> None:
        self.backoff.failures = value

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def lost(self, error: object, **detail: Any) -> bool:
        """The peer failed; logged as lost only the first time. True on that first time."""
        context = {self._key: self.name, "error": str(error), **detail}
        if self.down_since is not None:
            self._log.debug(self._still_event, **context)
            return False
        self.down_since = time.monotonic()
        self._log.warning(self._lost_event, **context)
        return True

    def recovered(self) -> float | None:
        """The peer works again: logged once if it was away; the backoff starts over. Returns
        how long it was away (None if it was not)."""
        self.backoff.reset()
        since, self.down_since = self.down_since, None
        if since is None:
            return None
        self.reconnects += 1
        away = time.monotonic() - since
        self._log.info(self._back_event, **{self._key: self.name}, down_s=round(away, 1))
        return away

    async def pause(self, floor_s: float | None = None) -> float:
        """Count a failure and sleep the backoff (at least ``floor_s``, within its cap)."""
        wait = self.backoff.next_delay(floor_s)
        await asyncio.sleep(wait)
        return wait

    async def connect(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        attempts: int,
        retry_on: tuple[type[BaseException], ...],
    ) -> T:
        """``attempt()`` until it succeeds, at most ``attempts`` times, backing off in between;
        the last failure is raised. Bounded: at most ``attempts`` capped waits."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for number in range(1, attempts + 1):
            try:
                result = await attempt()
            except retry_on as exc:
                self.lost(exc, attempt=number, of=attempts)
                if number == attempts:
                    raise
                await self.pause()
                continue
            self.recovered()
            return result
        raise AssertionError("unreachable")
