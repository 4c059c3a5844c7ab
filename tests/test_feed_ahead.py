"""The printer refill is taken one block ahead: the next block's commit runs while the records
of the block before it go to the printer, so a slow commit does not leave the printer waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_agent.ledger import Ledger
from edge_agent.line.printer_link import PrinterLink
from tests.helpers.line import run_balanced, simulators

SLOW_COMMIT_S = 0.03  # a busy disk's fsync


@pytest.mark.slow
async def test_records_go_to_the_printer_while_the_next_block_commits(
    agent_config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    taking = 0  # blocks being taken right now
    sends_while_taking: list[bool] = []
    take, send = Ledger.take_block, PrinterLink.send

    async def slow_take(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        nonlocal taking
        taking += 1
        try:
            await asyncio.sleep(SLOW_COMMIT_S)
            return await take(self, *args, **kwargs)
        finally:
            taking -= 1

    async def spy_send(self: PrinterLink, record: Any) -> None:
        sends_while_taking.append(taking > 0)
        await send(self, record)

    monkeypatch.setattr(Ledger, "take_block", slow_take)
    monkeypatch.setattr(PrinterLink, "send", spy_send)
    units = 40  # ten refills of the demo printer's half buffer
    await run_balanced(agent_config_factory, simulators(), units)
    assert len(sends_while_taking) == units
    # Taken only once there is room, a block would commit while the printer holds nothing new
    # and no record would ever go out during a commit.
    assert sum(sends_while_taking) >= units // 2, sends_while_taking
