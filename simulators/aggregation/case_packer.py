"""Simulated case packer with its case camera (speaking "tcp-frames", the camera is the server).

Units that leave the unit gate (``attach_to_gate``) or that a test puts in (``put``) are grouped
into cases of ``case_size``. Each filled case goes onto the case conveyor (its own ``SimLine``,
where the case station's PLC counts it: the trigger is the case number) and reaches the case
camera, which sends two frames of it with the case's trigger: the **read** (the open case from
above, every unit code in a grid on a 5 MP frame) and, ``closing_after_s`` later, the **closing
read** taken as the flaps close. Physical truth (what each case holds now) stays here.

Case defects, drawn by seed (``defect_rate``) or forced for the next case (``force``):
``missing_unit`` (a slot empty, the unit loose), ``foreign_code`` (a unit not of this order in its
place), ``duplicate`` (a unit bearing another's code in its place), ``unreadable_code`` (one code
smeared), ``unreadable_label`` (the case label will not read: see ``label.py``) and
``removed_after_read`` (a unit taken out between the read and the closing read).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from drivers.cameras.tcp.codec import encode_frame
from edge_agent.contracts import GrayImage
from simulators.aggregation.case_frame import FIVE_MP, Slot, render_case
from simulators.cameras.tcp import TcpCameraSim, _Look
from simulators.line import SimLine, SimUnit

log = structlog.get_logger(__name__)


class CaseDefect(enum.StrEnum):
    MISSING_UNIT = "missing_unit"
    FOREIGN_CODE = "foreign_code"
    DUPLICATE = "duplicate"
    UNREADABLE_CODE = "unreadable_code"
    UNREADABLE_LABEL = "unreadable_label"
    REMOVED_AFTER_READ = "removed_after_read"


ALL_CASE_DEFECTS = tuple(CaseDefect)
CASE_MARK = "CASE"  # SimUnit.serial of a case on the case conveyor: CASE<number>


@dataclass
class SimCase:
    """One physical case. ``inside`` changes when a unit is taken out after the read."""

    number: int  # the packer's count, 1..
    inside: list[SimUnit]  # units physically in the case now
    read_slots: list[Slot]  # what the case camera sees at the read
    defect: CaseDefect | None
    trigger: int = 0  # its trigger count on the case conveyor (0: not there yet)
    labels: list[str] = field(default_factory=list)  # element strings of labels applied to it
    verdict: bool | None = None  # what the case gate did: True passed, False rejected
    closing_seen: bool = False  # its closing read reached a client (the station saw the case)
    loose: list[SimUnit] = field(default_factory=list)  # units meant for it that it lacks

    def serials(self) -> set[str]:
        return {unit.serial for unit in self.inside}

    def closing_slots(self) -> list[Slot]:
        return [Slot(unit.hri()) for unit in self.inside]


class CasePackerSim(TcpCameraSim):
    """The case packer and the case camera above its outfeed (see the module docstring)."""

    def __init__(
        self,
        case_line: SimLine,
        *,
        case_size: int = 12,
        defect_rate: float = 0.0,
        defect_kinds: Sequence[CaseDefect] = ALL_CASE_DEFECTS,
        seed: int = 1,
        size: tuple[int, int] = FIVE_MP,
        closing_after_s: float = 0.3,
    ) -> None:
        super().__init__(case_line, defect_rate=0.0, seed=seed, width=size[0], height=size[1])
        if case_size < 1:
            raise ValueError(f"case size {case_size} must be at least 1")
        self.case_size = case_size
        self.case_defect_rate = defect_rate
        self.case_defect_kinds = tuple(CaseDefect(kind) for kind in defect_kinds)
        self.closing_after_s = closing_after_s
        self.cases: list[SimCase] = []
        self.by_trigger: dict[int, SimCase] = {}
        self.case_listeners: list[Callable[[SimCase], None]] = []  # a case left the case gate
        self._case_rng = random.Random(seed)
        self._filling: list[SimUnit] = []
        self._forced: list[CaseDefect | None] = []
        self._units_by_trigger: dict[int, SimUnit] = {}
        self._foreign = 0
        self._feeder: asyncio.Task[None] | None = None
        self._to_convey: asyncio.Queue[SimCase] = asyncio.Queue()

    # --- wiring -----------------------------------------------------------------------------

    def attach_to_unit_line(self, unit_line: SimLine, gate: Any) -> None:
        """Take every unit the unit line's gate passes (a ``GatePlcSim``)."""
        unit_line.on_trigger(self._seen_at_camera)
        gate.gate_listeners.append(self._left_unit_gate)

    def attach_case_gate(self, gate: Any) -> None:
        """The case station's PLC (a ``GatePlcSim`` on the case conveyor) diverts cases."""
        gate.gate_listeners.append(self._left_case_gate)

    def _seen_at_camera(self, trigger: int, unit: SimUnit) -> None:
        self._units_by_trigger[trigger] = unit

    def _left_unit_gate(self, trigger: int, passed: bool) -> None:
        unit = self._units_by_trigger.pop(trigger, None)
        if passed and unit is not None:
            self.put([unit])

    def _left_case_gate(self, trigger: int, passed: bool) -> None:
        case = self.by_trigger.get(trigger)
        if case is None:
            return
        case.verdict = passed
        for listener in self.case_listeners:
            listener(case)

    # --- packing ----------------------------------------------------------------------------

    def force(self, *defects: CaseDefect | str | None) -> None:
        """The next cases get these defects (None: a good case), in order; then the seeded
        draw goes on."""
        self._forced.extend(None if d is None else CaseDefect(d) for d in defects)

    def put(self, units: Sequence[SimUnit]) -> None:
        """Units reach the packer; every ``case_size`` of them make a case."""
        for unit in units:
            self._filling.append(unit)
            if len(self._filling) == self.case_size:
                self._close_case()

    @property
    def filling(self) -> list[SimUnit]:
        """Units in the case being filled (not a case yet)."""
        return list(self._filling)

    def flush(self) -> SimCase | None:
        """Pack what is left as a partial last case."""
        return self._close_case() if self._filling else None

    def _close_case(self) -> SimCase:
        units, self._filling = self._filling, []
        case = self._pack(len(self.cases) + 1, units, self._next_defect())
        self.cases.append(case)
        self._to_convey.put_nowait(case)
        return case

    def _next_defect(self) -> CaseDefect | None:
        if self._forced:
            return self._forced.pop(0)
        if self.case_defect_kinds and self._case_rng.random() < self.case_defect_rate:
            return self._case_rng.choice(self.case_defect_kinds)
        return None

    def _pack(self, number: int, units: list[SimUnit], defect: CaseDefect | None) -> SimCase:
        rng = self._case_rng
        inside = list(units)
        slots = [Slot(unit.hri()) for unit in inside]
        loose: list[SimUnit] = []
        at = rng.randrange(len(inside))
        if defect is CaseDefect.MISSING_UNIT:
            loose.append(inside.pop(at))
            slots[at] = Slot(None)
        elif defect is CaseDefect.FOREIGN_CODE:
            loose.append(inside[at])
            inside[at] = self._foreign_unit(inside[at])
            slots[at] = Slot(inside[at].hri())
        elif defect is CaseDefect.DUPLICATE and len(inside) > 1:
            other = (at + 1 + rng.randrange(len(inside) - 1)) % len(inside)
            loose.append(inside[at])
            inside[at] = inside[other]  # a second unit bearing the same code
            slots[at] = Slot(inside[other].hri())
        elif defect is CaseDefect.DUPLICATE:
            defect = None  # a case of one has nothing to duplicate
        elif defect is CaseDefect.UNREADABLE_CODE:
            slots[at] = Slot(inside[at].hri(), unreadable=True)
        return SimCase(number, inside, slots, defect, loose=loose)

    def _foreign_unit(self, like: SimUnit) -> SimUnit:
        self._foreign += 1
        return SimUnit(f"FOREIGN{self._foreign:05d}", like.gtin, like.lot, like.expiry, 0.0)

    # --- conveyor and camera --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await super().start(host, port)
        self._feeder = asyncio.get_running_loop().create_task(self._convey())

    async def stop(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)
            self._feeder = None
        await super().stop()

    async def _convey(self) -> None:
        """Filled cases go onto the case conveyor in order, at its pace, while it runs."""
        while True:
            case = await self._to_convey.get()
            await self.line.next_slot()
            self.line.unit_printed(
                SimUnit(f"{CASE_MARK}{case.number}", "", "", "", time.monotonic())
            )

    def on_unit(self, trigger: int, unit: SimUnit) -> None:
        number = int(unit.serial.removeprefix(CASE_MARK))
        case = self.cases[number - 1]
        case.trigger = trigger
        self.by_trigger[trigger] = case
        super().on_unit(trigger, unit)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._closing_read(case))
        self._repeats.add(task)
        task.add_done_callback(self._repeats.discard)

    def _render(self, trigger: int, look: _Look, rng: np.random.Generator) -> GrayImage:
        case = self.by_trigger[trigger]
        return render_case(case.read_slots, size=(self.width, self.height), rng=rng)

    async def _closing_read(self, case: SimCase) -> None:
        await asyncio.sleep(self.closing_after_s)
        if case.defect is CaseDefect.REMOVED_AFTER_READ and case.inside:
            at = self._case_rng.randrange(len(case.inside))
            case.loose.append(case.inside.pop(at))
        rng = np.random.default_rng(self._rng.getrandbits(64))
        size = (self.width, self.height)
        data = await asyncio.to_thread(
            lambda: encode_frame(
                case.trigger, render_case(case.closing_slots(), size=size, rng=rng)
            )
        )
        case.closing_seen = bool(self._clients) and not self.mute
        await self._deliver(data)

    # --- ground truth -----------------------------------------------------------------------

    def ground_truth(self) -> dict[str, Any]:
        return {
            "cases": [
                {
                    "number": c.number,
                    "trigger": c.trigger,
                    "defect": c.defect.value if c.defect else None,
                    "serials": sorted(c.serials()),
                    "labels": list(c.labels),
                    "passed": c.verdict,
                }
                for c in self.cases
            ],
            "case_defects_injected": sum(1 for c in self.cases if c.defect is not None),
            "loose": sorted(u.serial for c in self.cases for u in c.loose),
        }
