"""Timing margins of the line tests: a loaded test machine (CI runs 4 workers on 2 cores, a
developer's laptop runs a build beside) can stall the agent's event loop for most of a second.
That must not turn good units into ``late_verdict`` rejects or trip the PLC's heartbeat watch in
tests that check something else; the tests of those limits set their own, tight values."""

from __future__ import annotations

from typing import Any

from edge_agent.config.models import PlcSim

GATE_DELAY_S = 1.2  # camera to reject gate
VERDICT_DEADLINE_MS = 1000.0  # under the gate delay, as the config requires
PLC_HEARTBEAT_TIMEOUT_S = 2.0


def plc_sim(**changes: Any) -> PlcSim:
    """The simulated PLC of a line test: these margins and a verdict ring for a whole batch."""
    settings: dict[str, Any] = {
        "port": 0,
        "gate_delay_s": GATE_DELAY_S,
        "heartbeat_timeout_s": PLC_HEARTBEAT_TIMEOUT_S,
        "ring_size": 512,
    }
    return PlcSim(**(settings | changes))
