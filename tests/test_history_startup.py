"""The full integrity check runs after an unclean stop, not at every start.

A database the agent closed itself carries a clean-stop record; the next start skips the scan
of every page. The record is removed before anything is written, so a crash in that session
(here: SIGKILL, or a connection closed without ``close_db``) means a full check next time, and
a damaged database is refused then as always. A record that does not describe the database as
it is (another database's, or a write since) is not trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from benchmarks.history_db import build_history
from edge_agent import clean_stop
from edge_agent.db import close_db, open_db, write
from edge_agent.db_identity import StateFiles
from edge_agent.errors import StateRefused

ROOT = Path(__file__).resolve().parents[1]


def opened(state: Path) -> tuple[object, list[str]]:
    with capture_logs() as logs:
        conn = open_db(state, announce=True)
    return conn, [entry["event"] for entry in logs]


def record_path(state: Path) -> Path:
    return clean_stop.path_of(StateFiles(state))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    build_history(state, 2_000, batch_units=1_000)  # closed without close_db: no record
    return state


def test_only_a_start_after_an_unclean_stop_checks_every_page(state: Path) -> None:
    conn, events = opened(state)
    assert "integrity_check" in events and "integrity_check_passed" in events
    close_db(conn)  # type: ignore[arg-type]
    record = json.loads(record_path(state).read_text())
    assert record["database_id"] == json.loads((state / "state.id").read_text())["database_id"]

    conn, events = opened(state)
    assert "integrity_check_skipped" in events and "integrity_check" not in events
    # removed before this session wrote anything: a crash from here on leaves no record
    assert not record_path(state).exists()
    conn.close()  # type: ignore[attr-defined]  # not close_db: as if the process died here
    conn, events = opened(state)
    assert "integrity_check" in events
    close_db(conn)  # type: ignore[arg-type]


def test_a_killed_agent_gets_the_check_and_a_damaged_database_is_refused(state: Path) -> None:
    conn, _ = opened(state)
    close_db(conn)  # type: ignore[arg-type]
    assert record_path(state).exists()
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from edge_agent.db import open_db, write
        conn = open_db(Path({str(state)!r}))
        with write(conn):
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', '1')")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not record_path(state).exists()
    damage(state)
    open_db(state, check=False).close()  # the damage is found by the check alone
    with pytest.raises(StateRefused, match="failed its integrity check"):
        open_db(state).close()


def test_a_record_that_does_not_describe_the_database_is_not_trusted(
    state: Path, tmp_path: Path
) -> None:
    with capture_logs() as logs:  # command-line tools (announce=False) say nothing about it
        close_db(open_db(state))
    assert logs == []
    other = tmp_path / "other"
    build_history(other, 1_000, batch_units=1_000)
    close_db(open_db(other))
    shutil.copy(record_path(other), record_path(state))  # another database's record
    conn, events = opened(state)
    assert "integrity_check" in events and "integrity_check_skipped" not in events
    close_db(conn)  # type: ignore[arg-type]

    saved = record_path(state).read_text()
    conn = open_db(state)
    with write(conn):  # a write after that close: the record is stale
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', '2')")
    conn.close()
    record_path(state).write_text(saved)
    conn, events = opened(state)
    assert "integrity_check" in events
    close_db(conn)  # type: ignore[arg-type]

    record_path(state).write_text("{not json")
    conn, events = opened(state)
    assert "integrity_check" in events and not record_path(state).exists()
    conn.close()  # type: ignore[attr-defined]


def test_a_clean_start_of_a_large_database_does_not_read_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_history(state, 50_000, batch_units=5_000)
    close_db(open_db(state))
    started = time.process_time()
    conn, events = opened(state)
    spent = time.process_time() - started
    close_db(conn)  # type: ignore[arg-type]
    assert "integrity_check_skipped" in events
    # the check itself costs about 0.1 s of CPU for these 88 MB; the opening without it, the
    # identity checks and the schema script, a few milliseconds
    assert spent < 0.05, spent


def damage(state: Path) -> None:
    """The root page of one index made unreadable: nothing the opening itself reads."""
    import sqlite3

    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'units_by_batch_trigger'"
        ).fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    assert os.path.getsize(state / "state.db-wal") == 0  # all of it in state.db
    with (state / "state.db").open("r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff")


@pytest.mark.slow
async def test_the_service_records_its_clean_exit_and_a_killed_one_is_checked(
    tmp_path: Path,
) -> None:
    from simulators.runner import SimulatorSet
    from tests.helpers.agent_process import AgentProcess, run_agent_process, write_agent_config
    from tests.helpers.line import simulators
    from tests.helpers.waiting import until

    state = tmp_path / "state"
    log = tmp_path / "agent.out"
    async with SimulatorSet(simulators()) as sims:
        config = write_agent_config(tmp_path / "agent.toml", sims, state, units=10)
        assert await run_agent_process(config, log) == 0, log.read_text()[-3000:]
        assert record_path(state).exists()
        assert '"event": "storage_capacity"' in log.read_text()  # how much history fits
        again = write_agent_config(
            tmp_path / "again.toml", sims, state, units=100_000, batch_id="PROC-2"
        )
        async with AgentProcess(again, log) as agent:
            await until(lambda: "integrity_check_skipped" in agent.output(), "the start", within=30)
            assert not record_path(state).exists()
            await until(lambda: sims.line.trigger_count > 5, "units on the line", within=30)
            agent.send_signal(signal.SIGKILL)
            await agent.wait()
    assert not record_path(state).exists()
    conn, events = opened(state)
    assert "integrity_check" in events
    close_db(conn)  # type: ignore[arg-type]
