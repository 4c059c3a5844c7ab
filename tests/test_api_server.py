"""The REST API served by a real uvicorn on loopback, over the real command path."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from edge_agent.alarms import AlarmKind
from edge_agent.api.server import ApiServer
from edge_agent.api.status import LineSnapshot
from edge_agent.errors import ConfigError
from edge_agent.orders import audit
from edge_agent.orders.lifecycle import LineEvent
from edge_agent.stops import StopReason
from tests.helpers.api import TOKENS, Rig, make_rig, order_data, serving


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


# --- authentication --------------------------------------------------------------------------


async def test_health_needs_no_token_and_everything_else_does(rig: Rig) -> None:
    async with serving(rig), rig.client(token=None) as anonymous:
        assert (await anonymous.get("/health")).json()["status"] == "ok"
        assert (await anonymous.get("/openapi.json")).status_code == 200
        for method, path in [
            ("GET", "/orders"),
            ("POST", "/orders"),
            ("GET", "/orders/ORD-1"),
            ("POST", "/orders/ORD-1/commands/start"),
            ("GET", "/line"),
            ("GET", "/alarms"),
            ("POST", "/alarms/1/acknowledge"),
            ("GET", "/audit"),
            ("GET", "/audit/verify"),
        ]:
            answer = await anonymous.request(method, path)
            assert answer.status_code == 401, (method, path)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["error"] == "unauthorized"


async def test_a_wrong_token_is_refused_and_changes_nothing(rig: Rig) -> None:
    async with serving(rig):
        for token in ["not-a-token", TOKENS["mes"][:-1], TOKENS["mes"] + "x", "-"]:
            async with rig.client(token=token) as client:
                answer = await client.post("/orders", json=order_data())
                assert answer.status_code == 401
        async with rig.client(token=None, headers={"Authorization": f"Basic {TOKENS['mes']}"}) as c:
            assert (await c.get("/orders")).status_code == 401
    assert rig.commands.store.all() == []
    assert audit.rows(rig.conn) == []


async def test_the_token_name_is_the_actor_in_the_audit_trail(rig: Rig) -> None:
    async with serving(rig):
        async with rig.client(TOKENS["mes"]) as mes:
            assert (await mes.post("/orders", json=order_data())).status_code == 201
        async with rig.client(TOKENS["operator"]) as operator:
            answer = await operator.post("/orders/ORD-1/commands/start")
            assert answer.status_code == 200
    rows = audit.rows(rig.conn, order_id="ORD-1")
    assert [(r.action, r.actor, r.source) for r in rows] == [
        ("store", "mes", "api"),
        ("start", "operator", "api"),
    ]


# --- orders ----------------------------------------------------------------------------------


async def test_an_order_through_its_lifecycle(rig: Rig) -> None:
    async with serving(rig), rig.client() as api:
        stored = await api.post("/orders", json=order_data())
        assert stored.status_code == 201
        assert stored.json()["state"] == "ready"
        assert stored.json()["allowed_commands"] == ["start", "cancel"]
        assert (await api.post("/orders/ORD-1/commands/start")).json()["state"] == "running"
        rig.run_units("ORD-1", ["pass", "no_read", "pass"])
        held = await api.post("/orders/ORD-1/commands/hold", json={"reason": "labeller jam"})
        assert held.json()["state"] == "held"
        shown = (await api.get("/orders/ORD-1")).json()
        assert shown["holds"][0]["reason"] == "labeller jam"
        assert shown["holds"][0]["resumed_at"] is None
        assert shown["spec"]["serials"] == {
            "source": "list",
            "length": 12,
            "alphabet": "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ",
            "count": 4,
        }
        assert (await api.post("/orders/ORD-1/commands/resume")).json()["state"] == "running"
        rig.run_units("ORD-1", ["pass"])
        closed = await api.post("/orders/ORD-1/commands/stop")  # auto-close: it balances
        assert closed.json()["state"] == "closed"
        assert closed.json()["allowed_commands"] == []
        shown = (await api.get("/orders/ORD-1")).json()
        assert shown["report_available"] is True
        assert [r["action"] for r in shown["audit"]] == [
            "store",
            "start",
            "hold",
            "resume",
            "stop",
            "close",
        ]
        report = (await api.get("/orders/ORD-1/report")).json()
        assert report["reconciliation"]["rejected_by_reason"] == {"no_read": 1}
        assert report["yield"] == 1.0
        assert report["balanced"] is True
        page = await api.get("/orders/ORD-1/report.html")
        assert page.headers["content-type"].startswith("text/html")
        assert "<svg" in page.text and "labeller jam" in page.text
    assert rig.line.calls.count(("hold", "ORD-1")) == 1
    assert ("finish", "ORD-1") in rig.line.calls


async def test_a_bad_order_gets_422_with_every_problem_and_nothing_is_stored(rig: Rig) -> None:
    bad = order_data(
        id="ORD-9",
        product={"gtin": "09506000134353", "colour": "red"},
        lot="bad lot",
        expiry="200101",
    )
    async with serving(rig), rig.client() as api:
        answer = await api.post("/orders", json=bad)
        assert answer.status_code == 422
        body = answer.json()
        assert body["error"] == "order_invalid"
        keys = {p["key"] for p in body["problems"]}
        assert {"product.gtin", "product.colour", "lot"} <= keys
        assert all(p["message"] for p in body["problems"])
        assert (await api.get("/orders")).json() == []
    (row,) = audit.rows(rig.conn)
    assert (row.action, row.outcome, row.order_id) == ("store", "refused", "ORD-9")


async def test_bodies_that_are_not_orders_get_422(rig: Rig) -> None:
    async with serving(rig), rig.client() as api:
        for content in [b"{not json", b"[1, 2]", b"", b"\xff\xfe"]:
            answer = await api.post(
                "/orders", content=content, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 422, content
            assert answer.json()["error"] == "request_invalid"


async def test_an_order_over_the_size_limit_gets_413(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.api.routes import orders

    monkeypatch.setattr(orders, "MAX_ORDER_BYTES", 1000)
    async with serving(rig), rig.client() as api:
        big = order_data(serials={"source": "list", "serials": [f"S{i:05}" for i in range(500)]})
        answer = await api.post("/orders", json=big)
        assert answer.status_code == 413
        assert answer.json()["error"] == "too_large"

        async def chunks():  # no content-length: the limit holds on the stream too
            for _ in range(20):
                yield b" " * 100

        answer = await api.post("/orders", content=chunks())
        assert answer.status_code == 413


async def test_refused_commands_get_409_and_unknown_orders_404(rig: Rig) -> None:
    async with serving(rig), rig.client() as api:
        await api.post("/orders", json=order_data())
        wrong_state = await api.post("/orders/ORD-1/commands/resume")
        assert wrong_state.status_code == 409
        assert wrong_state.json()["error"] == "command_refused"
        assert "allowed only when it is held" in wrong_state.json()["message"]
        no_reason = await api.post("/orders/ORD-1/commands/cancel", json={"reason": "  "})
        assert no_reason.status_code == 409 and "needs a reason" in no_reason.json()["message"]
        for method, path in [
            ("GET", "/orders/NOPE"),
            ("POST", "/orders/NOPE/commands/start"),
            ("GET", "/orders/NOPE/report"),
            ("GET", "/orders/NOPE/report.html"),
            ("POST", "/alarms/99/acknowledge"),
        ]:
            answer = await api.request(method, path)
            assert answer.status_code == 404, path
            assert answer.json()["error"] == "not_found"
        not_yet = await api.get("/orders/ORD-1/report")
        assert not_yet.status_code == 404 and "ready" in not_yet.json()["message"]
        unknown_command = await api.post("/orders/ORD-1/commands/store")
        assert unknown_command.status_code == 422
        assert unknown_command.json()["error"] == "request_invalid"
    assert rig.commands.store.get("ORD-1").state == "ready"
    refused = [r for r in audit.rows(rig.conn) if r.outcome == "refused"]
    assert [r.action for r in refused] == ["resume", "cancel"]


async def test_list_filters_by_state(rig: Rig) -> None:
    async with serving(rig), rig.client() as api:
        for n in range(3):
            serials = {"source": "list", "serials": [f"A{n}{i:03}" for i in range(3)]}
            await api.post("/orders", json=order_data(id=f"ORD-{n}", serials=serials))
        await api.post("/orders/ORD-1/commands/start")
        everything = (await api.get("/orders")).json()
        assert [o["id"] for o in everything] == ["ORD-2", "ORD-1", "ORD-0"]  # newest first
        running = (await api.get("/orders", params={"state": "running"})).json()
        assert [o["id"] for o in running] == ["ORD-1"]
        both = (await api.get("/orders", params=[("state", "running"), ("state", "ready")])).json()
        assert len(both) == 3
        assert (await api.get("/orders", params={"state": "sleeping"})).status_code == 422


# --- line, alarms, audit ---------------------------------------------------------------------


async def test_line_state_counters_and_alarms(rig: Rig) -> None:
    async with serving(rig), rig.client() as api:
        idle = (await api.get("/line")).json()
        assert idle["state"] == "idle" and idle["order"] is None
        await api.post("/orders", json=order_data())
        await api.post("/orders/ORD-1/commands/start")
        rig.run_units("ORD-1", ["pass", "wrong_content"])
        line = (await api.get("/line")).json()
        assert line["state"] == "running" and line["order"]["id"] == "ORD-1"
        assert line["counters"] == {
            "order_id": "ORD-1",
            "quantity": 3,
            "units": 2,
            "passed": 1,
            "rejected": 1,
            "rejected_by_reason": {"wrong_content": 1},
            "remaining": 2,
        }
        assert (await api.get("/line/counters")).json() == line["counters"]

        alarm = rig.alarms.raise_(StopReason.REPEATED_REJECTS, "5 rejects", order_id="ORD-1")
        await rig.commands.line_event(
            "ORD-1", LineEvent.LINE_STOPPED, reason=StopReason.REPEATED_REJECTS
        )
        line = (await api.get("/line")).json()
        assert line["state"] == "held"
        assert [a["id"] for a in line["alarms"]] == [alarm.id]
        refused = await api.post("/orders/ORD-1/commands/resume")
        assert refused.status_code == 409 and "acknowledge" in refused.json()["message"]

        acked = await api.post(f"/alarms/{alarm.id}/acknowledge")
        assert acked.json()["acknowledged_by"] == "api:mes"
        again = await api.post(f"/alarms/{alarm.id}/acknowledge")  # idempotent
        assert again.json()["acknowledged_at"] == acked.json()["acknowledged_at"]
        assert (await api.get("/alarms", params={"which": "unacknowledged"})).json() == []
        assert len((await api.get("/alarms", params={"which": "active"})).json()) == 1
        assert (await api.post("/orders/ORD-1/commands/resume")).json()["state"] == "running"
        assert (await api.get("/alarms")).json() == []  # cleared by the resume, acknowledged
        history = (await api.get("/alarms", params={"order_id": "ORD-1", "which": "open"})).json()
        assert history == []
    acks = [r for r in audit.rows(rig.conn) if r.action == "acknowledge"]
    assert len(acks) == 1 and acks[0].detail == {"alarm": alarm.id, "kind": "repeated_rejects"}


async def test_audit_rows_and_verify(rig: Rig) -> None:
    async with serving(rig), rig.client() as api:
        await api.post("/orders", json=order_data())
        await api.post("/orders/ORD-1/commands/start")
        rows = (await api.get("/audit")).json()
        assert [r["action"] for r in rows] == ["store", "start"]
        after = (await api.get("/audit", params={"after": rows[0]["seq"]})).json()
        assert [r["seq"] for r in after] == [rows[1]["seq"]]
        verified = (await api.get("/audit/verify")).json()
        assert verified == {"ok": True, "rows": 2, "head": rows[1]["hash"], "problems": []}
        rig.conn.execute("DROP TRIGGER audit_no_update")
        rig.conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 1")
        broken = (await api.get("/audit/verify")).json()
        assert broken["ok"] is False
        assert broken["problems"] == ["row 1: content does not match its hash (changed)"]


# --- failures ----------------------------------------------------------------------------------


class _Exploding:
    def snapshot(self) -> LineSnapshot:
        raise RuntimeError("password=hunter2 at /secret/path")


async def test_an_unexpected_error_is_a_bare_500(rig: Rig) -> None:
    async with serving(rig, line_status=_Exploding()), rig.client() as api:
        answer = await api.get("/line")
        assert answer.status_code == 500
        body = answer.json()
        assert body["error"] == "internal_error"
        assert "hunter2" not in answer.text and "Traceback" not in answer.text
        assert "log reference" in body["message"]
        assert (await api.get("/health")).status_code == 200  # the server is still up


async def test_the_server_leaves_the_agents_signal_handlers_alone(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, got.set)
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        async with serving(rig), rig.client() as api:
            assert {s: signal.getsignal(s) for s in before} == before
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(5):
                await got.wait()  # the agent's handler ran, not uvicorn's
            assert (await api.get("/health")).status_code == 200  # and the API still serves
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_shutdown_is_clean_and_the_port_is_free_again(rig: Rig) -> None:
    async with serving(rig) as server:
        url = server.url
        port = int(url.rsplit(":", 1)[1])
        async with rig.client() as api:
            assert (await api.get("/line")).status_code == 200
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(url + "/health")
    async with serving(rig, port=port), rig.client() as api:  # bound again: nothing kept it
        assert (await api.get("/health")).status_code == 200


async def test_a_busy_port_is_a_clear_error(rig: Rig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}.*\[api\]"):
            async with ApiServer(object(), port=port):
                pass


async def test_an_expiry_warning_shows_as_an_alarm(rig: Rig) -> None:
    import datetime

    soon = (datetime.date.today() + datetime.timedelta(days=5)).strftime("%y%m%d")
    async with serving(rig), rig.client() as api:
        assert (await api.post("/orders", json=order_data(expiry=soon))).status_code == 201
        (alarm,) = (await api.get("/alarms")).json()
        assert alarm["kind"] == AlarmKind.EXPIRY_NEAR and alarm["order_id"] == "ORD-1"
