"""The state writer (edge_agent/writer.py): group commit in its own thread, off the event loop.

A resolved future means durable (read back on another connection); a group is one transaction
(a failing job alone is rolled back, a failing commit fails every job of its group); and a slow
commit delays only what awaits it: the loop's other work, and on a real line the PLC heartbeat,
keep their timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.modbus.driver import ModbusPlcBase
from edge_agent.contracts import ClearResult, PrintRecord
from edge_agent.db import open_db, open_reader, open_write_connection, write
from edge_agent.ledger import BatchInfo, Ledger, SerialState
from edge_agent.line.printer_reconcile import settle
from edge_agent.reconcile import reconcile
from edge_agent.writer import Writer
from tests.helpers.ledger import GTIN
from tests.helpers.line import (
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    make_config,
    run_agent,
    simulators,
    state_db,
)
from tests.helpers.waiting import until


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    conn = open_db(tmp_path / "state")
    with contextlib.closing(conn):
        with write(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER PRIMARY KEY)")
        yield tmp_path / "state"


@pytest.fixture
def writer(state: Path) -> Iterator[Writer]:
    w = Writer(open_write_connection(state))
    try:
        yield w
    finally:
        w.close()


def insert(n: int) -> Any:
    return lambda conn: conn.execute("INSERT INTO probe (n) VALUES (?)", (n,)).lastrowid


def stored(state: Path) -> set[int]:
    with contextlib.closing(open_reader(state)) as conn:
        return {n for (n,) in conn.execute("SELECT n FROM probe")}


async def test_jobs_queued_during_a_commit_share_the_next_one(writer: Writer, state: Path) -> None:
    gate = threading.Event()
    writer.before_commit = lambda: gate.wait(5)  # the first commit waits: the rest pile up
    first = asyncio.ensure_future(writer.run(insert(0)))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(writer.run(insert(n))) for n in range(1, 101)]
    await asyncio.sleep(0.05)
    assert not first.done() and stored(state) == set(), "resolved or visible before its commit"
    writer.before_commit = None
    gate.set()
    assert await asyncio.gather(first, *rest) == list(range(0, 101))
    assert stored(state) == set(range(101))
    assert writer.stats.commits == 2 and writer.stats.jobs == 101


async def test_a_failing_job_is_rolled_back_alone(writer: Writer, state: Path) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO probe (n) VALUES (50)")
        raise ValueError("bad job")

    gate = threading.Event()
    writer.before_commit = lambda: gate.wait(5)
    blocker = asyncio.ensure_future(writer.run(insert(0)))
    await asyncio.sleep(0.05)
    jobs = [writer.run(insert(1)), writer.run(half_then_fail), writer.run(insert(2))]
    writer.before_commit = None
    gate.set()
    results = await asyncio.gather(blocker, *jobs, return_exceptions=True)
    assert results[:2] == [0, 1] and results[3] == 2
    assert isinstance(results[2], ValueError)
    assert stored(state) == {0, 1, 2}


async def test_a_failed_commit_fails_every_job_of_the_group(writer: Writer, state: Path) -> None:
    def disk_error() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    writer.before_commit = disk_error
    results = await asyncio.gather(
        *(writer.run(insert(n)) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert stored(state) == set()
    writer.before_commit = None
    assert await writer.run(insert(9)) == 9  # the writer goes on
    assert stored(state) == {9}


async def test_deferred_jobs_ride_the_next_awaited_commit(writer: Writer, state: Path) -> None:
    gate = threading.Event()
    writer.before_commit = lambda: gate.wait(5)
    blocker = asyncio.ensure_future(writer.run(insert(0)))
    await asyncio.sleep(0.05)
    for n in range(1, 4):
        writer.defer(insert(n), "probe")
    awaited = asyncio.ensure_future(writer.run(insert(4)))
    writer.before_commit = None
    gate.set()
    await asyncio.gather(blocker, awaited)
    assert stored(state) == {0, 1, 2, 3, 4}  # durable once a job queued after them is
    assert writer.stats.commits == 2


async def test_a_deferred_job_alone_waits_a_little_for_company(writer: Writer, state: Path) -> None:
    writer.defer(insert(1), "probe")
    await asyncio.sleep(0.05)
    assert stored(state) == set() and writer.stats.commits == 0  # no commit of its own at once
    await until(lambda: writer.stats.commits == 1, "the deferred job committed", within=5.0)
    assert stored(state) == {1}


async def test_a_slow_commit_does_not_stall_the_loop(writer: Writer) -> None:
    writer.before_commit = lambda: time.sleep(0.6)  # a disk busy with someone else's fsync
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    started = time.monotonic()
    await writer.run(insert(1))
    took = time.monotonic() - started
    tick.cancel()
    assert took >= 0.6
    assert len(gaps) > 20 and max(gaps) < 0.25, f"the loop stalled {max(gaps):.3f} s"


@pytest.mark.slow
async def test_slow_commits_leave_the_plc_heartbeat_on_time(
    agent_config_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit of the line takes 120 ms (a slow eMMC): the agent's heartbeat to the PLC
    keeps its 200 ms interval, units keep passing in time, and every promise holds."""
    original = Writer.__init__

    def slow_writer(self: Writer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.before_commit = lambda: time.sleep(0.12)

    beats: list[float] = []
    beat = ModbusPlcBase.beat

    async def timed_beat(self: ModbusPlcBase) -> None:
        await beat(self)
        beats.append(time.monotonic())

    monkeypatch.setattr(Writer, "__init__", slow_writer)
    monkeypatch.setattr(ModbusPlcBase, "beat", timed_beat)
    from simulators.runner import SimulatorSet

    async with SimulatorSet(simulators()) as sims:
        config = make_config(agent_config_factory, sims, 60)
        stopped = await run_agent(config)
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
    assert stopped is None, stopped
    # Units pass (a unit waits for at most two commits: the one on disk, then its own); how many
    # are late depends on the test machine's load, not on the loop.
    assert report["balanced"] and report["passed"] > 0, report
    gaps = sorted(b - a for a, b in itertools.pairwise(beats))
    assert len(gaps) > 10
    # The interval is 200 ms. Commits on the loop would add 120 ms to most gaps (the line
    # commits several times a second); the 90th percentile allows for a busy test machine.
    assert gaps[int(0.9 * len(gaps))] < 0.29, f"heartbeat gaps {gaps[len(gaps) // 2 :]}"


# --- the ledger's hot path through the writer -------------------------------------------------


@pytest.fixture
def hot_ledger(tmp_path: Path) -> Iterator[tuple[Ledger, Writer, BatchInfo]]:
    state_dir = tmp_path / "state"
    ledger = Ledger(open_db(state_dir), read_point="urn:x", company_prefix_length=7)
    writer = Writer(open_write_connection(state_dir))
    ledger.attach(writer)
    try:
        batch = ledger.open_batch("B1", GTIN, "LOT1", "281200", 100)
        ledger.ensure_allocated(batch, 20, length=10, alphabet="0123456789ABCDEF")
        yield ledger, writer, batch
    finally:
        writer.close()
        ledger.conn.close()


async def test_a_block_not_handed_over_is_settled_like_any_unconfirmed_record(
    hot_ledger: tuple[Ledger, Writer, BatchInfo],
) -> None:
    """One commit marks a block of 4 sent; only 2 reached the printer when the link (or the
    process) died, the first printed unconfirmed, the second still queued. The reconcile makes
    the queued one and the 2 never handed over unused, and leaves the first to be rejected."""
    ledger, writer, batch = hot_ledger
    block = await ledger.take_block(batch, 4)
    assert writer.stats.commits == 1
    seqs = [seq for seq, _ in block]
    assert seqs == list(range(seqs[0], seqs[0] + 4))  # consecutive records, in send order
    serials = [serial for _, serial in block]
    queued = ClearResult(named=(PrintRecord(*block[1]),))
    result = settle(ledger.unconfirmed_in_send_order(batch.id), queued)
    assert result.unconfirmed == serials[:1]
    assert result.cleared == serials[1:2] and result.not_received == serials[2:]


async def test_a_confirmation_counts_at_once_and_is_durable_with_the_next_commit(
    hot_ledger: tuple[Ledger, Writer, BatchInfo],
) -> None:
    ledger, _writer, batch = hot_ledger
    [(_, serial), (_, other)] = await ledger.take_block(batch, 2)
    assert ledger.note_printed(batch, serial)
    assert not ledger.note_printed(batch, serial), "a repeated confirmation counted twice"
    assert ledger.state_of(GTIN, serial) == SerialState.PRINTED  # the loop's view
    # a lost link settles unconfirmed serials: the confirmed one is not among them
    assert ledger.reject_sent(batch, [serial, other], "printer_link_lost") == [other]
    await ledger.flush()
    with contextlib.closing(open_reader(writer_state(ledger))) as conn:
        (state,) = conn.execute("SELECT state FROM serials WHERE serial = ?", (serial,)).fetchone()
    assert state == SerialState.PRINTED


async def test_confirmations_before_a_commit_ride_one_writer_job(
    hot_ledger: tuple[Ledger, Writer, BatchInfo],
) -> None:
    # One job (and one savepoint) for every confirmation queued before the writer starts it,
    # not one each: each job cost the writer thread GIL round trips on the line.
    ledger, writer, batch = hot_ledger
    serials = [serial for _, serial in await ledger.take_block(batch, 5)]
    jobs = writer.stats.jobs
    assert all(ledger.note_printed(batch, serial) for serial in serials)
    assert not ledger.note_printed(batch, serials[0]), "a repeated confirmation counted twice"
    await ledger.flush()
    assert writer.stats.jobs == jobs + 2  # the confirmations' job and the flush
    assert not ledger.note_printed(batch, serials[0]), "committed: printed, not sent"
    with contextlib.closing(open_reader(writer_state(ledger))) as conn:
        marks = ",".join("?" * len(serials))
        states = conn.execute(
            f"SELECT DISTINCT state FROM serials WHERE serial IN ({marks})", serials
        ).fetchall()
        moves = conn.execute(
            "SELECT count(*) FROM transitions WHERE to_state = 'printed' AND from_state = 'sent'"
        ).fetchone()
    assert states == [(SerialState.PRINTED,)] and moves == (5,)
    # the next confirmation after the commit starts a job of its own
    [(_, later)] = await ledger.take_block(batch, 1)
    assert ledger.note_printed(batch, later)
    await ledger.flush()
    assert ledger.state_of(GTIN, later) == SerialState.PRINTED


def writer_state(ledger: Ledger) -> Path:
    path = ledger.conn.execute("PRAGMA database_list").fetchone()[2]
    return Path(path).parent
