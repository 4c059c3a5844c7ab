"""The system clock: is it synchronised, did it jump, and event times that never go backwards.

Event times are evidence (EPCIS ``eventTime``, the ledger's transitions, the audit trail), so the
agent checks the clock the way the host keeps it:

- **chrony** (``chronyc -c -n tracking``): leap status, reference, and the offset of the system
  clock from NTP time;
- **systemd-timesyncd** (``timedatectl show``: ``NTPSynchronized``, which timedated reads from the
  kernel; ``timedatectl timesync-status``: timesyncd's last offset);
- **the kernel** (``adjtimex(2)`` read-only: ``STA_UNSYNC`` and the maximum error), which needs no
  daemon. Under the systemd unit it is denied (``adjtimex`` is a ``@clock`` call), so there the
  time daemon is asked.

The first source in ``[clock] sources`` that answers decides. ``ClockGuard.run()`` checks at start
and every ``interval_s``, raises ``clock_unsynchronised`` while the clock is not synchronised (or
nothing can tell), and samples the wall clock against the monotonic (boot-time) clock every
``jump_check_interval_s``: a step beyond ``jump_threshold_ms`` raises ``clock_jump``.
``ClockGuard.start_problems()`` is the hook the command path calls before it starts an order
(``on_unsynchronised = "refuse"``). ``EventClock.now(order)`` gives event times that never go
backwards within an order, whatever the wall clock does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from edge_agent.alarms import AlarmKind
from edge_agent.config.models import ClockSection

log = structlog.get_logger("edge_agent.clock")

Seconds = Callable[[], float]


def boot_time() -> float:
    """Monotonic seconds that keep counting while the machine is suspended (CLOCK_BOOTTIME):
    a resume must not look like a wall-clock jump."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


# --- what a source says -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClockReading:
    """One source's view of the clock."""

    source: str  # chrony | systemd-timesyncd | timedated | kernel
    synchronised: bool
    offset_s: float | None  # system clock minus reference time (+ = ahead); None = not known
    error_bound_s: float | None  # maximum error the source gives (root distance, maxerror)
    detail: str


class SourceUnavailable(Exception):
    """This source cannot tell (not installed, daemon not running, denied, no answer)."""


@dataclass(frozen=True)
class ClockStatus:
    """The verdict of one check: the reading that decided, or why nothing could tell."""

    reading: ClockReading | None
    max_offset_s: float
    unavailable: tuple[str, ...] = ()  # "source: why" for each source that could not tell
    checked_at: float = 0.0

    @property
    def synchronised(self) -> bool:
        r = self.reading
        if r is None or not r.synchronised:
            return False
        return r.offset_s is None or abs(r.offset_s) <= self.max_offset_s

    @property
    def offset_s(self) -> float | None:
        return None if self.reading is None else self.reading.offset_s

    def describe(self) -> str:
        r = self.reading
        if r is None:
            return (
                "no source can tell whether the clock is synchronised ("
                + "; ".join(self.unavailable)
                + ")"
            )
        offset = "" if r.offset_s is None else f", offset {r.offset_s * 1000:+.3f} ms"
        if r.synchronised and not self.synchronised:
            return (
                f"{r.source}: synchronised but {abs(r.offset_s or 0):.3f} s off its reference, "
                f"more than max_offset_ms ({self.max_offset_s * 1000:g}){offset} ({r.detail})"
            )
        state = "synchronised" if r.synchronised else "NOT synchronised"
        return f"{r.source}: {state}{offset} ({r.detail})"

    def as_dict(self) -> dict[str, object]:
        r = self.reading
        return {
            "synchronised": self.synchronised,
            "source": None if r is None else r.source,
            "offset_s": self.offset_s,
            "error_bound_s": None if r is None else r.error_bound_s,
            "detail": self.describe(),
            "checked_at": self.checked_at,
        }


Probe = Callable[[], Awaitable[ClockReading]]


# --- chrony ---------------------------------------------------------------------------------------

_CHRONY_LOCAL_REFID = "7F7F0101"  # chrony's `local` reference: synchronised to itself only


