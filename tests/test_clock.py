"""The clock checks, with the host's synchronisation status faked at the system boundary only.

``chronyc`` and ``timedatectl`` are fake executables on PATH (shell scripts printing what the
real tools print, in their real formats, and recording how they were called); the kernel's answer
is a fake adjtimex(2) filling the real ``struct timex`` at the ctypes boundary; the wall clock of
the jump tests is a callable standing in for ``time.time``. Everything between is the agent's
own code, with alarms in a real state database.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from edge_agent import clock
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.clock import ClockGuard, EventClock, Timex
from edge_agent.config.models import ClockSection
from edge_agent.db import open_db, write
from edge_agent.ledger import Ledger, UnitOutcome
from tests.helpers.waiting import until

# chronyc -c -n tracking, as chrony 4.x prints it: the system clock 0.000123456 s fast
CHRONY_SYNCED = (
    "C0A80001,192.168.0.1,3,1767225600.123456789,-0.000123456,-0.000020000,0.000050000,"
    "-12.345,-0.001,0.020,0.001200000,0.000400000,64.2,Normal\n"
)
CHRONY_UNSYNCED = (
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,"
    "1.000000000,1.000000000,0.0,Not synchronised\n"
)
CHRONY_FAR_OFF = CHRONY_SYNCED.replace("-0.000123456", "4.500000000")  # 4.5 s slow
CHRONY_LOCAL = CHRONY_SYNCED.replace("C0A80001,192.168.0.1", "7F7F0101,")
TIMEDATED_SYNCED = (
    "Timezone=Europe/Berlin\nLocalRTC=no\nCanNTP=yes\nNTP=yes\nNTPSynchronized=yes\n"
    "TimeUSec=Thu 2026-01-01 12:00:00 CET\nRTCTimeUSec=Thu 2026-01-01 12:00:00 CET\n"
)
TIMESYNC_STATUS = """       Server: 192.168.0.1 (ntp.plant.example)
Poll interval: 34min 8s (min: 32s; max 34min 8s)
         Leap: normal
      Version: 4
      Stratum: 2
    Reference: C0248F8A
    Precision: 1us (-25)
Root distance: 1.234ms (max: 5s)
       Offset: -2.5ms
        Delay: 1.133ms
       Jitter: 1.049ms
 Packet count: 5
    Frequency: -12.345ppm
"""


class FakeHost:
    """A folder of fake host tools that is the whole PATH of the process."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        bindir.mkdir()

    def tool(self, name: str, answers: dict[str, tuple[int, str]], *, sleep_s: float = 0) -> None:
        """``answers``: first argument (or "*") -> (exit status, stdout)."""
        cases = []
        for i, (arg, (status, out)) in enumerate(answers.items()):
            (self.bindir / f"{name}.{i}.out").write_text(out)
            pattern = "*" if arg == "*" else f"*{arg}*"
            cases.append(f'  {pattern}) /bin/cat "{self.bindir}/{name}.{i}.out"; exit {status};;')
        script = (
            "#!/bin/sh\n"
            f'echo "$*" >> "{self.bindir}/{name}.calls"\n'
            + (f"/bin/sleep {sleep_s}\n" if sleep_s else "")
            + 'case "$*" in\n'
            + "\n".join(cases)
            + '\n  *) echo "unexpected arguments: $*" >&2; exit 64;;\nesac\n'
        )
        path = self.bindir / name
        path.write_text(script)
        path.chmod(0o755)

    def calls(self, name: str) -> list[str]:
        path = self.bindir / f"{name}.calls"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fake.bindir))  # nothing of the real host is found
    return fake


@pytest.fixture
def alarms(tmp_path: Path) -> Iterator[AlarmBoard]:
    with contextlib.closing(open_db(tmp_path / "state")) as conn:
        yield AlarmBoard(conn)


def active(board: AlarmBoard) -> dict[str, str]:
    return {a.kind: a.message for a in board.active()}


def fake_adjtimex(
    *, status: int = 0x2001, maxerror_us: int = 8000, esterror_us: int = 120, state: int = 0
) -> clock.Adjtimex:
    """What the kernel writes into struct timex (status 0x2001 = STA_PLL | STA_NANO, synced)."""

    def adjtimex(tx: Timex) -> int:
        tx.status, tx.maxerror, tx.esterror = status, maxerror_us, esterror_us
        return state

    return adjtimex


def denied(tx: Timex) -> int:
    raise OSError(errno.EPERM, "Operation not permitted")  # seccomp under the systemd unit


