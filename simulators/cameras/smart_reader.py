"""Simulated smart code reader ("smart-reader"): decodes on the device, sends result strings.

It sits on the simulated line like the frame camera (``simulators.cameras.tcp``), whose ordering,
client handling and defect injection it reuses; instead of a rendered frame it sends what a
Cognex DataMan-style reader sends after decoding: one line ``<trigger>;<grade>;<code>`` per unit
(format configurable), with the no-read text for an unreadable code.

Defects: the content defects of the frame camera, ``unreadable`` (-> no-read), and
``low_grade`` (a readable code graded D or F; only rejected when the agent sets a minimum grade,
hence not in the default set).

Standalone: ``python -m simulators.cameras.smart_reader --port 9300``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from drivers.cameras.smart_reader.codec import ReaderResult, ResultFormat, encode_result
from edge_agent import gs1
from simulators.cameras.tcp import ALL_DEFECTS, TcpCameraSim, _free_run, _Look
from simulators.line import SimLine, SimUnit
from simulators.standalone import run_until_signal

READER_DEFECTS: tuple[str, ...] = (*(k for k in ALL_DEFECTS if k != "low_contrast"), "low_grade")
DEFAULT_DEFECTS: tuple[str, ...] = tuple(k for k in READER_DEFECTS if k != "low_grade")


class SmartReaderSim(TcpCameraSim):
    def __init__(
        self,
        line: SimLine,
        *,
        defect_rate: float = 0.02,
        seed: int = 1,
        defect_kinds: Sequence[str] = DEFAULT_DEFECTS,
        result_format: ResultFormat | None = None,
    ) -> None:
        unknown = set(defect_kinds) - set(READER_DEFECTS)
        if unknown:
            raise ValueError(f"unknown defect kinds {sorted(unknown)}; known: {READER_DEFECTS}")
        super().__init__(line, defect_rate=defect_rate, seed=seed, defect_kinds=())
        self.defect_kinds = tuple(defect_kinds)
        self.format = result_format or ResultFormat()

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> SmartReaderSim:
        return cls(line, defect_rate=section.defect_rate, seed=section.seed)

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[camera]`` section for SmartReaderSource pointing at this simulator."""
        fmt = self.format
        section: dict[str, Any] = {
            "type": "smart-reader",
            "host": self.host,
            "port": self.port,
            "format": fmt.template,
            "terminator": fmt.terminator,
            "no_read": fmt.no_read,
        }
        if fmt.gs_substitute:
            section["gs_substitute"] = fmt.gs_substitute
        return section | overrides

    def _look(self, unit: SimUnit, kind: str | None) -> _Look:
        if kind != "low_grade":
            return super()._look(unit, kind)
        look = super()._look(unit, None)
        look.render["grade"] = float(self._rng.choice([0, 1]))
        return look

    def _produce(self, trigger: int, look: _Look, rng: np.random.Generator) -> bytes:
        """Worker thread: the result line of one unit."""
        if look.render.get("smear"):
            return encode_result(self.format, ReaderResult(trigger, None, "", None))
        grade = look.render.get("grade", float(rng.choice([3.0, 4.0])))
        pairs = [("01", look.gtin), ("17", look.expiry), ("10", look.lot), ("21", look.serial)]
        try:
            code = gs1.build(pairs).element_string
        except gs1.Gs1Error:
            code = "".join(ai + value for ai, value in pairs)  # printed as is, however wrong
        return encode_result(self.format, ReaderResult(trigger, code, "]d2", grade))


async def _main(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.rate)
    reader = SmartReaderSim(line, defect_rate=args.defect_rate, seed=args.seed)
    await reader.start(args.host, args.port)
    print(f"smart reader simulator on {reader.url}, {args.rate} units/min", flush=True)
    feeder = asyncio.get_running_loop().create_task(_free_run(line, random.Random(args.seed)))
    try:
        await asyncio.Event().wait()
    finally:
        feeder.cancel()
        await reader.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated smart code reader (result strings)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument("--rate", type=float, default=300.0, help="units per minute")
    parser.add_argument("--defect-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    run_until_signal(_main(args))


if __name__ == "__main__":
    main()
