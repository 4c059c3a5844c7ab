"""Simulated inspection camera speaking "tcp-frames" (the camera is the TCP server).

For every unit the ``SimLine`` brings to the camera it decides (seeded) whether to inject a
defect, renders a frame of the unit's GS1 DataMatrix in a worker thread and queues it. One sender
task writes the frames to the connected clients strictly in trigger order; frames that find no
client connected are dropped and counted, as a real camera would.

Besides scattered defects (``defect_rate``) a *burst* makes a run of consecutive units of one lot
defective (``add_burst``: a smeared print head, a label web out of register), which is what holds a
line on repeated rejects. Where it starts is drawn from the camera's seed, so a seed gives the same
run every time.

Standalone: ``python -m simulators.cameras.tcp --port 9200`` runs it with a free-running line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import socket
import string
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import structlog

from drivers.cameras.tcp.codec import ENCODING_RAW, encode_frame
from edge_agent.contracts import GrayImage
from edge_agent.gs1 import gtin_check_digit
from simulators.cameras.render import render_frame
from simulators.line import SimLine, SimUnit
from simulators.standalone import run_until_signal

log = structlog.get_logger(__name__)

ALL_DEFECTS: tuple[str, ...] = (
    "unreadable",
    "wrong_serial",
    "duplicate_serial",
    "wrong_gtin",
    "wrong_lot",
    "wrong_expiry",
    "low_contrast",
)
_ALNUM = string.ascii_uppercase + string.digits
_GAP_WAIT_S = 0.5  # how long the sender waits for a missing trigger before sending later ones
_DRAIN_TIMEOUT_S = 2.0  # a client that does not read for this long is dropped
_GOOD_SERIALS_KEPT = 1000


@dataclass
class Burst:
    """``length`` consecutive units of ``lot`` (any lot when None) get defect ``kind``, starting
    after ``start`` units of that lot have passed the camera."""

    length: int
    start: int
    kind: str = "unreadable"
    lot: str | None = None
    seen: int = 0  # units of its lot so far
    triggers: list[int] = field(default_factory=list)  # the units it made defective

    def applies(self, unit: SimUnit) -> bool:
        """Count this unit; True when it falls inside the run."""
        if self.lot is not None and unit.lot != self.lot:
            return False
        self.seen += 1
        return self.start < self.seen <= self.start + self.length


@dataclass
class _Look:
    """What the camera will see for one unit: content plus render options."""

    gtin: str
    expiry: str
    lot: str
    serial: str
    render: dict[str, Any] = field(default_factory=dict)

    def ais(self) -> tuple[tuple[str, str], ...]:
        """The content to encode, as (AI, value) pairs: values may hold any character."""
        return (("01", self.gtin), ("17", self.expiry), ("10", self.lot), ("21", self.serial))

    def hri(self) -> str:
        """For people and logs only: a ``(`` in a value makes it ambiguous."""
        return "".join(f"({ai}){value}" for ai, value in self.ais())


class TcpCameraSim:
    def __init__(
        self,
        line: SimLine,
        *,
        defect_rate: float = 0.02,
        seed: int = 1,
        width: int = 480,
        height: int = 360,
        defect_kinds: Sequence[str] = ALL_DEFECTS,
        encoding: int = ENCODING_RAW,
    ) -> None:
        unknown = set(defect_kinds) - set(ALL_DEFECTS)
        if unknown:
            raise ValueError(f"unknown defect kinds {sorted(unknown)}; known: {ALL_DEFECTS}")
        self.line = line
        self.defect_rate = defect_rate
        self.defect_kinds = tuple(defect_kinds)
        self.width = width
        self.height = height
        self.encoding = encoding
        self.injected: dict[int, str] = {}  # trigger -> defect kind
        self.defect_hri: dict[int, str] = {}  # trigger -> content actually rendered for a defect
        self.frames_sent = 0
        self.frames_dropped = 0
        # Fault: every ``repeat_every``-th frame is sent once more ``repeat_after_s`` later, with
        # the same trigger count (a camera re-sending its last image); ``repeated`` lists them.
        self.repeat_every = 0
        self.repeat_after_s = 0.05
        self.repeated: list[int] = []
        self.mute = False  # fault: connected, frames produced, none sent (counted as dropped)
        self.bursts: list[Burst] = []
        self._repeats: set[asyncio.Task[None]] = set()
        self._rng = random.Random(seed)
        self._good_serials: deque[str] = deque(maxlen=_GOOD_SERIALS_KEPT)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._last_queued = line.trigger_count
        self._wake = asyncio.Event()
        self._clients: set[asyncio.StreamWriter] = set()
        self._client_joined = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._sender: asyncio.Task[None] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        line.on_trigger(self.on_unit)

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> TcpCameraSim:
        return cls(
            line,
            defect_rate=section.defect_rate,
            seed=section.seed,
            width=section.width,
            height=section.height,
        )

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[camera]`` config section for TcpFrameSource pointing at this simulator."""
        return {"type": "tcp-frames", "host": self.host, "port": self.port} | overrides

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.host = host
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._last_queued = max(self._last_queued, self.line.trigger_count)
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        # The first render pays for thread start-up and zxing/OpenCV initialisation: pay it now,
        # not on the first unit (a late frame costs a good unit).
        warm_up = "(01)09506000134352(17)281231(10)WARMUP(21)WARMUP"
        rng = np.random.default_rng(0)
        await asyncio.to_thread(
            render_frame, warm_up, width=self.width, height=self.height, rng=rng
        )
        log.info("camera simulator listening", url=self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        for task in list(self._repeats):
            task.cancel()
        for future in self._pending.values():
            future.cancel()
        self.frames_dropped += len(self._pending)
        self._pending.clear()
        for writer in list(self._clients):
            await self._close_client(writer)
        if server is not None:
            server.close()
            await server.wait_closed()

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def wait_for_client(self) -> None:
        """Until a client is connected: frames before that are dropped, like a real camera's."""
        while not self._clients:
            self._client_joined.clear()
            await self._client_joined.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def add_burst(
        self,
        length: int,
        *,
        kind: str = "unreadable",
        lot: str | None = None,
        start_within: tuple[int, int] = (0, 0),
    ) -> Burst:
        """Make ``length`` consecutive units of ``lot`` defective; the run starts after a number
        of that lot's units drawn (seeded) from ``start_within`` (inclusive)."""
        kinds = [k for k in ALL_DEFECTS if k != "duplicate_serial"]  # needs a good unit first
        if kind not in kinds:
            raise ValueError(f"a burst of {kind!r} is not offered; known: {kinds}")
        low, high = start_within
        if length < 1 or low < 0 or high < low:
            raise ValueError("a burst needs length >= 1 and 0 <= start_within[0] <= [1]")
        burst = Burst(length, self._rng.randint(low, high), kind, lot)
        self.bursts.append(burst)
        return burst

    # --- production -------------------------------------------------------------------------

    def on_unit(self, trigger: int, unit: SimUnit) -> None:
        """Line listener: a unit is under the camera. Renders off the loop, keeps the order."""
        if self._server is None or trigger <= self._last_queued:
            # Camera off, or a trigger that arrived after later ones were already sent.
            self._last_queued = max(self._last_queued, trigger)
            self.frames_dropped += 1
            return
        kind = self._burst_defect(trigger, unit) or self._pick_defect()
        look = self._look(unit, kind)
        if kind is None:
            self._good_serials.append(unit.serial)
        else:
            self.injected[trigger] = kind
            self.defect_hri[trigger] = look.hri()
        job_rng = np.random.default_rng(self._rng.getrandbits(64))
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._produce, trigger, look, job_rng)
        self._pending[trigger] = future
        self._wake.set()

    def _produce(self, trigger: int, look: _Look, rng: np.random.Generator) -> bytes:
        """Worker thread: render and encode one frame."""
        return encode_frame(trigger, self._render(trigger, look, rng), self.encoding)

    def _render(self, trigger: int, look: _Look, rng: np.random.Generator) -> GrayImage:
        """Worker thread: the frame of one unit (subclasses encode it their way)."""
        try:
            return render_frame(
                look.ais(), width=self.width, height=self.height, rng=rng, **look.render
            )
        except ValueError as exc:
            # zxing refused the content: the camera still sees a unit, just no code on it.
            log.warning("cannot render code, sending empty frame", trigger=trigger, error=str(exc))
            return np.full((self.height, self.width), 220, dtype=np.uint8)

    def _burst_defect(self, trigger: int, unit: SimUnit) -> str | None:
        kind = None
        for burst in self.bursts:  # every burst counts the unit, even when an earlier one hit
            if burst.applies(unit) and kind is None:
                burst.triggers.append(trigger)
                kind = burst.kind
        return kind

    def _pick_defect(self) -> str | None:
        if not self.defect_kinds or self._rng.random() >= self.defect_rate:
            return None
        kinds = list(self.defect_kinds)
        if not self._good_serials and "duplicate_serial" in kinds:
            kinds.remove("duplicate_serial")  # nothing to duplicate yet
        return self._rng.choice(kinds) if kinds else None

    def _look(self, unit: SimUnit, kind: str | None) -> _Look:
        rng = self._rng
        look = _Look(unit.gtin, unit.expiry, unit.lot, unit.serial)
        if kind == "unreadable":
            look.render["smear"] = True
        elif kind == "wrong_serial":
            look.serial = _other_string(unit.serial, 12, rng)
        elif kind == "duplicate_serial":
            look.serial = rng.choice(self._good_serials)
        elif kind == "wrong_gtin":
            look.gtin = other_gtin(unit.gtin, rng)
        elif kind == "wrong_lot":
            look.lot = _other_string(unit.lot, max(1, len(unit.lot)), rng)
        elif kind == "wrong_expiry":
            look.expiry = other_expiry(unit.expiry, rng)
        elif kind == "low_contrast":
            look.render.update(_low_contrast_levels(rng))
        return look

    # --- sending ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            trigger = await self._next_trigger()
            future = self._pending.pop(trigger)
            self._last_queued = max(self._last_queued, trigger)
            try:
                data = await future
            except Exception:
                log.exception("frame production failed", trigger=trigger)
                self.frames_dropped += 1
                continue
            if self.mute:
                self.frames_dropped += 1
                continue
            await self._deliver(data)
            if self.repeat_every and trigger % self.repeat_every == 0:
                self._repeat_later(trigger, data)

    def _repeat_later(self, trigger: int, data: bytes) -> None:
        async def again() -> None:
            await asyncio.sleep(self.repeat_after_s)
            self.repeated.append(trigger)
            await self._deliver(data)

        task = asyncio.get_running_loop().create_task(again())
        self._repeats.add(task)
        task.add_done_callback(self._repeats.discard)

    async def _next_trigger(self) -> int:
        """The next trigger in order; after a gap of ``_GAP_WAIT_S`` the lowest one queued."""
        gap_since: float | None = None
        while True:
            self._wake.clear()
            expected = self._last_queued + 1
            if expected in self._pending:
                return expected
            if not self._pending:
                gap_since = None
                await self._wake.wait()
                continue
            now = time.monotonic()
            gap_since = now if gap_since is None else gap_since
            remaining = gap_since + _GAP_WAIT_S - now
            if remaining <= 0:
                return min(self._pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _deliver(self, data: bytes) -> None:
        if not self._clients:
            self.frames_dropped += 1
            return
        delivered = False
        for writer in list(self._clients):
            try:
                writer.write(data)
                async with asyncio.timeout(_DRAIN_TIMEOUT_S):  # no task a frame, as wait_for makes
                    await writer.drain()
                delivered = True
            except (OSError, TimeoutError) as exc:
                log.warning("camera client lost", error=repr(exc))
                await self._close_client(writer)
        if delivered:
            self.frames_sent += 1
        else:
            self.frames_dropped += 1

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._clients.add(writer)
        self._client_joined.set()
        log.info("camera client connected", peer=writer.get_extra_info("peername"))
        try:
            while await reader.read(4096):
                pass  # the protocol is one-way; just notice when the client goes away
        except OSError:
            pass
        finally:
            await self._close_client(writer)

    async def _close_client(self, writer: asyncio.StreamWriter) -> None:
        self._clients.discard(writer)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- content mutations ---------------------------------------------------------------------


def other_gtin(gtin: str, rng: random.Random) -> str:
    """A different GTIN-14 with a correct check digit."""
    if len(gtin) != 14 or not gtin.isdigit():
        gtin = "0" + "".join(rng.choice(string.digits) for _ in range(12)) + "0"
    body = list(gtin[:13])
    pos = rng.randrange(1, 13)  # keep the indicator digit
    body[pos] = rng.choice([d for d in string.digits if d != body[pos]])
    new_body = "".join(body)
    return new_body + str(gtin_check_digit(new_body))


def other_expiry(expiry: str, rng: random.Random) -> str:
    """A different, valid YYMMDD date."""
    start = dt.date(2025, 1, 1)
    while True:
        candidate = (start + dt.timedelta(days=rng.randrange(8 * 365))).strftime("%y%m%d")
        if candidate != expiry:
            return candidate


def _other_string(current: str, length: int, rng: random.Random) -> str:
    while True:
        candidate = "".join(rng.choice(_ALNUM) for _ in range(length))
        if candidate != current:
            return candidate


def _low_contrast_levels(rng: random.Random) -> dict[str, Any]:
    light = rng.randint(150, 210)
    contrast = rng.uniform(0.20, 0.28)
    # Modules of 4 px or more: at 3 px with blur a faint symbol is sometimes not read at all,
    # and this defect must reach the contrast check, not look like "unreadable".
    return {"light": light, "dark": light - round(contrast * 255), "module_px": rng.randint(4, 6)}


# --- standalone ----------------------------------------------------------------------------


async def _free_run(line: SimLine, rng: random.Random) -> None:
    """Stand-in for printer + PLC: puts units with random serials on the line."""
    gtin_body = "0950600013435"
    gtin = gtin_body + str(gtin_check_digit(gtin_body))
    while True:
        await line.next_slot()
        serial = "".join(rng.choice(_ALNUM) for _ in range(12))
        line.unit_printed(SimUnit(serial, gtin, "LOT1", "271231", time.monotonic()))


async def _main(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.rate)
    camera = TcpCameraSim(line, defect_rate=args.defect_rate, seed=args.seed)
    await camera.start(args.host, args.port)
    print(f"camera simulator on {camera.url}, {args.rate} units/min", flush=True)
    feeder = asyncio.get_running_loop().create_task(_free_run(line, random.Random(args.seed)))
    try:
        await asyncio.Event().wait()
    finally:
        feeder.cancel()
        await camera.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated tcp-frames camera")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--rate", type=float, default=300.0, help="units per minute")
    parser.add_argument("--defect-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    run_until_signal(_main(args))


if __name__ == "__main__":
    main()
