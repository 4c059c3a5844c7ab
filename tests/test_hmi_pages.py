"""Operator screen pages and actions over real HTTP: upload, commands, live stream, alarms,
rejects with their frames, close report, aggregation placeholder."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.alarms import AlarmKind
from edge_agent.contracts import Frame
from edge_agent.hmi.settings import HmiSettings
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand
from edge_agent.vision.archive import FailedFrameArchive
from tests.helpers.api import Rig, make_rig, order_data
from tests.helpers.hmi import browser, login, post, serving_hmi, users_file

TOML_ORDER = """
id = "ORD-T"
lot = "LOT-T1"
expiry = "301231"
quantity = 2
market = "DE"

[product]
gtin = "09506000134352"

[serials]
source = "list"
serials = ["T0001", "T0002", "T0003"]
"""


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, auto_close=False)


@pytest.fixture
def settings(tmp_path: Path) -> HmiSettings:
    return HmiSettings(
        users=users_file(tmp_path), archive_dir=tmp_path / "frames", line_name="LINE-7"
    )


def flash(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 303, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    return {k: v[0] for k, v in query.items()}


async def test_upload_json_and_toml_orders_and_a_bad_file_names_its_problem(
    rig: Rig, settings: HmiSettings
) -> None:
    async with serving_hmi(rig, settings), browser(rig) as client:
        csrf = await login(client, "anna")
        files = {"order": ("ORD-1.json", json.dumps(order_data()), "application/json")}
        answer = await client.post("/hmi/orders", data={"csrf": csrf}, files=files)
        assert flash(answer) == {"ok": "order ORD-1 stored (ready)"}
        files = {"order": ("ORD-T.toml", TOML_ORDER, "application/toml")}
        assert (
            "ORD-T stored"
            in flash(await client.post("/hmi/orders", data={"csrf": csrf}, files=files))["ok"]
        )
        bad = order_data(id="ORD-2", product={"gtin": "09506000134353"})
        files = {"order": ("bad.json", json.dumps(bad), "application/json")}
        error = flash(await client.post("/hmi/orders", data={"csrf": csrf}, files=files))["error"]
        assert "product.gtin" in error and "check digit" in error
        files = {"order": ("broken.json", "{not json", "application/json")}
        error = flash(await client.post("/hmi/orders", data={"csrf": csrf}, files=files))["error"]
        assert "cannot be read" in error
        page = await client.get("/hmi/orders")
        assert 'data-order="ORD-1"' in page.text and 'data-order="ORD-T"' in page.text
        assert "ORD-2" not in page.text
    record = rig.commands.store.get("ORD-1")
    assert record.source == "hmi"
    stored = [r for r in audit.rows(rig.conn, order_id="ORD-1") if r.action == "store"]
    assert [(r.actor, r.source) for r in stored] == [("anna", "hmi")]


async def test_hold_needs_a_reason_and_the_overview_streams_counters_hold_and_alarms(
    rig: Rig, settings: HmiSettings
) -> None:
    await rig.commands.submit(order_data(), source="api", actor=audit.Actor("mes", "api"))
    async with serving_hmi(rig, settings), browser(rig) as client:
        csrf = await login(client, "anna")
        assert (
            "running" in flash(await post(client, "/hmi/orders/ORD-1/commands/start", csrf))["ok"]
        )
        async with client.stream("GET", "/hmi/line/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = _events(stream)
            first = await _next(events)
            assert first["state"] == "running" and first["counters"]["units"] == 0

            rig.run_units("ORD-1", ["pass", "unreadable"])
            changed = time.monotonic()
            moved = await _next(events)
            assert time.monotonic() - changed < 1.0
            assert moved["counters"]["units"] == 2
            assert moved["counters"]["rejected_by_reason"] == {"unreadable": 1}

            error = flash(await post(client, "/hmi/orders/ORD-1/commands/hold", csrf))["error"]
            assert "needs a reason" in error
            ok = flash(
                await post(
                    client,
                    "/hmi/orders/ORD-1/commands/hold",
                    csrf,
                    reason="labeller jam",
                    back="/hmi/line",
                )
            )
            assert ok["ok"] == "hold: order ORD-1 is held"
            held = await _next(events)
            assert held["state"] == "held" and held["hold"]["reason"] == "labeller jam"
            assert held["hold"]["detail"] == ""  # an operator's hold has its reason only

            alarm = rig.alarms.raise_(AlarmKind.DEVICE_DOWN, "camera gone", order_id="ORD-1")
            alarmed = await _next(events)
            assert [a["id"] for a in alarmed["alarms"]] == [alarm.id]
            refused = flash(await post(client, "/hmi/orders/ORD-1/commands/resume", csrf))
            assert "acknowledge the alarms" in refused["error"]
            acked = flash(
                await post(client, f"/hmi/alarms/{alarm.id}/acknowledge", csrf, back="/hmi/line")
            )
            assert acked["ok"] == f"alarm {alarm.id} acknowledged"
            assert (await _next(events))["alarms"][0]["acknowledged_by"] == "hmi:anna"
            rig.alarms.clear(AlarmKind.DEVICE_DOWN, order_id="ORD-1")
            await _next(events)
            assert (
                "running"
                in flash(await post(client, "/hmi/orders/ORD-1/commands/resume", csrf))["ok"]
            )
            assert (await _next(events))["hold"] is None
        page = await client.get("/hmi/line")
        assert 'data-field="counters.units">2<' in page.text
    acknowledged = [r for r in audit.rows(rig.conn) if r.action == "acknowledge"]
    assert [(r.actor, r.source) for r in acknowledged] == [("anna", "hmi")]


async def test_rejects_show_expected_read_reason_and_the_archived_frame(
    rig: Rig, settings: HmiSettings
) -> None:
    await rig.commands.submit(order_data(), source="api", actor=audit.Actor("mes", "api"))
    rig.run_units("ORD-1", ["pass", "wrong_serial"])
    rig.conn.execute("UPDATE units SET read_text = 'S9999' WHERE trigger = 2")  # what was read
    assert settings.archive_dir is not None
    archive = FailedFrameArchive(settings.archive_dir, 10)
    image = np.full((40, 60), 200, dtype=np.uint8)
    archive.save(Frame(2, image, 0.0, "cam"), batch="ORD-1", serial="S0002", reason="wrong_serial")
    async with serving_hmi(rig, settings), browser(rig) as client:
        await login(client, "anna")
        page = await client.get("/hmi/rejects")
        assert page.status_code == 200
        assert "wrong_serial" in page.text and "<code>S0002</code>" in page.text
        assert "<code>S9999</code>" in page.text
        (name,) = {p.name for p in settings.archive_dir.glob("*.png")}
        assert f'src="/hmi/frames/{name}"' in page.text
        frame = await client.get(f"/hmi/frames/{name}")
        assert frame.status_code == 200 and frame.content.startswith(b"\x89PNG")
        for bad in ["..%2Fstate.db", "x.png", name.replace(".png", ".json"), "%2Fetc%2Fpasswd"]:
            assert (await client.get(f"/hmi/frames/{bad}")).status_code == 404, bad


async def test_close_as_supervisor_and_open_the_close_report(
    rig: Rig, settings: HmiSettings
) -> None:
    await rig.commands.submit(order_data(quantity=2), source="api", actor=audit.Actor("mes", "api"))
    async with serving_hmi(rig, settings), browser(rig) as sam:
        csrf = await login(sam, "sam")
        await post(sam, "/hmi/orders/ORD-1/commands/start", csrf)
        rig.run_units("ORD-1", ["pass", "pass"])
        await post(sam, "/hmi/orders/ORD-1/commands/stop", csrf)
        missing = await sam.get("/hmi/orders/ORD-1/report")
        assert missing.status_code == 404 and "made when the order ends" in missing.text
        ok = flash(await post(sam, "/hmi/orders/ORD-1/commands/close", csrf, reason="end of shift"))
        assert ok["ok"] == "close: order ORD-1 is closed"
        page = await sam.get("/hmi/orders/ORD-1/report")
        assert 'src="/hmi/orders/ORD-1/report.html"' in page.text
        report = await sam.get("/hmi/orders/ORD-1/report.html")
        assert report.status_code == 200 and "ORD-1" in report.text
        order_page = await sam.get("/hmi/orders/ORD-1")
        assert "end of shift" in order_page.text and "hmi:sam" in order_page.text
        assert (await sam.get("/hmi/orders/NOPE")).status_code == 404


async def test_look_up_a_case_see_its_children_and_rework_it_as_supervisor(
    rig: Rig, settings: HmiSettings
) -> None:
    serials = [f"S{n:04d}" for n in range(1, 9)]
    plan = {"levels": [{"level": "case", "capacity": 3}, {"level": "pallet", "capacity": 2}]}
    order = order_data(quantity=7, serials={"source": "list", "serials": serials}, aggregation=plan)
    await rig.commands.submit(order, source="api", actor=audit.Actor("mes", "api"))
    await rig.commands.command("ORD-1", OrderCommand.START, audit.Actor("mes", "api"))
    rig.run_units("ORD-1", ["pass"] * 6)
    hierarchy = Hierarchy(rig.ledger)
    box = hierarchy.open_container("ORD-1", "case")
    unit = "(01)09506000134352(21){}".format
    hierarchy.pack(box.epc, [unit("S0001"), unit("S0002")], close=True)
    label = box.identifier.hri
    async with serving_hmi(rig, settings), browser(rig) as anna, browser(rig) as sam:
        anna_csrf = await login(anna, "anna")
        sam_csrf = await login(sam, "sam")
        page = await anna.get("/hmi/aggregation", params={"code": label})
        assert 'id="container-state">closed<' in page.text
        assert unit("S0001") in page.text and unit("S0002") in page.text
        assert "2 of 3" in page.text and "Rework needs a supervisor." in page.text
        unknown = await anna.get("/hmi/aggregation", params={"code": "(00)095060000000000000"})
        assert 'id="lookup-error"' in unknown.text

        refused = flash(await post(anna, "/hmi/aggregation/reopen", anna_csrf, code=label))
        assert "rework needs a supervisor" in refused["error"]
        ok = flash(await post(sam, "/hmi/aggregation/reopen", sam_csrf, code=label))
        assert ok["ok"] == f"reopen: case {label} is open"
        children = hierarchy.children(box.epc)
        ok = flash(
            await post(
                sam,
                "/hmi/aggregation/replace",
                sam_csrf,
                code=label,
                child=children[0],
                new=unit("S0003"),
                reason="smudged label",
            )
        )
        assert "replace" in ok["ok"]
        ok = flash(
            await post(
                sam,
                "/hmi/aggregation/remove",
                sam_csrf,
                code=label,
                child=children[1],
                reason="damaged box",
            )
        )
        assert ok["ok"] == f"remove: case {label} is open"
        page = await sam.get("/hmi/aggregation", params={"code": label})
        assert unit("S0003") in page.text and unit("S0001") not in page.text
        assert "1 of 3" in page.text
    rows = [
        (r.actor, r.source, r.action, r.outcome, r.reason)
        for r in audit.rows(rig.conn)
        if r.action.startswith("container_") and r.source == "hmi"
    ]
    assert rows == [
        ("anna", "hmi", "container_reopen", "refused", None),
        ("sam", "hmi", "container_reopen", "done", None),
        ("sam", "hmi", "container_replace", "done", "smudged label"),
        ("sam", "hmi", "container_unpack", "done", "damaged box"),
    ]


async def test_an_open_live_stream_does_not_hold_up_the_servers_stop(
    rig: Rig, settings: HmiSettings
) -> None:
    async with serving_hmi(rig, settings):
        client = browser(rig)
        await login(client, "anna")
        reader = asyncio.create_task(_drain(client))
        await asyncio.sleep(0.3)
        stopping = time.monotonic()
    try:
        assert time.monotonic() - stopping < 2.0  # not the 5 s shutdown timeout
        await asyncio.wait_for(reader, 5)
    finally:
        await client.aclose()


async def _drain(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/hmi/line/events") as stream:
        async for _ in stream.aiter_lines():
            pass


def _events(stream: httpx.Response):  # type: ignore[no-untyped-def]
    async def gen():  # type: ignore[no-untyped-def]
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])

    return gen()


async def _next(events) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return await asyncio.wait_for(events.__anext__(), 3.0)  # type: ignore[no-any-return]
