"""The PLC contract's meaning (``drivers.plc.contract``), and the two wires that carry it agreeing
with it: the Modbus register map and the OPC UA node set are only where the values go."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.plc import contract
from drivers.plc.modbus import registers as reg
from drivers.plc.opcua import nodes as n
from edge_agent.contracts import Verdict

pytestmark = pytest.mark.usefixtures("no_leaks")

u32 = st.integers(0, contract.U32_MAX)
sizes = st.integers(1, contract.MAX_REJECT_LOG_SIZE)


def test_verdict_values_exist_once() -> None:
    """The wire values are the core's Verdict enum plus 0 (no verdict), on both wires."""
    assert {0, int(Verdict.PASS), int(Verdict.REJECT)} == contract.VERDICT_VALUES
    assert (reg.VERDICT_NONE, reg.VERDICT_PASS, reg.VERDICT_REJECT) == (0, 1, 2)
    assert (n.VERDICT_NONE, n.VERDICT_PASS, n.VERDICT_REJECT) == (0, 1, 2)
    assert reg.StopCause is contract.StopCause
    for bad in (-1, 3, 255):
        with pytest.raises(ValueError, match="not 0, 1 or 2"):
            contract.check_verdict(bad)


@given(trigger=u32, held=u32, verdict=st.integers(0, 0xFFFF))
def test_both_wires_apply_the_one_gate_rule(trigger: int, held: int, verdict: int) -> None:
    expected = held == trigger and verdict == Verdict.PASS
    assert contract.gate_passes(held, verdict, trigger) == expected
    registers = [*reg.split_u32(held), verdict]
    assert reg.gate_passes(registers, trigger) == expected
    assert n.gate_passes([held, verdict], trigger) == expected


@given(trigger=u32)
def test_garbage_in_a_slot_rejects(trigger: int) -> None:
    for garbage in (None, [], [trigger], [trigger, 1, 0], "pass"):
        assert not n.gate_passes(garbage, trigger)  # type: ignore[arg-type]
    assert not contract.gate_passes(str(trigger), Verdict.PASS, trigger)


@given(trigger=u32, ring=st.integers(1, contract.MAX_RING_SIZE))
def test_both_wires_use_the_same_slot(trigger: int, ring: int) -> None:
    k = contract.verdict_slot(trigger, ring)
    assert k == trigger % ring
    assert reg.verdict_slot_address(trigger, ring) == reg.HR_VERDICT_BASE + 3 * k
    assert n.verdict_slot(trigger, ring) == k


@given(data=st.data(), size=sizes, confirms=st.integers(0, 5000))
def test_both_wires_read_the_same_reject_log(data: st.DataObject, size: int, confirms: int) -> None:
    by_slot = data.draw(st.lists(u32, min_size=size, max_size=size))
    entries = contract.reject_log_entries(by_slot, confirms)
    assert len(entries) == min(confirms, size)
    if confirms:  # the newest entry is in the slot of the last confirm
        assert entries[-1] == by_slot[(confirms - 1) % size]
    registers = [word for trigger in by_slot for word in reg.split_u32(trigger)]
    assert reg.decode_reject_log(registers, confirms) == entries
    assert n.decode_reject_log(by_slot, confirms) == entries


def test_reject_log_and_ring_bounds() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        contract.reject_log_index(0)
    for bad in (0, contract.MAX_REJECT_LOG_SIZE + 1):
        with pytest.raises(ValueError):
            contract.reject_log_entries([0] * bad, 1)
        with pytest.raises(ValueError):
            contract.check_ring_size(bad if bad else 0)
    assert contract.next_heartbeat(contract.U16_MAX) == 0
    for bad in (0, contract.U16_MAX + 1):
        with pytest.raises(ValueError, match=r"1\.\.65535"):
            contract.check_stop_reason(bad)


def test_opc_ua_does_not_import_the_modbus_package() -> None:
    """The contract lives apart from any wire: the OPC UA driver and simulator load without the
    Modbus package (pymodbus is not needed on an OPC UA line)."""
    code = (
        "import sys, drivers.plc.opcua.driver, simulators.plc.opcua\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('drivers.plc.modbus', 'pymodbus')))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
