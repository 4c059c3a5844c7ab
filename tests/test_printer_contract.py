"""The Printer contract, run against every registered printer driver and its simulator.

python-can's back-to-back suite, parameterised by printer type: each test here runs once per type
in ``edge_agent.registry`` against that type's simulator from ``simulators.catalog``, over its
default link (rci: a serial pty). Where printers differ, the simulator's traits say how
(``simulators/printers/traits.py``). A new printer protocol is in this suite as soon as it has a
registry line and a catalog line; protocol-specific behaviour stays in ``test_printer_<type>.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest

from edge_agent import registry
from edge_agent.contracts import ClearResult, Printer
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceFault,
    DeviceTimeout,
    PrinterBusy,
)
from simulators.catalog import SIMULATOR_TYPES
from simulators.line import SimLine
from simulators.printers.traits import PrinterSimTraits
from simulators.runner import simulator_class
from tests.helpers.printers import JOB, Gate, confirmed, rec, take, until

pytestmark = pytest.mark.usefixtures("no_leaks")

PRINTER_TYPES = sorted(registry.BUILTIN["printer"])


class Kit:
    """One printer type: its simulator, its driver, and what to expect of them."""

    def __init__(self, type_name: str, line: SimLine) -> None:
        self.type_name = type_name
        self.line = line
        self.sim_class: Any = simulator_class("printer", type_name)
        self.driver_class: Any = registry.driver_class("printer", type_name)
        self.traits: PrinterSimTraits = self.sim_class.traits

    def simulator(self, *, transport: str | None = None, buffer_size: int = 16) -> Any:
        options: dict[str, Any] = {"buffer_size": buffer_size}
        if transport is not None:
            options["transport"] = transport
        return self.sim_class(self.line, **options)

    def printer(self, sim: Any, name: str = "p", **overrides: Any) -> Any:
        table = sim.driver_config(**(self.traits.fast | overrides))
        return self.driver_class(name, self.driver_class.Config(**table))


@pytest.fixture(params=PRINTER_TYPES)
def kit(request: pytest.FixtureRequest) -> Kit:
    return Kit(request.param, SimLine(units_per_min=None))


@asynccontextmanager
async def running(kit: Kit, **options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The simulator and a connected driver with the job selected."""
    async with kit.simulator(**options) as sim, kit.printer(sim) as printer:
        await printer.select_job(JOB)
        yield sim, printer


def test_every_registered_printer_has_a_simulator_with_traits() -> None:
    missing = sorted(set(PRINTER_TYPES) - set(SIMULATOR_TYPES["printer"]))
    assert not missing, f"printer types without a simulator in simulators.catalog: {missing}"
    for type_name in PRINTER_TYPES:
        traits = getattr(simulator_class("printer", type_name), "traits", None)
        assert isinstance(traits, PrinterSimTraits), f"{type_name}: simulator declares no traits"


async def test_conforms_to_the_protocol_and_declares_its_buffer_depth(kit: Kit) -> None:
    async with kit.simulator() as sim:
        printer = kit.printer(sim, buffer_depth=3)
        assert isinstance(printer, Printer)
        assert printer.name == "p" and printer.buffer_depth == 3
        # Not entered: it never connects implicitly
        with pytest.raises(DeviceConnectionError):
            await printer.status()
        with pytest.raises(DeviceConnectionError):
            await printer.send(rec(1))


async def test_records_are_confirmed_in_print_order_only_once_printed(kit: Kit) -> None:
    gate = Gate(kit.line)
    async with running(kit) as (sim, printer):
        for i in range(1, 4):
            await printer.send(rec(i))
        await until(lambda: sim.buffered == 3, "three records queued")
        status = await printer.status()
        assert (status.buffered, status.fault) == (3, None)
        assert sim.printed == [], "printed while the line was stopped"
        gate.open()
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 3) == confirmed(1, 2, 3)
    assert sim.printed == [rec(i).serial for i in range(1, 4)]


async def test_clear_names_what_it_discarded_and_none_of_it_prints(kit: Kit) -> None:
    gate = Gate(kit.line)
    async with running(kit) as (sim, printer):
        for i in range(1, 4):
            await printer.send(rec(i))
        await until(lambda: sim.buffered == 3, "three records queued")
        # Named by identity, oldest first, as the ledger needs them
        assert await printer.clear() == ClearResult(tuple(rec(i) for i in range(1, 4)))
        assert (await printer.status()).buffered == 0
        gate.open()
        await printer.send(rec(99))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(99)  # nothing cleared was printed before it
    assert sim.printed == [rec(99).serial]


