"""The background integrity check: the whole database, table by table, on a read-only
connection of its own; damage found is an alarm, a held line, refused starts and resumes, and a
full check at the next start whatever the clean-stop record says."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from benchmarks.history_db import build_history
from edge_agent import clean_stop, integrity, integrity_record
from edge_agent.alarms import AlarmBoard, AlarmKind
from edge_agent.db import close_db, open_db, record_integrity, write
from edge_agent.db_identity import StateFiles
from edge_agent.errors import LineStopped, StateRefused
from edge_agent.integrity import IntegrityWatch, check_database
from edge_agent.stops import StopReason


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("integrity") / "state"
    build_history(state, 2_000, batch_units=1_000)
    close_db(open_db(state))  # the check at start, then a clean stop: the next start skips it
    return state


@pytest.fixture
def state(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "state"))


def damage(state: Path) -> None:
    """The root page of one index made unreadable: nothing an opening reads."""
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'units_by_batch_trigger'"
        ).fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    wal = state / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # all of it in state.db
    with (state / "state.db").open("r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff")


def watch_of(conn: sqlite3.Connection, state: Path, stops: list[LineStopped]) -> IntegrityWatch:
    return IntegrityWatch(
        conn, state, interval_h=24, alarms=AlarmBoard(conn), stop_line=stops.append, pause_s=0
    )


def test_a_sound_database_passes_table_by_table(state: Path) -> None:
    result = check_database(state, pause_s=0)
    assert result.ok and result.problems == ()
    with sqlite3.connect(state / "state.db") as conn:
        (tables,) = conn.execute(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
        ).fetchone()
    assert result.tables == tables > 20


def test_a_damaged_index_is_found_though_the_database_opens(state: Path) -> None:
    damage(state)  # the root page of units_by_batch_trigger
    conn = open_db(state)  # closed cleanly: no check at start, the damage unseen
    conn.close()
    result = check_database(state, pause_s=0)
    assert not result.ok
    assert any(p.startswith("units:") for p in result.problems), result.problems


async def test_damage_found_raises_an_alarm_holds_the_line_and_the_next_start_checks(
    state: Path,
) -> None:
    damage(state)
    conn = open_db(state)
    stops: list[LineStopped] = []
    watch = watch_of(conn, state, stops)
    assert watch.problems() == []
    with capture_logs() as logs:
        assert await watch.run_once()
    failed = [e for e in logs if e["event"] == "integrity_check_failed"]
    assert failed and failed[0]["log_level"] == "error" and failed[0]["problems"]
    [alarm] = AlarmBoard(conn).active()
    assert (
        alarm.kind == AlarmKind.DATABASE_DAMAGED and "failed its integrity check" in alarm.message
    )
    assert [s.reason for s in stops] == [StopReason.STORAGE_ERROR]
    assert "restore" in str(stops[0])
    # starts and resumes are refused while the damage stands
    assert watch.problems() and "units" in watch.problems()[0]
    last = integrity_record.last_result(conn)
    assert last is not None and not last.ok and last.kind == "background"
    close_db(conn)  # a clean stop: its record alone would skip the check next time
    assert clean_stop.path_of(StateFiles(state)).exists()
    with capture_logs() as logs, pytest.raises(StateRefused, match="failed its integrity check"):
        open_db(state, announce=True).close()
    [check] = [e for e in logs if e["event"] == "integrity_check"]
    assert "background" in check["reason"]
    assert clean_stop.is_suspect(StateFiles(state))  # until a full check passes


def test_a_full_check_that_passes_clears_the_suspicion(state: Path) -> None:
    files = StateFiles(state)
    clean_stop.mark_suspect(files, "{}")
    conn = open_db(state)
    close_db(conn)
    assert not clean_stop.is_suspect(files)
    conn = open_db(state)
    last = integrity_record.last_result(conn)
    close_db(conn)
    assert last is not None and last.ok and last.kind == "start"  # the start's check counts


async def test_the_next_check_is_due_an_interval_after_the_last_one(state: Path) -> None:
    conn = open_db(state)
    try:
        stops: list[LineStopped] = []
        watch = watch_of(conn, state, stops)
        now = time.time()
        # the check at start (the fixture's first opening) counts as the last one
        assert 23 * 3600 < watch.due_in(now) <= 24 * 3600
        assert await watch.run_once() and watch.checks == 1 and stops == []
        last = integrity_record.last_result(conn)
        assert last is not None and last.ok and last.kind == "background" and last.tables > 20
        assert watch.due_in(last.at) == 24 * 3600
        assert watch.due_in(last.at + 25 * 3600) == 0
        metrics = {m.name: m.samples[0].value for m in integrity.integrity_metrics(conn)}
        assert metrics["edge_agent_integrity_check_ok"] == 1
        assert metrics["edge_agent_integrity_check_last_timestamp_seconds"] == last.at
        off = IntegrityWatch(
            conn, state, interval_h=0, alarms=AlarmBoard(conn), stop_line=stops.append
        )
        await off.run()  # returns at once: no check
        assert off.checks == 0
        with write(conn):
            conn.execute("DELETE FROM meta WHERE key = ?", (integrity_record.META_KEY,))
        assert watch.due_in() == integrity.FIRST_CHECK_S  # never checked: not at the start
    finally:
        close_db(conn)


def test_a_cancelled_check_ends_and_records_nothing(state: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(integrity.CheckCancelled):
        check_database(state, cancel=cancel)
    # a check paused in its time slice ends as soon as it is told to
    cancel = threading.Event()
    outcome: list[object] = []

    def checking() -> None:
        try:
            check_database(state, slice_s=0, pause_s=3600, cancel=cancel, nice=False)
        except integrity.CheckCancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=checking)
    thread.start()
    cancel.set()
    thread.join(timeout=60)
    assert not thread.is_alive() and len(outcome) == 1


def test_the_check_never_blocks_the_writer(state: Path) -> None:
    """While a check is paused inside a table (its snapshot open), the writer commits."""
    cancel = threading.Event()
    cancelled: list[object] = []

    def checking() -> None:
        try:
            check_database(state, slice_s=0, pause_s=0.2, cancel=cancel, nice=False)
        except integrity.CheckCancelled as exc:
            cancelled.append(exc)

    thread = threading.Thread(target=checking)
    conn = open_db(state)
    try:
        thread.start()
        for k in range(20):
            with write(conn):
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', ?)", (str(k),))
    finally:
        cancel.set()
        thread.join(timeout=60)
        close_db(conn)
    assert not thread.is_alive() and len(cancelled) == 1  # it was still checking meanwhile


@pytest.mark.slow
async def test_the_daemon_finds_damage_and_holds_the_line(
    agent_config_factory: Any, built: Path, tmp_path: Path
) -> None:
    """The daemon's own check (due at once: the last one was two days ago) finds a damaged
    index while it runs: the alarm is on the board, and an order that arrives is not started."""
    from edge_agent.app import Agent
    from simulators.pytest_plugin import drop_order, order_for
    from simulators.runner import SimulatorSet
    from tests.helpers.line import simulators
    from tests.helpers.waiting import until

    state = Path(shutil.copytree(built, tmp_path / "damaged"))
    conn = open_db(state)
    long_ago = integrity_record.IntegrityResult(time.time() - 48 * 3600, True, 1.0, 23)
    record_integrity(conn, long_ago)
    close_db(conn)
    damage(state)
    async with SimulatorSet(simulators()) as sims:
        config = agent_config_factory(
            simulators=sims,
            order=None,
            agent={"state_dir": str(state)},
            line={"verdict_deadline_ms": 500},
        )
        agent = Agent(config)
        ready = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(agent.serve(ready))
            try:
                await until(lambda: ready.is_set() or task.done(), "the daemon up", within=60)
                assert not task.done(), task.result()
                assert agent.commands is not None
                alarms = agent.commands.alarms

                def damaged() -> bool:
                    return any(a.kind == AlarmKind.DATABASE_DAMAGED for a in alarms.active())

                await until(damaged, "the damage found", within=120)
                drop_order(config.model.orders.inbox, order_for(id="ORD-DMG", quantity=10))

                def refused() -> bool:
                    return any(e["event"] == "auto_start_refused" for e in logs)

                await until(refused, "the order's start refused", within=60)
                assert sims.line.trigger_count == 0
            finally:
                agent.request_stop(LineStopped(StopReason.SHUTDOWN, "test over"))
                await asyncio.wait_for(task, 60)
    [failed] = [e for e in logs if e["event"] == "integrity_check_failed"]
    assert any(p.startswith("units:") for p in failed["problems"])
    assert clean_stop.is_suspect(StateFiles(state))


async def test_only_the_checks_own_thread_runs_at_low_priority(state: Path) -> None:
    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = await asyncio.to_thread(priority)
    conn = open_db(state)
    try:
        assert await watch_of(conn, state, []).run_once()
    finally:
        close_db(conn)
    # the loop's shared worker threads keep their priority (a niced one could not be restored)
    assert [await asyncio.to_thread(priority) for _ in range(4)] == [before] * 4
