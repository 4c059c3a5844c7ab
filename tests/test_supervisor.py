"""The one reconnect policy (``edge_agent.supervisor``): capped exponential backoff with equal
jitter, the lazy retry window, and a supervisor that logs a lost peer once and its return once."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import DeviceConnectionError
from edge_agent.supervisor import (
    Backoff,
    RetryWindow,
    Supervisor,
    backoff_ceiling,
    backoff_delay,
)

seconds = st.floats(min_value=0.001, max_value=600, allow_nan=False, allow_infinity=False)


@given(attempt=st.integers(0, 10_000), first=seconds, cap=seconds, seed=st.integers())
def test_every_wait_is_within_half_and_all_of_its_capped_ceiling(
    attempt: int, first: float, cap: float, seed: int
) -> None:
    first = min(first, cap)
    ceiling = backoff_ceiling(attempt, first, cap)
    assert ceiling == min(cap, first * 2.0 ** min(attempt, 30))
    assert ceiling <= cap
    wait = backoff_delay(attempt, first, cap, random.Random(seed))
    assert ceiling / 2 <= wait <= ceiling


@given(first=seconds, cap=seconds)
def test_ceilings_grow_then_stay_at_the_cap(first: float, cap: float) -> None:
    first = min(first, cap)
    ceilings = [backoff_ceiling(n, first, cap) for n in range(40)]
    assert ceilings[0] == first
    assert all(a <= b for a, b in itertools.pairwise(ceilings))
    assert ceilings[-1] == cap


def test_waits_are_jittered_and_several_agents_spread_out() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        waits = {backoff_delay(attempt, 0.2, 5.0, rng) for _ in range(20)}
        assert len(waits) > 1, "no jitter"
    agents = [Backoff(0.2, 5.0, rng=random.Random(seed)) for seed in range(10)]
    for _ in range(5):
        first_waits = {round(agent.next_delay(), 6) for agent in agents}
    assert len(first_waits) == 10, "agents retrying in lockstep"


def test_backoff_counts_failures_resets_and_takes_a_capped_floor() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(1))
    assert backoff.ceiling == 0.0
    waits = [backoff.next_delay() for _ in range(6)]
    assert backoff.failures == 6 and backoff.ceiling == 8.0
    assert all(c / 2 <= w <= c for w, c in zip(waits, [1, 2, 4, 8, 8, 8], strict=True))
    assert backoff.next_delay(floor_s=20.0) == 20.0  # a Retry-After above the backoff
    assert backoff.next_delay(floor_s=1000.0) == 32.0  # ... capped at four times the cap
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() <= 1.0
    assert Backoff(9.0, 3.0).first_s == 3.0  # a first wait above the cap is the cap
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


def test_retry_window_is_closed_after_a_failure_until_its_wait_is_over() -> None:
    window = RetryWindow(Backoff(0.2, 0.4, rng=random.Random(3)))
    assert window.remaining() == 0.0
    wait = window.failed()
    assert 0.1 <= wait <= 0.2 and 0 < window.remaining() <= wait
    time.sleep(wait)
    assert window.remaining() == 0.0
    assert 0.2 <= window.failed() <= 0.4  # doubled
    window.succeeded()
    assert window.remaining() == 0.0 and window.backoff.failures == 0


async def test_a_lost_peer_is_logged_once_and_its_return_once() -> None:
    supervisor = Supervisor("plc-1", first_s=0.001, max_s=0.002, key="device")
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            supervisor.lost(DeviceConnectionError("plc-1", "refused"))
            await supervisor.pause()
        assert supervisor.down and supervisor.failures == 5
        away = supervisor.recovered()
        assert supervisor.failures == 0 and not supervisor.down  # the backoff starts over
        assert supervisor.recovered() is None  # already back: nothing more to say
        supervisor.lost("again")
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events.count(("link_lost", "warning")) == 2  # two outages, one line each
    assert events.count(("link_lost_still", "debug")) == 4
    assert events.count(("link_recovered", "info")) == 1
    assert away is not None and away > 0
    back = next(entry for entry in logs if entry["event"] == "link_recovered")
    assert back["device"] == "plc-1" and "down_s" in back


async def test_connect_is_bounded_by_its_attempts_and_backs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise DeviceConnectionError("p", "refused")

    supervisor = Supervisor("p", first_s=2.0, max_s=4.0, rng=random.Random(5))
    with structlog.testing.capture_logs() as logs, pytest.raises(DeviceConnectionError):
        await supervisor.connect(refuse, attempts=3, retry_on=(DeviceConnectionError,))
    assert calls == 3, "attempts are bounded"
    assert len(slept) == 2 and 1.0 <= slept[0] <= 2.0 and 2.0 <= slept[1] <= 4.0
    assert [e["event"] for e in logs].count("link_lost") == 1

    outcomes = iter([DeviceConnectionError("p", "refused"), "up"])

    async def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with structlog.testing.capture_logs() as logs:
        assert await supervisor.connect(flaky, attempts=5, retry_on=(DeviceConnectionError,))
    assert [e["event"] for e in logs] == ["link_lost_still", "link_recovered"]
    with pytest.raises(ValueError):
        await supervisor.connect(flaky, attempts=0, retry_on=(DeviceConnectionError,))


def test_the_forwarder_loop_backs_off_with_the_one_policy() -> None:
    """Equal jitter: never below half the capped ceiling (a full-jitter wait could be ~0 and
    hammer an upstream that is down)."""
    from edge_agent.outbox.forwarding import ForwarderLoop

    loop = ForwarderLoop(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "x",
        backoff_initial_s=1.0,
        backoff_max_s=8.0,
        rng=random.Random(11),
    )
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (30, 8.0)):
        loop.failures = failures
        waits = [loop.delay(None) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (failures, min(waits))