def guard(
    section: ClockSection | None = None, alarms: AlarmBoard | None = None, **kw: object
) -> ClockGuard:
    section = section or ClockSection(probe_timeout_s=2.0)
    adjtimex = kw.pop("adjtimex", denied)
    probes = clock.default_probes(section, adjtimex)  # type: ignore[arg-type]
    return ClockGuard(section, alarms, probes=probes, **kw)  # type: ignore[arg-type]


# --- chrony ------------------------------------------------------------------------------------


async def test_chrony_synchronised_reports_its_offset(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_SYNCED)})
    status = await guard().check()
    assert status.synchronised
    assert status.reading is not None and status.reading.source == "chrony"
    assert status.offset_s == pytest.approx(0.000123456)  # fast = ahead of NTP time
    assert status.reading.error_bound_s == pytest.approx(0.0012 / 2 + 0.0004)
    assert host.calls("chronyc") == ["-c -n tracking"]


async def test_chrony_not_synchronised_raises_the_alarm_and_refuses_orders(
    host: FakeHost, alarms: AlarmBoard
) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_UNSYNCED)})
    g = guard(ClockSection(on_unsynchronised="refuse"), alarms)
    status = await g.check()
    assert not status.synchronised
    message = active(alarms)[AlarmKind.CLOCK_UNSYNCHRONISED]
    assert "chrony: NOT synchronised" in message and "Not synchronised" in message
    (problem,) = g.start_problems()
    assert "not synchronised" in problem and "chrony" in problem

    host.tool("chronyc", {"tracking": (0, CHRONY_SYNCED)})  # chronyd has found its server
    await g.check()
    assert g.start_problems() == []
    assert AlarmKind.CLOCK_UNSYNCHRONISED not in active(alarms)
    (history,) = alarms.unacknowledged()  # raised once, cleared: an operator still sees it
    assert history.kind == AlarmKind.CLOCK_UNSYNCHRONISED and history.cleared_at is not None


async def test_policy_alarm_never_refuses_a_start(host: FakeHost, alarms: AlarmBoard) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_UNSYNCED)})
    g = guard(ClockSection(on_unsynchronised="alarm"), alarms)
    await g.check()
    assert g.start_problems() == []
    assert AlarmKind.CLOCK_UNSYNCHRONISED in active(alarms)


async def test_a_synchronised_clock_too_far_off_counts_as_unsynchronised(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_FAR_OFF)})
    g = guard(ClockSection(max_offset_ms=1000, on_unsynchronised="refuse"))
    status = await g.check()
    assert status.reading is not None and status.reading.synchronised
    assert not status.synchronised
    assert status.offset_s == pytest.approx(-4.5)
    assert "4.500 s off its reference" in g.start_problems()[0]


async def test_chronys_local_reference_is_no_time_source(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_LOCAL)})
    status = await guard().check()
    assert not status.synchronised
    assert "local reference only" in status.describe()


# --- systemd-timesyncd -------------------------------------------------------------------------


async def test_without_chronyd_timesyncd_answers_with_its_offset(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (1, "506 Cannot talk to daemon\n")})
    host.tool(
        "timedatectl", {"timesync-status": (0, TIMESYNC_STATUS), "show": (0, TIMEDATED_SYNCED)}
    )
    status = await guard().check()
    assert status.synchronised
    assert status.reading is not None and status.reading.source == "systemd-timesyncd"
    assert status.offset_s == pytest.approx(-0.0025)
    assert status.reading.error_bound_s == pytest.approx(0.001234)
    assert "ntp.plant.example" in status.describe()
    assert (
        "chronyc -c -n tracking failed (exit 1: 506 Cannot talk to daemon)"
        in (status.unavailable[0])
    )


async def test_timedated_says_not_synchronised(host: FakeHost, alarms: AlarmBoard) -> None:
    unsynced = TIMEDATED_SYNCED.replace("NTPSynchronized=yes", "NTPSynchronized=no")
    host.tool(
        "timedatectl",
        {"timesync-status": (1, "Failed to query server: ...\n"), "show": (0, unsynced)},
    )
    status = await guard(alarms=alarms).check()
    assert not status.synchronised
    assert status.reading is not None and status.reading.source == "timedated"
    assert "chronyc is not installed" in status.unavailable[0]
    assert "NTPSynchronized=no" in active(alarms)[AlarmKind.CLOCK_UNSYNCHRONISED]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("+128us", 128e-6),
        ("-2.5ms", -0.0025),
        ("+1min 2.500000s", 62.5),
        ("-1h 2min", -3720.0),
        ("+980µs", 980e-6),
    ],
)
def test_systemd_time_spans(text: str, seconds: float) -> None:
    assert clock.parse_timespan(text) == pytest.approx(seconds)


def test_a_time_span_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError):
        clock.parse_timespan("1.2 parsecs")


