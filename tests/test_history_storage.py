"""Storage limits follow the free disk space, and the start says how much history still fits.

By default no fixed database size stops the line (the old 2048 MB default stopped a line with
about 1.3M events of history): the database may use the disk down to ``disk_free_stop_mb``, and
delivered events are pruned early once the free space is below ``disk_free_alarm_mb``. A fixed
``quota_stop_mb`` still stops the line at its size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from benchmarks.history_db import build_history
from edge_agent.config.models import UpstreamSection
from edge_agent.db import open_db, write
from edge_agent.errors import LineStopped
from edge_agent.outbox import forwarding
from edge_agent.outbox.forwarding import QuotaGuard
from edge_agent.outbox.store import OutboxStore, free_bytes, used_bytes
from edge_agent.storage import DEFAULT_BYTES_PER_UNIT, capacity, log_capacity

MB = 1024 * 1024


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("storage") / "state"
    build_history(state, 20_000, batch_units=2_000)
    return state


@pytest.fixture
def conn(history: Path, tmp_path: Path) -> Iterator[Any]:
    import shutil

    copy = tmp_path / "state"
    shutil.copytree(history, copy)
    c = open_db(copy, check=False)
    with contextlib.closing(c):
        yield c


def test_the_default_has_no_fixed_size() -> None:
    upstream = UpstreamSection()
    assert upstream.quota_stop_mb is None and upstream.quota_alarm_mb is None


def test_a_large_history_does_not_stop_the_line_by_default(
    conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarding, "used_bytes", lambda _conn: 3 * 1024 * MB)  # 3 GB
    upstream = UpstreamSection()
    QuotaGuard(conn, alarm_mb=upstream.quota_alarm_mb, stop_mb=upstream.quota_stop_mb).check()
    with pytest.raises(LineStopped) as stop:  # a fixed level, as configured, still holds
        QuotaGuard(conn, alarm_mb=None, stop_mb=2048).check()
    assert stop.value.reason == "outbox_full"


def test_delivered_events_give_way_when_the_disk_runs_low(conn: Any) -> None:
    store = OutboxStore(conn, ["site"])
    alarms: list[str] = []
    before = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    plenty = QuotaGuard(conn, alarm_mb=None, stop_mb=None, store=store, free_alarm_mb=1.0)
    plenty.check()  # far more than 1 MB free: nothing pruned
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == before
    low = free_bytes(conn) / MB + 1024  # as if the disk had less free than the alarm level
    with write(conn):  # one event still pending: never pruned
        conn.execute("DELETE FROM outbox_delivery WHERE seq = (SELECT max(seq) FROM outbox)")
        conn.execute(
            "UPDATE outbox SET state = 'pending' WHERE seq = (SELECT max(seq) FROM outbox)"
        )
    guard = QuotaGuard(
        conn, alarm_mb=None, stop_mb=None, store=store, free_alarm_mb=low, on_alarm=alarms.append
    )
    guard.check()
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    assert alarms == []  # the disk guard raises the disk alarm; no second one for the quota


def test_a_fixed_stop_level_alone_alarms_at_half(conn: Any) -> None:
    alarms: list[str] = []
    size_mb = used_bytes(conn) / MB
    guard = QuotaGuard(conn, alarm_mb=None, stop_mb=size_mb * 1.5, on_alarm=alarms.append)
    guard.check()
    assert len(alarms) == 1 and f"alarm level {size_mb * 0.75:g} MB" in alarms[0]


def test_the_start_says_how_much_history_fits(conn: Any, history: Path) -> None:
    free_before = free_bytes(conn)
    room = capacity(conn, history, disk_free_stop_mb=128, quota_stop_mb=None)
    free_after = free_bytes(conn)  # other processes write to this disk meanwhile
    assert room.units_recorded == 20_000 and room.limited_by == "[agent] disk_free_stop_mb"
    assert 1000 < room.bytes_per_unit < 2500  # measured on this database
    fits = sorted((free - 128 * MB) // room.bytes_per_unit for free in (free_before, free_after))
    assert fits[0] <= room.units_fit <= fits[1]
    assert room.events_fit == room.units_fit  # one event per unit in this history
    size_mb = used_bytes(conn) / MB
    with capture_logs() as logs:
        small = log_capacity(
            conn, history, disk_free_stop_mb=128, quota_stop_mb=size_mb + 1, batch_target=5_000
        )
    assert small.limited_by == "[upstream] quota_stop_mb"
    assert abs(small.units_fit - MB // small.bytes_per_unit) <= 1
    [entry] = logs
    assert entry["event"] == "storage_low" and entry["log_level"] == "warning"
    assert f"room for about {small.units_fit:,} more units" in entry["detail"]
    assert "this batch needs 5,000" in entry["detail"]


def test_a_new_database_uses_the_default_size_per_unit(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "state")
    with contextlib.closing(conn), capture_logs() as logs:
        room = log_capacity(conn, tmp_path / "state", disk_free_stop_mb=0, quota_stop_mb=None)
    assert room.bytes_per_unit == DEFAULT_BYTES_PER_UNIT and room.units_recorded == 0
    assert [e["event"] for e in logs] == ["storage_capacity"]