def parse_chrony_tracking(csv_line: str) -> ClockReading:
    """``chronyc -c tracking``: ref id, name, stratum, ref time, current correction (+ = the
    system clock is slow), last offset, RMS offset, frequency, residual frequency, skew, root
    delay, root dispersion, update interval, leap status."""
    fields = csv_line.strip().split(",")
    if len(fields) < 14:
        raise SourceUnavailable(f"chronyc tracking gave {len(fields)} fields, expected 14")
    try:
        correction = float(fields[4])
        root_delay, root_dispersion = float(fields[10]), float(fields[11])
        stratum = int(fields[2])
    except ValueError as exc:
        raise SourceUnavailable(f"chronyc tracking is unreadable ({exc})") from None
    refid, name, leap = fields[0].upper(), fields[1], fields[13]
    synchronised = leap != "Not synchronised" and refid not in ("00000000", _CHRONY_LOCAL_REFID)
    detail = f"reference {name or refid}, stratum {stratum}, leap status {leap}"
    if refid == _CHRONY_LOCAL_REFID:
        detail += " (local reference only, no time source)"
    return ClockReading(
        "chrony",
        synchronised,
        -correction if synchronised else None,
        root_delay / 2 + root_dispersion if synchronised else None,
        detail,
    )


# --- systemd-timesyncd / timedated ------------------------------------------------------------

_SPAN_UNITS = {
    "y": 31_557_600.0,
    "month": 2_629_800.0,
    "w": 604_800.0,
    "d": 86_400.0,
    "h": 3600.0,
    "min": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
_SPAN_TOKEN = re.compile(r"(\d+(?:\.\d+)?)(month|min|ms|us|µs|μs|ns|y|w|d|h|s)")


def parse_timespan(text: str) -> float:
    """systemd's ``format_timespan`` text (``1min 2.5s``, ``-1.234ms``, ``+128us``) in seconds."""
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-").replace(" ", "")
    tokens = _SPAN_TOKEN.findall(body)
    if not tokens or "".join(n + u for n, u in tokens) != body:
        raise ValueError(f"not a systemd time span: {text!r}")
    return sign * sum(float(n) * _SPAN_UNITS[u] for n, u in tokens)


def parse_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def parse_timesync_status(text: str) -> dict[str, str]:
    """``timedatectl timesync-status``: ``  Name: value`` lines."""
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip()] = value.strip()
    return found


# --- the kernel ---------------------------------------------------------------------------------


class Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux, 64-bit and 32-bit alike: longs and a timeval)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


STA_UNSYNC = 0x0040
TIME_ERROR = 5  # adjtimex's return value: the clock is not synchronised
KERNEL_MAX_ERROR_S = 16.0  # NTP's "unsynchronised" bound (timedated uses the same)
Adjtimex = Callable[[Timex], int]