# --- the kernel --------------------------------------------------------------------------------


async def test_with_no_time_daemon_the_kernel_tells(host: FakeHost) -> None:
    g = guard(adjtimex=fake_adjtimex(status=0x2001, maxerror_us=8000))
    status = await g.check()
    assert status.synchronised
    assert status.reading is not None and status.reading.source == "kernel"
    assert status.reading.error_bound_s == pytest.approx(0.008)
    assert status.offset_s is None  # the kernel does not know the reference's time


async def test_the_kernels_sta_unsync_is_not_synchronised(host: FakeHost) -> None:
    g = guard(adjtimex=fake_adjtimex(status=0x0041, maxerror_us=16_000_000, state=5))
    status = await g.check()
    assert not status.synchronised
    assert "STA_UNSYNC" in status.describe()


async def test_nothing_can_tell_is_not_synchronised_and_names_every_source(
    host: FakeHost, alarms: AlarmBoard
) -> None:
    g = guard(ClockSection(on_unsynchronised="refuse"), alarms, adjtimex=denied)
    status = await g.check()
    assert status.reading is None and not status.synchronised
    (problem,) = g.start_problems()
    for why in ("chronyc is not installed", "timedatectl is not installed", "Operation not"):
        assert why in problem


async def test_a_tool_that_hangs_is_given_up_and_the_next_source_asked(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_SYNCED)}, sleep_s=30)
    g = guard(ClockSection(probe_timeout_s=0.5), adjtimex=fake_adjtimex())
    status = await asyncio.wait_for(g.check(), 10)
    assert status.reading is not None and status.reading.source == "kernel"
    assert "chronyc did not answer within 0.5 s" in status.unavailable[0]


def test_struct_timex_matches_the_kernels_and_the_real_call_reads_it() -> None:
    if sys.platform != "linux":
        pytest.skip("adjtimex(2) is Linux's")
    assert ctypes.sizeof(Timex) == (208 if ctypes.sizeof(ctypes.c_long) == 8 else 128)
    try:
        reading = clock.kernel_reading()  # the real adjtimex(2), read-only
    except clock.SourceUnavailable as exc:
        assert "Operation not permitted" in str(exc)  # a container's seccomp may deny it
        return
    assert reading.source == "kernel"
    assert "maximum error" in reading.detail


def test_the_sources_come_in_the_configured_order(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_UNSYNCED)})
    section = ClockSection(sources=["kernel", "chrony"])
    status = asyncio.run(guard(section, adjtimex=fake_adjtimex()).check())
    assert status.reading is not None and status.reading.source == "kernel"
    assert host.calls("chronyc") == []


# --- jumps and the periodic check -------------------------------------------------------------


class Wall:
    """A wall clock that follows the monotonic clock and can be stepped like `date -s`."""

    def __init__(self) -> None:
        self.step = 0.0

    def __call__(self) -> float:
        return clock.boot_time() + 1_767_225_600.0 + self.step


async def test_a_wall_clock_step_raises_clock_jump_until_the_clock_is_confirmed(
    host: FakeHost, alarms: AlarmBoard
) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_SYNCED)})
    wall = Wall()
    g = guard(ClockSection(jump_threshold_ms=500), alarms, wall=wall)
    assert g.sample() is None  # the baseline
    wall.step += 0.2  # slewing and small corrections stay below the threshold
    assert g.sample() is None
    wall.step -= 3600.2  # somebody set the clock back an hour
    step = g.sample()
    assert step == pytest.approx(-3600.2, abs=0.05)
    assert "jumped -3600.2" in active(alarms)[AlarmKind.CLOCK_JUMP]
    assert g.sample() is None  # one step, one alarm
    await g.check()  # chrony says the clock is right now: the jump alarm is cleared
    assert AlarmKind.CLOCK_JUMP not in active(alarms)
    assert any(a.kind == AlarmKind.CLOCK_JUMP for a in alarms.unacknowledged())


async def test_run_checks_periodically_and_at_once_after_a_jump(
    host: FakeHost, alarms: AlarmBoard
) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_UNSYNCED)})
    wall = Wall()
    section = ClockSection(interval_s=3600, jump_check_interval_s=0.05, jump_threshold_ms=500)
    g = guard(section, alarms, wall=wall)
    task = asyncio.create_task(g.run())
    try:
        await until(
            lambda: AlarmKind.CLOCK_UNSYNCHRONISED in active(alarms), "unsynchronised alarm"
        )
        host.tool("chronyc", {"tracking": (0, CHRONY_SYNCED)})
        wall.step += 10.0  # chronyd steps the clock as it synchronises: a jump
        await until(
            lambda: AlarmKind.CLOCK_JUMP in {a.kind for a in alarms.unacknowledged()}, "jump"
        )
        # not an hour later: the jump made the guard check at once, and it found the clock good
        await until(lambda: not active(alarms), "alarms cleared")
        assert len(host.calls("chronyc")) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_check_false_never_asks_and_never_refuses(host: FakeHost) -> None:
    host.tool("chronyc", {"tracking": (0, CHRONY_UNSYNCED)})
    g = guard(ClockSection(check=False, on_unsynchronised="refuse"))
    await asyncio.wait_for(g.run(), 1)
    assert g.start_problems() == [] and host.calls("chronyc") == []


