"""The outbox store and the forwarder loop, with in-process fake forwarders."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import pytest
import structlog

from edge_agent.contracts import Delivery, OutboxEvent
from edge_agent.db import SCHEMA_VERSION, open_db
from edge_agent.errors import DeliveryError, LedgerError, LineStopped
from edge_agent.outbox.forwarding import ForwarderLoop, QuotaGuard
from edge_agent.outbox.store import OutboxStore, used_bytes
from tests.helpers.outbox import add_events

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    c = open_db(tmp_path / "state")
    yield c
    c.close()


class FakeForwarder:
    """Fails ``fail`` times (DeliveryError), then delivers; rejects IDs in ``invalid``."""

    def __init__(self, fail: int = 0, invalid: Sequence[str] = (), retry_after_s: float = 0.0):
        self.name = "fake"
        self.fail = fail
        self.invalid = set(invalid)
        self.retry_after_s = retry_after_s
        self.calls: list[list[int]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def deliver(self, events: Sequence[OutboxEvent]) -> Delivery:
        self.calls.append([e.seq for e in events])
        if self.fail:
            self.fail -= 1
            raise DeliveryError("503", upstream=self.name, retry_after_s=self.retry_after_s)
        out = Delivery()
        for e in events:
            if e.event_id in self.invalid:
                out.rejected[e.event_id] = "invalid"
            else:
                out.delivered.append(e.event_id)
        return out


def test_pending_is_in_outbox_order_and_marks_are_durable(conn: Any, tmp_path: Path) -> None:
    ids = add_events(conn, 10)
    store = OutboxStore(conn, ["a"])
    events = store.pending("a", 4)
    assert [e.event_id for e in events] == ids[:4]
    # out of order: the 2nd and 3rd first, then the 1st; the cursor follows the first gap
    store.mark("a", events, [ids[1], ids[2]], {})
    assert [e.event_id for e in store.pending("a", 3)] == [ids[0], ids[3], ids[4]]
    assert store.cursor("a") == 0
    store.mark("a", events, [ids[0]], {})
    assert store.cursor("a") == 3
    reopened = open_db(tmp_path / "state")
    try:
        again = OutboxStore(reopened, ["a"])
        assert [e.event_id for e in again.pending("a", 100)] == ids[3:]
    finally:
        reopened.close()


def test_each_forwarder_has_its_own_state(conn: Any) -> None:
    ids = add_events(conn, 3)
    store = OutboxStore(conn, ["mqtt", "http"])
    store.mark("mqtt", store.pending("mqtt", 10), ids, {})
    assert store.pending("mqtt", 10) == []
    assert len(store.pending("http", 10)) == 3
    states = {s for (s,) in conn.execute("SELECT state FROM outbox")}
    assert states == {"pending"}  # not done until every forwarder is
    store.mark("http", store.pending("http", 10), ids[:2], {ids[2]: "bad"})
    rows = dict(conn.execute("SELECT event_id, state FROM outbox"))
    assert rows == {ids[0]: "delivered", ids[1]: "delivered", ids[2]: "dead"}
    [mqtt, http] = store.status()
    assert (mqtt.pending, mqtt.dead_letters) == (0, 0)
    assert (http.pending, http.dead_letters, http.delivered_last_minute) == (0, 1, 2)


def test_replay_requeues_delivered_events_since(conn: Any) -> None:
    old = add_events(conn, 3)
    conn.execute("UPDATE outbox SET created_at = created_at - 7200")
    since = time.time() - 60
    new = add_events(conn, 2)
    store = OutboxStore(conn, ["a"])
    store.mark("a", store.pending("a", 10), old + new[:1], {new[1]: "bad"})
    assert store.replay(since) == 1
    assert [e.event_id for e in store.pending("a", 10)] == new[:1]
    assert store.replay(since, dead=True) == 1  # dead letters only on request
    assert [e.event_id for e in store.pending("a", 10)] == new
    assert store.replay(time.time() + 10) == 0


def test_prune_keeps_pending_and_dead_letters(conn: Any) -> None:
    ids = add_events(conn, 5000)
    store = OutboxStore(conn, ["a"])
    events = store.pending("a", 5000)
    store.mark("a", events[:4000], [e.event_id for e in events[:3999]], {ids[3999]: "bad"})
    assert store.prune(30) == 0  # acknowledged just now
    assert store.prune(30, now=time.time() + 31 * 86400) == 3999
    left = dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state"))
    assert left == {"dead": 1, "pending": 1000}
    assert len(store.pending("a", 5000)) == 1000


async def test_loop_backs_off_logs_once_and_recovers(conn: Any) -> None:
    add_events(conn, 30)
    store = OutboxStore(conn, ["fake"])
    fwd = FakeForwarder(fail=4)
    loop = ForwarderLoop(
        store, fwd, "fake", batch_size=10, backoff_initial_s=0.01, rng=random.Random(1)
    )
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(loop.run())
        for _ in range(200):
            if not store.pending("fake", 1):
                break
            await asyncio.sleep(0.02)
        loop.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    events = [entry["event"] for entry in logs]
    assert events.count("upstream_unavailable") == 1
    assert events.count("upstream_recovered") == 1
    assert loop.delivered == 30 and fwd.calls[0] == fwd.calls[4] == list(range(1, 11))


def test_backoff_has_jitter_a_cap_and_honours_retry_after() -> None:
    loop = ForwarderLoop(
        None,  # type: ignore[arg-type]
        FakeForwarder(),
        "x",
        backoff_initial_s=1.0,
        backoff_max_s=8.0,
        rng=random.Random(7),
    )
    loop.failures = 10
    delays = {round(loop.delay(None), 3) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= 8.0 and min(delays) >= 0.5
    assert loop.delay(20.0) >= 20.0


async def test_dead_letters_raise_an_alarm_and_do_not_block(conn: Any) -> None:
    ids = add_events(conn, 5)
    store = OutboxStore(conn, ["fake"])
    alarms: list[str] = []
    loop = ForwarderLoop(store, FakeForwarder(invalid=[ids[1]]), "fake", on_alarm=alarms.append)
    task = asyncio.create_task(loop.run())
    for _ in range(100):
        if not store.pending("fake", 1):
            break
        await asyncio.sleep(0.02)
    loop.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert loop.delivered == 4 and loop.dead == 1 and len(alarms) == 1
    assert [d["event_id"] for d in store.dead_letters()] == [ids[1]]


def test_quota_alarm_then_stop_never_drops(conn: Any, tmp_path: Path) -> None:
    alarms: list[str] = []
    size_mb = used_bytes(conn) / 2**20
    store = OutboxStore(conn, ["a"])
    guard = QuotaGuard(
        conn, alarm_mb=size_mb + 0.5, stop_mb=size_mb + 2, store=store, on_alarm=alarms.append
    )
    guard.check()
    assert alarms == []
    add_events(conn, 1500)  # ~0.7 MB of events
    guard.check()
    guard.check()
    assert len(alarms) == 1 and "alarm level" in alarms[0]
    add_events(conn, 4000)
    with pytest.raises(LineStopped) as stop:
        guard.check()
    assert stop.value.reason == "outbox_full" and "no event was dropped" in str(stop.value)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (5500,)
    # delivering frees the space: delivered events are pruned early under quota pressure
    for _ in range(6):
        store.mark("a", (events := store.pending("a", 1000)), [e.event_id for e in events], {})
    guard.check()
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_schema_1_database_is_migrated(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "state.db")
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
    )
    old.close()
    conn = open_db(tmp_path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert OutboxStore(conn, ["a"]).pending("a", 1) == []
    finally:
        conn.close()


def test_truncated_database_is_refused_and_kept(conn: Any, tmp_path: Path) -> None:
    add_events(conn, 3000)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db = tmp_path / "state" / "state.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    size = db.stat().st_size
    with pytest.raises(LedgerError, match="restore"):
        open_db(tmp_path / "state").close()
    assert db.stat().st_size == size  # nothing silently discarded or rewritten
    # the service itself refuses to run the line, says what to do, and exits 2: a damaged
    # database needs a person, so systemd does not restart the service in a loop
    config = (ROOT / "config" / "demo.toml").read_text()
    config = config.replace('state_dir = "demo-state"', f'state_dir = "{tmp_path / "state"}"')
    (tmp_path / "agent.toml").write_text(config)
    run = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(tmp_path / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "restore" in run.stderr and "do not run the line" in run.stderr
    assert "Traceback" not in run.stderr
    assert db.stat().st_size == size


def test_the_chaos_oracle_has_teeth(conn: Any) -> None:
    from types import SimpleNamespace

    from tests.helpers.outbox import check_oracle, ledger_events

    add_events(conn, 3, "B1")
    events = ledger_events(conn)
    got = [SimpleNamespace(event_id=k, payload=v[1]) for k, v in events.items()]
    check_oracle(conn, got + got[:1])  # duplicates are fine
    with pytest.raises(AssertionError, match="never arrived"):
        check_oracle(conn, got[1:])
    with pytest.raises(AssertionError, match="out of order"):
        check_oracle(conn, [got[1], got[0], got[2]])
    with pytest.raises(AssertionError):
        check_oracle(conn, [*got[:2], SimpleNamespace(event_id=got[2].event_id, payload="{}")])
    with pytest.raises(AssertionError, match="never produced"):
        check_oracle(conn, [*got, SimpleNamespace(event_id="urn:uuid:x", payload="{}")])


def _config_with(upstream: str) -> str:
    return (ROOT / "config" / "demo.toml").read_text() + "\n" + upstream


def test_forwarder_tables_are_validated_by_their_driver() -> None:
    from edge_agent.config import parse_config
    from edge_agent.config.loader import ConfigInvalid

    ok = parse_config(
        _config_with(
            '[upstream]\n[[upstream.forwarders]]\nname = "a"\ntype = "mqtt"\nhost = "h"\n'
            '[[upstream.forwarders]]\ntype = "mqtt"\nhost = "h2"\ndelivery = "end-to-end"\n'
        ),
        "line.toml",
    )
    assert [(f.name, f.type_name) for f in ok.forwarders] == [("a", "mqtt"), ("mqtt", "mqtt")]
    with pytest.raises(ConfigInvalid) as bad:
        parse_config(
            _config_with(
                "[upstream]\nquota_alarm_mb = 10\nquota_stop_mb = 5\n"
                '[[upstream.forwarders]]\ntype = "mqtx"\n'
                '[[upstream.forwarders]]\ntype = "mqtt"\nhost = "h"\ndelivry = "broker"\n'
            ),
            "line.toml",
        )
    text = str(bad.value)
    assert "upstream.forwarders[0].type" in text and "did you mean 'mqtt'" in text
    assert "upstream.forwarders[1].delivry" in text and "did you mean 'delivery'" in text
    assert "quota_alarm_mb must be below quota_stop_mb" in text


def test_biz_location_from_config_is_in_every_event(tmp_path: Path) -> None:
    import json

    from edge_agent.config import parse_config
    from edge_agent.ledger import Ledger, UnitOutcome

    location = "urn:epc:id:sgln:0950600.01340.0"
    config = parse_config(_config_with(""), "line.toml", {"line": {"biz_location": location}})
    line = config.model.line
    ledger = Ledger(
        open_db(tmp_path),
        read_point=line.read_point,
        company_prefix_length=line.company_prefix_length,
        biz_location=line.biz_location,
    )
    try:
        batch = ledger.open_batch("B1", "09506000134352", "LOT1", "281200", 2)
        ledger.ensure_allocated(batch, 2, length=10, alphabet="0123456789ABCDEF")
        serials = [ledger.take_for_print(batch) for _ in range(2)]
        for taken in serials:
            assert taken is not None
            ledger.mark_printed(batch, taken[1])
        ledger.commit_outcomes(
            batch,
            [
                UnitOutcome(1, True, "ok", serials[0][1]),
                UnitOutcome(2, False, "no_read", serials[1][1]),
            ],  # type: ignore[index]
        )
        payloads = [json.loads(p) for (p,) in ledger.conn.execute("SELECT payload FROM outbox")]
    finally:
        ledger.conn.close()
    assert [p["bizLocation"] for p in payloads] == [{"id": location}] * 2