def libc_adjtimex(tx: Timex) -> int:
    """adjtimex(2) with ``modes = 0``: reads the kernel's clock discipline, changes nothing.
    OSError when it is denied (EPERM under a seccomp filter) or missing."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx.modes = 0
    state = int(libc.adjtimex(ctypes.byref(tx)))
    if state < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return state


def kernel_reading(adjtimex: Adjtimex = libc_adjtimex) -> ClockReading:
    tx = Timex()
    try:
        state = adjtimex(tx)
    except (OSError, AttributeError) as exc:
        raise SourceUnavailable(f"adjtimex() failed ({exc})") from None
    max_error = tx.maxerror / 1e6  # microseconds
    unsync = bool(tx.status & STA_UNSYNC) or state == TIME_ERROR
    synchronised = not unsync and max_error < KERNEL_MAX_ERROR_S
    detail = (
        f"kernel clock state {state}, status 0x{tx.status:04x}"
        f"{' (STA_UNSYNC)' if tx.status & STA_UNSYNC else ''}, maximum error {max_error:.6f} s, "
        f"estimated error {tx.esterror / 1e6:.6f} s"
    )
    return ClockReading("kernel", synchronised, None, max_error if synchronised else None, detail)


# --- asking the sources -----------------------------------------------------------------------


async def run_tool(name: str, *args: str, timeout_s: float) -> str:
    """stdout of a host tool found on PATH; SourceUnavailable if it is missing, fails, or does
    not answer within ``timeout_s`` (it is killed then)."""
    path = shutil.which(name)
    if path is None:
        raise SourceUnavailable(f"{name} is not installed")
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a hung tool goes with its children
        )
    except OSError as exc:
        raise SourceUnavailable(f"cannot run {name} ({exc.strerror})") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise SourceUnavailable(f"{name} did not answer within {timeout_s:g} s") from None
    if proc.returncode != 0:
        why = (err or out).decode(errors="replace").strip().splitlines()
        raise SourceUnavailable(
            f"{name} {' '.join(args)} failed (exit {proc.returncode}: {why[-1] if why else ''})"
        )
    return out.decode(errors="replace")


def chrony_probe(timeout_s: float) -> Probe:
    async def probe() -> ClockReading:
        text = await run_tool("chronyc", "-c", "-n", "tracking", timeout_s=timeout_s)
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise SourceUnavailable("chronyc tracking printed nothing")
        return parse_chrony_tracking(lines[-1])

    return probe


def timesyncd_probe(timeout_s: float) -> Probe:
    async def probe() -> ClockReading:
        props = parse_properties(await run_tool("timedatectl", "show", timeout_s=timeout_s))
        if "NTPSynchronized" not in props:
            raise SourceUnavailable("timedatectl show has no NTPSynchronized property")
        synchronised = props["NTPSynchronized"] == "yes"
        service = "enabled" if props.get("NTP") == "yes" else "disabled"
        try:
            status = parse_timesync_status(
                await run_tool("timedatectl", "timesync-status", timeout_s=timeout_s)
            )
        except SourceUnavailable:  # timesyncd not running (chrony or ntpd may be): no offset
            return ClockReading(
                "timedated",
                synchronised,
                None,
                None,
                f"NTPSynchronized={props['NTPSynchronized']} (the kernel's view), NTP service "
                f"{service}",
            )
        offset = bound = None
        with contextlib.suppress(KeyError, ValueError):
            offset = parse_timespan(status["Offset"])
        with contextlib.suppress(KeyError, ValueError):
            bound = parse_timespan(status["Root distance"].split("(")[0])
        leap = status.get("Leap", "?")
        return ClockReading(
            "systemd-timesyncd",
            synchronised and leap != "not synchronized",
            offset if synchronised else None,
            bound if synchronised else None,
            f"server {status.get('Server', '?')}, stratum {status.get('Stratum', '?')}, leap "
            f"{leap}, NTPSynchronized={props['NTPSynchronized']}",
        )

    return probe


def kernel_probe(adjtimex: Adjtimex = libc_adjtimex) -> Probe:
    async def probe() -> ClockReading:
        return kernel_reading(adjtimex)

    return probe


def default_probes(section: ClockSection, adjtimex: Adjtimex = libc_adjtimex) -> list[Probe]:
    made = {
        "chrony": lambda: chrony_probe(section.probe_timeout_s),
        "timesyncd": lambda: timesyncd_probe(section.probe_timeout_s),
        "kernel": lambda: kernel_probe(adjtimex),
    }
    return [made[name]() for name in section.sources]


async def check_clock(
    probes: Sequence[Probe], max_offset_s: float, wall: Seconds = time.time
) -> ClockStatus:
    """Ask the sources in order; the first that answers decides."""
    unavailable = []
    for probe in probes:
        try:
            reading = await probe()
        except SourceUnavailable as exc:
            unavailable.append(str(exc))
            continue
        return ClockStatus(reading, max_offset_s, tuple(unavailable), wall())
    return ClockStatus(None, max_offset_s, tuple(unavailable), wall())


# --- the guard ----------------------------------------------------------------------------------


class AlarmSink(Protocol):
    """What the guard needs of the alarm board (``edge_agent.alarms.AlarmBoard``)."""

    def raise_(self, kind: AlarmKind, message: str) -> object: ...

    def clear(self, kind: str) -> object: ...


class ClockGuard:
    """Checks synchronisation periodically and watches for wall-clock steps; the daemon runs
    ``run()`` in its TaskGroup; the command path asks ``start_problems()`` before a start."""

    def __init__(
        self,
        section: ClockSection,
        alarms: AlarmSink | None = None,
        *,
        probes: Sequence[Probe] | None = None,
        wall: Seconds = time.time,
        monotonic: Seconds = boot_time,
    ) -> None:
        self.section = section
        self.alarms = alarms
        self.probes = list(probes) if probes is not None else default_probes(section)
        self.wall, self.monotonic = wall, monotonic
        self.status: ClockStatus | None = None
        self.last_jump_s: float | None = None
        self._baseline: float | None = None
        self._jump_pending = False  # a jump is cleared by the next synchronised check after it
        self._recheck = asyncio.Event()

    @property
    def refuses(self) -> bool:
        return self.section.check and self.section.on_unsynchronised == "refuse"

    def start_problems(self) -> list[str]:
        """Why an order must not start now (empty: it may). Only with ``on_unsynchronised =
        "refuse"``; otherwise an unsynchronised clock is an alarm, not a refusal."""
        if not self.refuses:
            return []
        if self.status is None:
            return ["the clock has not been checked yet; try again in a moment"]
        if self.status.synchronised:
            return []
        return [
            f"the system clock is not synchronised: {self.status.describe()}; event times are "
            "evidence, so orders start only once it is (fix the time service: `chronyc "
            "tracking` or `timedatectl timesync-status`), or set [clock] on_unsynchronised = "
            '"alarm"'
        ]

    async def check(self) -> ClockStatus:
        """One synchronisation check; raises or clears the alarm and logs a change once."""
        status = await check_clock(self.probes, self.section.max_offset_ms / 1000, self.wall)
        before, self.status = self.status, status
        changed = before is None or before.synchronised != status.synchronised
        if status.synchronised:
            if changed:
                log.info("clock_synchronised", **_fields(status))
            self._clear(AlarmKind.CLOCK_UNSYNCHRONISED)
            if self._jump_pending:
                self._jump_pending = False
                self._clear(AlarmKind.CLOCK_JUMP)
        else:
            if changed:
                log.warning("clock_unsynchronised", **_fields(status))
            self._raise(
                AlarmKind.CLOCK_UNSYNCHRONISED,
                f"system clock not synchronised: {status.describe()}",
            )
        return status

    def sample(self) -> float | None:
        """Compare the wall clock with the monotonic clock since the last sample; the step in
        seconds when it is beyond the threshold (alarm raised), else None."""
        difference = self.wall() - self.monotonic()
        previous, self._baseline = self._baseline, difference
        if previous is None:
            return None
        step = difference - previous
        if abs(step) * 1000 <= self.section.jump_threshold_ms:
            return None
        self.last_jump_s = step
        self._jump_pending = True
        at = datetime.fromtimestamp(self.wall()).astimezone().isoformat(timespec="seconds")
        message = (
            f"the wall clock jumped {step:+.3f} s against the monotonic clock (now {at}); event "
            "times before and after the jump are on different scales"
        )
        log.warning("clock_jump", step_s=round(step, 6), now=at)
        self._raise(AlarmKind.CLOCK_JUMP, message)
        self._recheck.set()  # is the clock right now? check at once
        return step

    async def run(self) -> None:
        """Check at start and every ``interval_s`` (at once after a jump); sample for jumps
        every ``jump_check_interval_s``. Never raises; cancelled with the daemon."""
        if not self.section.check:
            return
        self.sample()
        loop = asyncio.get_running_loop()
        while True:
            await self.check()
            self._recheck.clear()
            due = loop.time() + self.section.interval_s
            while loop.time() < due and not self._recheck.is_set():
                wait = min(self.section.jump_check_interval_s, due - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recheck.wait(), max(wait, 0))
                self.sample()

    def _raise(self, kind: AlarmKind, message: str) -> None:
        if self.alarms is None:
            return
        try:
            self.alarms.raise_(kind, message)
        except sqlite3.Error as exc:  # the storage guards stop the line; the check goes on
            log.error("clock_alarm_not_recorded", kind=str(kind), detail=str(exc))

    def _clear(self, kind: AlarmKind) -> None:
        if self.alarms is None:
            return
        try:
            self.alarms.clear(kind)
        except sqlite3.Error as exc:
            log.error("clock_alarm_not_recorded", kind=str(kind), detail=str(exc))


def _fields(status: ClockStatus) -> dict[str, object]:
    d = status.as_dict()
    return {k: d[k] for k in ("source", "offset_s", "error_bound_s", "detail")}


# --- event times --------------------------------------------------------------------------------


class EventClock:
    """Event times per order that never go backwards: ``max(last, wall)``.

    A wall clock stepped back (a manual ``date -s``, an NTP step after a bad start) would give
    later events of an order earlier times than earlier ones; the order's events keep the time
    of its last event instead until the wall clock passes it again (the step also raises
    ``clock_jump``). Seed an order resumed after a restart with ``seed(order, last)`` (e.g.
    ``last_event_time``), so the rule holds across restarts too.
    """

    def __init__(self, wall: Seconds = time.time) -> None:
        self.wall = wall
        self._last: dict[str, float] = {}

    def now(self, order_id: str) -> float:
        current = max(self.wall(), self._last.get(order_id, float("-inf")))
        self._last[order_id] = current
        return current

    def datetime(self, order_id: str) -> datetime:
        """``now()`` as an aware local datetime (for ``edge_agent.epcis`` event makers)."""
        return datetime.fromtimestamp(self.now(order_id)).astimezone()

    def seed(self, order_id: str, last: float | None) -> None:
        if last is not None:
            self._last[order_id] = max(last, self._last.get(order_id, float("-inf")))

    def forget(self, order_id: str) -> None:
        self._last.pop(order_id, None)


def last_event_time(conn: sqlite3.Connection, order_id: str) -> float | None:
    """The latest time recorded for an order's units and events (its ledger batch)."""
    row = conn.execute(
        "SELECT max(t) FROM (SELECT max(decided_at) AS t FROM units WHERE batch_id = ?1 "
        "UNION ALL SELECT max(created_at) FROM outbox WHERE batch_id = ?1)",
        (order_id,),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])
