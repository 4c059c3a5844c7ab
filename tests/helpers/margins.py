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
# Every unit between camera and gate holds a slot: the ring must outnumber them. Fast mode ran
# 430 units/s in bursts (516 units in the gate delay): a ring of 512 wrapped, and the gate
# rejected passes whose slot already held a later trigger. The contract's largest ring.
PLC_RING_SIZE = 1024


def plc_sim(**changes: Any) -> PlcSim:
    """The simulated PLC of a line test: these margins, and a verdict ring for every unit between
    camera and gate at full speed."""
    settings: dict[str, Any] = {
        "port": 0,
        "gate_delay_s": GATE_DELAY_S,
        "heartbeat_timeout_s": PLC_HEARTBEAT_TIMEOUT_S,
        "ring_size": PLC_RING_SIZE,
    }
    return PlcSim(**(settings | changes))