async def test_a_full_buffer_is_printer_busy_and_the_record_may_go_again(kit: Kit) -> None:
    if not kit.traits.refuses_when_full:
        pytest.skip(f"{kit.type_name} queues what it receives: nothing is refused")
    gate = Gate(kit.line)
    async with running(kit, buffer_size=2) as (_, printer):
        await printer.send(rec(1))
        await printer.send(rec(2))
        with pytest.raises(PrinterBusy) as busy:
            await printer.send(rec(3))
        assert isinstance(busy.value, DeviceFault) and busy.value.code == "BUFFER_FULL"
        gate.open()
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 2) == confirmed(1, 2)
            await printer.send(rec(3))  # refused, so not taken: the same record goes again
            assert await take(it, 1) == confirmed(3)


@pytest.mark.parametrize("kind", ["ink_out", "head_fault", "buffer_underrun"])
async def test_a_fault_is_raised_with_the_printers_own_code(kit: Kit, kind: Any) -> None:
    async with running(kit) as (sim, printer):
        await printer.send(rec(1))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 1) == confirmed(1)
            code = sim.faults.fault_code(kind)
            sim.faults.inject(kind)
            with pytest.raises(DeviceFault) as raised:
                await take(it, 1)
        assert raised.value.code == code
        status = await printer.status()
        assert (status.state, status.fault) == ("fault", code)
        with pytest.raises(DeviceFault):
            await printer.send(rec(2))  # refused (or not sent) while the fault lasts


async def test_a_dropped_link_is_a_connection_error_and_the_printer_reconnects(kit: Kit) -> None:
    transport = kit.traits.lost_link_transport  # a serial line cannot be dropped
    async with kit.simulator(transport=transport) as sim:
        printer = kit.printer(sim)
        async with printer:
            await printer.select_job(JOB)
            async with aclosing(printer.confirmations()) as it:
                waiting = asyncio.create_task(take(it, 1))
                await asyncio.sleep(0)  # let it block on the queue first
                sim.faults.drop_connection()
                with pytest.raises(DeviceConnectionError):
                    await waiting
            with pytest.raises(DeviceConnectionError):
                await printer.send(rec(1))
            with pytest.raises(DeviceConnectionError):
                await take(printer.confirmations(), 1)
        async with printer:  # the same object connects again (the runtime's reconnect)
            await printer.select_job(JOB)
            await printer.send(rec(2))
            async with aclosing(printer.confirmations()) as it:
                assert await take(it, 1) == confirmed(2)


async def test_an_unreachable_printer_is_a_connection_error(kit: Kit) -> None:
    transport = kit.traits.lost_link_transport
    async with kit.simulator(transport=transport) as sim:
        printer = kit.printer(sim)
    # The simulator is gone: its port refuses
    with pytest.raises(DeviceConnectionError):
        async with printer:
            pass


async def test_a_silent_printer_times_out_and_a_late_reply_is_not_misattributed(
    kit: Kit,
) -> None:
    async with running(kit) as (sim, printer):
        timeout = printer.reply_timeout_s
        sim.faults.delay_replies(2 * timeout)
        with pytest.raises(DeviceTimeout):
            await printer.status()
        sim.faults.delay_replies(0.0)
        await asyncio.sleep(2 * timeout)  # the late reply arrives and goes to the abandoned one
        status = await printer.status()
        assert (status.buffered, status.fault) == (0, None)


async def test_garbage_is_counted_and_the_stream_recovers(kit: Kit) -> None:
    async with running(kit) as (sim, printer):
        sim.faults.send_garbage(kit.traits.garbage)
        await until(lambda: printer.malformed_count > 0, "the garbage counted")
        for i in range(1, 3):
            await printer.send(rec(i))
        async with aclosing(printer.confirmations()) as it:
            assert await take(it, 2) == confirmed(1, 2)


async def test_lost_confirmations_are_never_invented(kit: Kit) -> None:
    async with running(kit) as (sim, printer):
        sim.faults.lose_confirmations(2)
        for i in range(1, 5):
            await printer.send(rec(i))
        async with aclosing(printer.confirmations()) as it:
            if kit.traits.lost_confirmations_rejected:
                # The link keeps order, so getting 3 first proves nothing stood in for 1 and 2
                assert await take(it, 2) == confirmed(3, 4)
                assert (await printer.status()).printed == 4
            else:  # a polled printer's next answer confirms them, late but in order
                assert await take(it, 4) == confirmed(1, 2, 3, 4)
        await until(lambda: len(sim.printed) == 4, "four units printed")
    assert sim.printed == [rec(i).serial for i in range(1, 5)]
