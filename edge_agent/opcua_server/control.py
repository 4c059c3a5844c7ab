"""Operator commands from the OPC UA server, acting on the line through the PLC link.

``OperatorPlc`` wraps the PLC link the runtime uses. Hold and Unhold set and clear the PLC
line-stop request (the PLC stops the conveyor; units already past the camera are still decided
and gated, so nothing is left without a verdict). Stop and Abort make the runtime's next
heartbeat raise ``LineStopped``: the batch ends through the runtime's normal line-stop path
(line-stop request to the PLC, settling the units in flight), exactly as for any other stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

from edge_agent.contracts import PlcLink, PlcState, Verdict
from edge_agent.errors import LineStopped
from edge_agent.stops import StopReason

HOLD_CODE = StopReason.OPERATOR_HOLD.code  # line-stop reason codes sent for operator commands


class OperatorPlc:
    def __init__(self, plc: PlcLink) -> None:
        self._plc = plc
        self.name = plc.name
        self.held = False
        self._stop: StopReason | None = None

    def __getattr__(self, attr: str) -> Any:
        # Optional extensions of the link (e.g. write_status) stay visible to the runtime.
        return getattr(self._plc, attr)

    async def __aenter__(self) -> Self:
        return self  # the agent opens and closes the wrapped link itself

    async def __aexit__(self, *exc: object) -> None:
        return None

    # --- PlcLink --------------------------------------------------------------------------------

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        await self._plc.write_verdict(trigger, verdict)

    async def beat(self) -> None:
        if self._stop is not None:
            raise LineStopped(self._stop, "operator command over OPC UA")
        await self._plc.beat()

    async def read_state(self) -> PlcState:
        return await self._plc.read_state()

    async def recent_rejects(self) -> Sequence[int]:
        return await self._plc.recent_rejects()

    async def request_line_stop(self, reason_code: int) -> None:
        if self._stop is not None and reason_code == StopReason.OTHER.code:
            reason_code = self._stop.code
        await self._plc.request_line_stop(reason_code)

    async def clear_line_stop(self) -> None:
        await self._plc.clear_line_stop()

    # --- LineControl ----------------------------------------------------------------------------

    async def hold(self) -> None:
        await self._plc.request_line_stop(HOLD_CODE)
        self.held = True

    async def unhold(self) -> None:
        await self._plc.clear_line_stop()
        self.held = False

    async def stop(self) -> None:
        self._stop = StopReason.OPERATOR_STOP

    async def abort(self) -> None:
        self._stop = StopReason.OPERATOR_ABORT
        await self._plc.request_line_stop(
            self._stop.code
        )  # at once: abort does not wait for a beat
