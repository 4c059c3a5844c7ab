"""The PLC logic both PLC simulators share, whatever the transport (Modbus, OPC UA).

Every unit reaching the camera is recorded and reaches the reject gate ``gate_delay_s`` later,
where it passes only if its verdict slot holds exactly its trigger with a pass verdict; no verdict
= reject. Rejects are confirmed into the reject log unless ``withhold_confirms`` is set. The line
runs only while the agent heartbeat moves, the agent does not request a stop and the link is up.

Simplification: gates fire on time even while the line is stopped (units already past the camera
are judged as if the conveyor coasted), which keeps tests deterministic.

A transport subclass says how its server starts and stops and how each value is read and written
(registers, nodes); the scan cycle here never touches the wire format. What the values mean (ring
slots, the gate rule, the reject log, heartbeats, stop causes) is ``drivers.plc.contract``, the
module the agent's drivers use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Generic, Self, TypeVar

from drivers.plc import contract
from drivers.plc.contract import StopCause
from simulators.line import SimLine, SimUnit

TICK_S = 0.01

ServerT = TypeVar("ServerT")


class GatePlcSim(ABC, Generic[ServerT]):
    def __init__(
        self,
        line: SimLine,
        *,
        gate_delay_s: float,
        heartbeat_timeout_s: float,
        ring_size: int,
        reject_log_size: int,
        auto_restart: bool,
    ) -> None:
        contract.check_ring_size(ring_size)
        contract.check_reject_log_size(reject_log_size)
        self.line = line
        self.gate_delay_s = gate_delay_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.ring_size = ring_size
        self.reject_log_size = reject_log_size
        self.auto_restart = auto_restart
        # Ground truth for tests.
        self.passed_triggers: list[int] = []
        self.rejected_triggers: list[int] = []
        self.stops: list[tuple[float, int]] = []
        self.withhold_confirms = False
        # Called with (trigger, passed) as each unit leaves the gate: what comes after the gate
        # (a case packer) takes the units that passed.
        self.gate_listeners: list[Callable[[int, bool], None]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._server: ServerT | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._gates: deque[tuple[float, int]] = deque()
        self._running = False
        self._start_allowed = True  # cleared by a stop without auto_restart
        self._stopped_at = 0.0
        self._agent_hb = 0  # the agent heartbeat powers up as 0; only a change counts as a beat
        self._agent_hb_changed_at = float("-inf")
        self._plc_hb = 0
        self._passed = 0
        self._rejected = 0
        self._confirms = 0
        line.on_trigger(self.on_unit, counts=True)
        line.add_run_permit(self.running)
        line.on_settle(self.gates_settled)

    # --- transport ----------------------------------------------------------------------------

    @abstractmethod
    async def _close(self, server: ServerT) -> None: ...

    @abstractmethod
    def link_up(self) -> bool:
        """What the PLC can tell about its link to the agent."""

    @abstractmethod
    async def _write_trigger(self, trigger: int) -> None: ...

    @abstractmethod
    async def _write_plc_heartbeat(self, value: int) -> None: ...

    @abstractmethod
    async def _read_agent_heartbeat(self) -> int: ...

    @abstractmethod
    async def _read_stop_request(self) -> bool: ...

    @abstractmethod
    async def _write_watchdog(self, *, running: bool, hb_ok: bool) -> None:
        """End of a scan: the run state and the agent-heartbeat watchdog as the PLC sees them."""

    @abstractmethod
    async def _write_run_state(self, *, running: bool, cause: StopCause) -> None: ...

    @abstractmethod
    async def _read_slot(self, trigger: int) -> tuple[object, object] | None:
        """(trigger, verdict) held by the trigger's verdict slot as the agent last wrote it, raw;
        None when the slot holds something that is not such a pair."""

    @abstractmethod
    async def _write_passed(self, count: int) -> None: ...

    @abstractmethod
    async def _write_rejected(self, count: int) -> None: ...

    @abstractmethod
    async def _write_confirm(self, confirm_number: int, trigger: int) -> None:
        """The reject-log entry of the n-th confirm, then the confirm counter: a reader that sees
        the count also sees the entry."""

    # --- lifecycle ----------------------------------------------------------------------------

    def _start_scan(self, name: str) -> None:
        self._tick_task = asyncio.create_task(self._tick_loop(), name=name)

    async def stop(self) -> None:
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await self._close(server)
        self._gates.clear()
        if self._running:
            self._running = False
            self.line.notify_run_state()

    @abstractmethod
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve, publish what the PLC announces, then ``_start_scan``."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def gates_settled(self) -> None:
        """Wait until every unit that reached the camera has been decided at the gate."""
        # The scan cycle decides gates on time; waiting one scan at a time is what a PLC does.
        while self._gates and self._tick_task is not None:  # noqa: ASYNC110
            await asyncio.sleep(TICK_S)

    def acknowledge(self) -> None:
        """The operator's reset: without auto_restart, allows the line to start once more."""
        self._start_allowed = True

    # --- line side ----------------------------------------------------------------------------

    def running(self) -> bool:
        return self._running

    async def on_unit(self, trigger: int, unit: SimUnit) -> None:
        if self._server is None:
            return
        trigger &= contract.U32_MAX  # the PLC's counter is u32 and wraps
        await self._write_trigger(trigger)
        self._gates.append((time.monotonic() + self.gate_delay_s, trigger))

    # --- scan cycle ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await self._tick(time.monotonic())
            await asyncio.sleep(TICK_S)

    async def _tick(self, now: float) -> None:
        self._plc_hb = contract.next_heartbeat(self._plc_hb)
        await self._write_plc_heartbeat(self._plc_hb)
        await self._run_due_gates(now)
        hb_ok = await self._watch_agent_heartbeat(now)
        stop_requested = await self._read_stop_request()
        await self._update_run_state(now, hb_ok=hb_ok, stop_requested=stop_requested)
        await self._write_watchdog(running=self._running, hb_ok=hb_ok)

    async def _watch_agent_heartbeat(self, now: float) -> bool:
        value = await self._read_agent_heartbeat()
        if value != self._agent_hb:
            self._agent_hb = value
            self._agent_hb_changed_at = now
        return now - self._agent_hb_changed_at < self.heartbeat_timeout_s

    async def _update_run_state(self, now: float, *, hb_ok: bool, stop_requested: bool) -> None:
        connected = self.link_up()
        if self._running:
            cause = self._stop_cause(
                hb_ok=hb_ok, stop_requested=stop_requested, connected=connected
            )
            if cause is not StopCause.NONE:
                await self._stop_line(now, cause)
        elif self._may_start(hb_ok=hb_ok, stop_requested=stop_requested, connected=connected):
            self._running = True
            await self._publish_run_state(StopCause.NONE)

    @staticmethod
    def _stop_cause(*, hb_ok: bool, stop_requested: bool, connected: bool) -> StopCause:
        if stop_requested:
            return StopCause.AGENT_REQUEST
        if not connected:
            return StopCause.LINK_DROPPED
        if not hb_ok:
            return StopCause.HEARTBEAT_LOST
        return StopCause.NONE

    def _may_start(self, *, hb_ok: bool, stop_requested: bool, connected: bool) -> bool:
        # A restart needs a beat after the stop: proof the agent is alive now, not before.
        beat_since_stop = self._agent_hb_changed_at > self._stopped_at
        return (
            hb_ok and beat_since_stop and connected and not stop_requested and self._start_allowed
        )

    async def _stop_line(self, now: float, cause: StopCause) -> None:
        self._running = False
        self._stopped_at = now
        self.stops.append((now, int(cause)))
        if not self.auto_restart:
            self._start_allowed = False
        await self._publish_run_state(cause)

    async def _publish_run_state(self, cause: StopCause) -> None:
        await self._write_run_state(running=self._running, cause=cause)
        self.line.notify_run_state()

    async def _run_due_gates(self, now: float) -> None:
        while self._gates and self._gates[0][0] <= now:
            _, trigger = self._gates.popleft()
            await self._gate(trigger)

    async def _gate(self, trigger: int) -> None:
        slot = await self._read_slot(trigger)
        if slot is not None and contract.gate_passes(*slot, trigger):
            self.passed_triggers.append(trigger)
            self._passed = (self._passed + 1) & contract.U32_MAX
            await self._write_passed(self._passed)
            self._left_gate(trigger, True)
            return
        self.rejected_triggers.append(trigger)
        self._left_gate(trigger, False)
        self._rejected = (self._rejected + 1) & contract.U32_MAX
        await self._write_rejected(self._rejected)
        if not self.withhold_confirms:
            self._confirms = (self._confirms + 1) & contract.U32_MAX
            await self._write_confirm(self._confirms, trigger)

    async def verdict_for(self, trigger: int) -> int | None:
        """The verdict the agent has written for ``trigger`` so far (None: none yet): what
        the machine before the gate (a labeller holding the case) can see."""
        slot = await self._read_slot(trigger & contract.U32_MAX)
        if slot is None or slot[0] != trigger or slot[1] == contract.NO_VERDICT:
            return None
        return int(slot[1])  # type: ignore[call-overload]

    def _left_gate(self, trigger: int, passed: bool) -> None:
        for listener in self.gate_listeners:
            listener(trigger, passed)

    def _reset_gate(self) -> None:
        """Back to power-up: no pending gates, counters and ground truth cleared, line stopped
        (a restart needs a fresh beat)."""
        self._gates.clear()
        self.passed_triggers.clear()
        self.rejected_triggers.clear()
        self.stops.clear()
        self.withhold_confirms = False
        self._passed = self._rejected = self._confirms = 0
        self._running, self._start_allowed = False, True
        self._stopped_at = time.monotonic()
        self.line.notify_run_state()


async def feed_units(line: SimLine) -> None:
    """Print units forever, as a printer would, at the line's pace (waits while it is stopped)."""
    serial = 0
    while True:
        await line.next_slot()
        serial += 1
        line.unit_printed(
            SimUnit(f"{serial:012d}", "09506000134352", "SIMLOT", "301231", time.monotonic())
        )
