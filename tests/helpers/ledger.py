"""A ledger with serials already sent to the printer, for the printer queue tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from edge_agent.contracts import PrintRecord
from edge_agent.db import open_db
from edge_agent.ledger import BatchInfo, Ledger

GTIN = "09506000134352"


@contextlib.contextmanager
def ledger_with_sent(state_dir: Path, sent: int) -> Iterator[tuple[Ledger, BatchInfo, list[str]]]:
    ledger = Ledger(open_db(state_dir), read_point="urn:x", company_prefix_length=7)
    try:
        batch = ledger.open_batch("B1", GTIN, "LOT1", "281200", 100)
        ledger.ensure_allocated(batch, sent, length=10, alphabet="0123456789ABCDEF")
        serials = []
        for _ in range(sent):
            taken = ledger.take_for_print(batch)
            assert taken is not None
            serials.append(taken[1])
        yield ledger, batch, serials
    finally:
        ledger.conn.close()


def record(serials: list[str], i: int) -> PrintRecord:
    """The record the ledger sent for ``serials[i]`` (record seqs count from 1)."""
    return PrintRecord(i + 1, serials[i])