# --- event times -----------------------------------------------------------------------------


def test_event_times_never_go_backwards_within_an_order() -> None:
    times = iter([1000.0, 1001.0, 400.0, 401.0, 1002.5, 5.0])
    events = EventClock(wall=lambda: next(times))
    got = [events.now("O1") for _ in range(5)]
    assert got == [1000.0, 1001.0, 1001.0, 1001.0, 1002.5]  # held through the backward step
    assert events.now("O2") == 5.0  # each order has its own history


def test_an_order_resumed_after_a_restart_keeps_its_history(tmp_path: Path) -> None:
    with contextlib.closing(open_db(tmp_path / "state")) as conn:
        with write(conn):
            conn.execute(
                "INSERT INTO outbox (event_id, batch_id, kind, payload, created_at) "
                "VALUES ('e1', 'O1', 'commissioning', '{}', 2000.0)"
            )
            conn.execute(
                "INSERT INTO units (batch_id, trigger, verdict, reason, decided_at) "
                "VALUES ('O1', 1, 'pass', 'ok', 2001.0)"
            )
        last = clock.last_event_time(conn, "O1")
        assert clock.last_event_time(conn, "O2") is None
    assert last == 2001.0
    events = EventClock(wall=lambda: 1500.0)  # the clock came back from the restart wrong
    events.seed("O1", last)
    assert events.now("O1") == 2001.0
    assert events.datetime("O1").utcoffset() is not None  # aware, for EPCIS eventTime


def test_alarm_write_failures_do_not_stop_the_check(tmp_path: Path, host: FakeHost) -> None:
    class Broken:
        def raise_(self, kind: AlarmKind, message: str) -> object:
            raise sqlite3.OperationalError("disk I/O error")

        def clear(self, kind: str) -> object:
            raise sqlite3.OperationalError("disk I/O error")

    host.tool("chronyc", {"tracking": (0, CHRONY_UNSYNCED)})
    g = ClockGuard(ClockSection(), Broken(), probes=clock.default_probes(ClockSection(), denied))
    assert not asyncio.run(g.check()).synchronised


def test_the_ledgers_events_never_go_backwards_within_a_batch_even_across_a_restart(
    tmp_path: Path,
) -> None:
    """The ledger takes its event times from the event clock: a wall clock stepped back an hour
    between two units, and again before a restart, leaves eventTime and the recorded times in
    order."""
    wall = iter([10_000.0, 10_001.0, 10_002.0, 6_400.0, 6_401.0, 6_402.0])
    state = tmp_path / "state"

    def ledger(conn: sqlite3.Connection, now: Iterator[float]) -> Ledger:
        return Ledger(
            conn,
            read_point="urn:epc:id:sgln:0950600.01340.T",
            company_prefix_length=7,
            event_clock=EventClock(wall=lambda: next(now)),
        )

    def unit(book: Ledger, trigger: int) -> None:
        batch = book.open_batch("B1", "09506000134352", "LOT1", "281200", 10)
        book.ensure_allocated(batch, 1, length=10, alphabet="0123456789")
        taken = book.take_for_print(batch)
        assert taken is not None
        book.mark_printed(batch, taken[1])
        book.commit_outcomes(batch, [UnitOutcome(trigger, True, "ok", taken[1])])

    with contextlib.closing(open_db(state)) as conn:
        unit(ledger(conn, wall), 1)  # at 10 000 s
        unit(ledger(conn, iter([6_000.0] * 3)), 2)  # the clock stepped back: still 10 002 s
    with contextlib.closing(open_db(state)) as conn:  # a restart, the clock still wrong
        unit(ledger(conn, iter([5_000.0] * 3)), 3)
        times = [t for (t,) in conn.execute("SELECT decided_at FROM units ORDER BY id")]
        events = [
            datetime.fromisoformat(json.loads(p)["eventTime"]).timestamp()
            for (p,) in conn.execute("SELECT payload FROM outbox ORDER BY seq")
        ]
    assert times == sorted(times) and times[0] == 10_002.0
    assert events == sorted(events) and len(events) == 3
