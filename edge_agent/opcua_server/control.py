"""The PackML actions of today's one-batch runtime, acting on the line through the PLC link.

``BatchLine`` is the ``LineActions`` of an agent that runs one batch per start. Over the
process's life the batch is first waiting (for Start), then running, then ended:

* Start hands the batch to the runtime; Starting completes with the runtime's first heartbeat
  to the PLC (it has opened the batch and settled recovery: units are decided from now on).
  Once the batch has ended, Start is refused: there is nothing left to run.
* Hold and Suspend set the PLC line-stop request (reason 20) and complete when the PLC reports
  the line stopped; units already past the camera are still decided and gated. Unhold and
  Unsuspend clear the request.
* Stop and Abort end a running batch through the runtime's line-stop path (the runtime's next
  heartbeat raises ``LineStopped`` with reason 21 or 22; units in flight are settled) and
  complete when the runtime has returned. Abort first sets the line-stop request (reason 22), so
  the conveyor stops at once. Before the batch runs they only withdraw a pending Start; Abort's
  line-stop request then stays until the next Start.
* Reset, Clear and Completing have nothing to do on this line: the runtime has settled every
  unit before it returns.

``OperatorPlc`` wraps the PLC link the runtime uses, so these actions reach the runtime without
the runtime knowing about PackML.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Self

from edge_agent.contracts import PlcLink, PlcState, Verdict
from edge_agent.errors import DeviceTimeout, LineStopped
from edge_agent.opcua_server.packml import Command
from edge_agent.stops import StopReason

PAUSE_TIMEOUT_S = 10.0  # how long the PLC may take to stop the conveyor on a hold request
POLL_S = 0.05


class OperatorPlc:
    """The runtime's PLC link, with a way for operator commands to end the batch: after
    ``end_batch(reason)`` the runtime's next heartbeat raises ``LineStopped(reason)``."""

    def __init__(self, plc: PlcLink) -> None:
        self._plc = plc
        self.name = plc.name
        self._stop: StopReason | None = None
        self.beating = asyncio.Event()  # set by the runtime's first heartbeat

    def __getattr__(self, attr: str) -> Any:
        # Optional extensions of the link (e.g. write_status) stay visible to the runtime.
        return getattr(self._plc, attr)

    async def __aenter__(self) -> Self:
        return self  # the agent opens and closes the wrapped link itself

    async def __aexit__(self, *exc: object) -> None:
        return None

    def end_batch(self, reason: StopReason) -> None:
        self._stop = reason

    # --- PlcLink --------------------------------------------------------------------------------

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        await self._plc.write_verdict(trigger, verdict)

    async def beat(self) -> None:
        if self._stop is not None:
            raise LineStopped(self._stop, "operator command over OPC UA")
        await self._plc.beat()
        self.beating.set()

    async def read_state(self) -> PlcState:
        return await self._plc.read_state()

    async def recent_rejects(self) -> Sequence[int]:
        return await self._plc.recent_rejects()

    async def request_line_stop(self, reason_code: int) -> None:
        await self._plc.request_line_stop(reason_code)

    async def clear_line_stop(self) -> None:
        await self._plc.clear_line_stop()


class BatchLine:
    """``LineActions`` for one batch run by ``LineRuntime`` (see the module docstring)."""

    def __init__(self, plc: OperatorPlc, *, pause_timeout_s: float = PAUSE_TIMEOUT_S) -> None:
        self.plc = plc
        self.pause_timeout_s = pause_timeout_s
        self._go = asyncio.Event()  # Start asked for the batch
        self._running = asyncio.Event()  # the runtime has the batch
        self._ended = asyncio.Event()  # the runtime returned (any way)
        self._stop_left = False  # an Abort before the batch ran left the line-stop request set

    # --- the agent's side -----------------------------------------------------------------------

    async def wait_for_start(self) -> None:
        """Return when Start asks for the batch (the runtime runs it next)."""
        while True:
            await self._go.wait()
            if self._go.is_set():  # a Stop may have withdrawn the Start meanwhile
                break
        self._running.set()

    def ended(self) -> None:
        """The runtime returned: the batch is over, whatever state the line is in."""
        self._ended.set()

    # --- LineActions ----------------------------------------------------------------------------

    def refuses(self, command: Command) -> str | None:
        if command is Command.START and self._ended.is_set():
            return (
                "the batch has ended; this agent runs one batch per start "
                "(start the agent again for the next batch)"
            )
        return None

    async def start(self) -> None:
        if self._stop_left:
            await self.plc.clear_line_stop()
            self._stop_left = False
        self._go.set()
        await self._running.wait()
        await _first(self.plc.beating.wait(), self._ended.wait())

    async def complete(self) -> None:
        return None

    async def reset(self) -> None:
        return None

    async def clear(self) -> None:
        return None

    async def hold(self) -> None:
        await self._pause()

    async def suspend(self) -> None:
        await self._pause()

    async def unhold(self) -> None:
        await self._resume()

    async def unsuspend(self) -> None:
        await self._resume()

    async def stop(self) -> None:
        await self._end(StopReason.OPERATOR_STOP)

    async def abort(self) -> None:
        await self._end(StopReason.OPERATOR_ABORT)

    # --- how -----------------------------------------------------------------------------------

    def _live(self) -> bool:
        return self._running.is_set() and not self._ended.is_set()

    async def _pause(self) -> None:
        if not self._live():
            return
        await self.plc.request_line_stop(StopReason.OPERATOR_HOLD.code)
        deadline = time.monotonic() + self.pause_timeout_s
        while (state := await self.plc.read_state()).running and self._live():
            if time.monotonic() > deadline:
                raise DeviceTimeout(
                    self.plc.name,
                    f"the PLC still runs the line {self.pause_timeout_s:.0f} s after the "
                    f"line-stop request (stop cause {state.stop_cause})",
                )
            await asyncio.sleep(POLL_S)

    async def _resume(self) -> None:
        if self._live():
            await self.plc.clear_line_stop()

    async def _end(self, reason: StopReason) -> None:
        self._go.clear()  # a Start not yet taken up by the runtime is withdrawn
        if self._ended.is_set():
            return  # the runtime already stopped the line, with its own reason
        if reason is StopReason.OPERATOR_ABORT:
            await self.plc.request_line_stop(reason.code)  # at once: abort waits for nothing
            self._stop_left = not self._running.is_set()
        if self._running.is_set():
            self.plc.end_batch(reason)
            await self._ended.wait()


async def _first(*waits: Any) -> None:
    """Wait until the first of the awaitables finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
