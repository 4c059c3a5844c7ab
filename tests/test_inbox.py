"""The inbox folder: complete files only, taken once, submitted through the command path, moved
to accepted/ or rejected/ (with why), bounded, and never stopped by a bad file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.alarms import AlarmKind
from edge_agent.orders import audit
from edge_agent.orders.inbox import Inbox, Outcome
from tests.helpers.api import Rig, make_rig, order_data
from tests.helpers.waiting import until


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path / "state")


@pytest.fixture
def inbox(tmp_path: Path, rig: Rig) -> Inbox:
    box = Inbox(tmp_path / "inbox", rig.commands, poll_s=0.02, keep=3)
    box.prepare()
    return box


def drop(inbox: Inbox, name: str, content: str | bytes) -> Path:
    path = inbox.folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def order_json(**changes: object) -> str:
    return json.dumps(order_data(**changes))


async def take_all(inbox: Inbox) -> list[Outcome]:
    """Two looks: a file is taken once it stood still between them."""
    return await inbox.scan() + await inbox.scan()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_good_json_and_toml_order_are_accepted(inbox: Inbox, rig: Rig) -> None:
    drop(inbox, "ORD-1.json", order_json())
    drop(
        inbox,
        "ORD-2.toml",
        'id = "ORD-2"\nlot = "LOT-B"\nexpiry = "301231"\nquantity = 2\nmarket = "FR"\n'
        '[product]\ngtin = "09506000134352"\n[serials]\nsource = "list"\nserials = ["T1", "T2"]\n',
    )
    assert sorted(o.name for o in await take_all(inbox)) == ["ORD-1.json", "ORD-2.toml"]
    assert names(inbox.accepted) == ["ORD-1.json", "ORD-2.toml"]
    assert names(inbox.folder) == ["accepted", "processing", "rejected"]
    assert names(inbox.processing) == [] and names(inbox.rejected) == []
    record = rig.commands.store.get("ORD-2")
    assert (record.source, record.state) == ("inbox", "ready")
    (stored,) = [r for r in audit.rows(rig.conn) if r.order_id == "ORD-1"]
    assert (stored.actor, stored.source, stored.action) == ("ORD-1.json", "inbox", "store")


async def test_only_complete_files_are_taken(inbox: Inbox, rig: Rig) -> None:
    for name in [".ORD-1.json", "ORD-1.json.tmp", "ORD-1.json.part", "notes.txt"]:
        drop(inbox, name, order_json())
    (inbox.folder / "folder.json").mkdir()
    assert await take_all(inbox) == []

    growing = drop(inbox, "ORD-1.json", order_json()[:20])
    assert await inbox.scan() == []  # first look
    with growing.open("a") as f:  # the writer is not done yet
        f.write(order_json()[20:])
    assert await inbox.scan() == []  # it changed since the last look
    (taken,) = await inbox.scan()
    assert taken.accepted and taken.order_id == "ORD-1"
    assert ".ORD-1.json" in names(inbox.folder) and rig.commands.store.find("ORD-1")


async def test_bad_files_are_moved_aside_with_why(inbox: Inbox, rig: Rig) -> None:
    inbox.keep = 100
    drop(inbox, "bad-order.json", order_json(id="ORD-9", lot="bad lot", quantity=0))
    drop(inbox, "broken.json", "{ not json")
    drop(inbox, "list.json", "[1, 2]")
    drop(inbox, "latin1.json", b'{"id": "\xe9"}')
    drop(inbox, "broken.toml", "id = ")
    outcomes = await inbox.scan() + await inbox.scan()
    assert sorted(o.name for o in outcomes if not o.accepted) == [
        "bad-order.json",
        "broken.json",
        "broken.toml",
        "latin1.json",
        "list.json",
    ]
    assert names(inbox.rejected) == sorted(
        [
            f"{n}{suffix}"
            for n in ("bad-order.json", "broken.json", "broken.toml", "latin1.json", "list.json")
            for suffix in ("", ".error.txt")
        ]
    )
    why = (inbox.rejected / "bad-order.json.error.txt").read_text()
    assert why.startswith("bad-order.json: order ORD-9 was refused at ")
    assert "lot: AI (10) BATCH/LOT: character ' ' at position 5" in why
    assert "quantity: Input should be greater than or equal to 1" in why
    assert "not valid JSON" in (inbox.rejected / "broken.json.error.txt").read_text()
    assert "one order" in (inbox.rejected / "list.json.error.txt").read_text()
    assert "not UTF-8" in (inbox.rejected / "latin1.json.error.txt").read_text()
    assert "not valid TOML" in (inbox.rejected / "broken.toml.error.txt").read_text()
    assert rig.commands.store.all() == []
    (alarm,) = rig.alarms.active()
    assert alarm.kind == AlarmKind.ORDER_REJECTED and alarm.count == 5
    assert "rejected/" in alarm.message and ".error.txt says why" in alarm.message


async def test_the_same_name_again_does_not_overwrite_the_first(inbox: Inbox) -> None:
    drop(inbox, "o.json", "{")
    await take_all(inbox)
    drop(inbox, "o.json", "[")
    await take_all(inbox)
    assert names(inbox.rejected) == ["o.1.json", "o.1.json.error.txt", "o.json", "o.json.error.txt"]


async def test_a_file_left_in_processing_is_taken_again_once(inbox: Inbox, rig: Rig) -> None:
    # A crash after the order was stored, before its file moved on: stored already = accepted.
    (inbox.processing / "ORD-1.json").write_text(order_json())
    await rig.commands.submit(
        order_data(), source="inbox", actor=audit.Actor("ORD-1.json", "inbox")
    )
    # A crash before it was submitted: it is submitted now.
    serials = {"source": "list", "serials": ["X1", "X2", "X3"]}
    (inbox.processing / "ORD-2.json").write_text(order_json(id="ORD-2", serials=serials))
    outcomes = await inbox.recover()
    assert [(o.name, o.accepted) for o in outcomes] == [("ORD-1.json", True), ("ORD-2.json", True)]
    assert names(inbox.accepted) == ["ORD-1.json", "ORD-2.json"]
    stores = [r for r in audit.rows(rig.conn) if r.action == "store"]
    assert [(r.order_id, r.outcome) for r in stores] == [
        ("ORD-1", "done"),
        ("ORD-1", "refused"),  # the second attempt is on the record too
        ("ORD-2", "done"),
    ]


async def test_a_different_order_under_a_known_id_is_rejected(inbox: Inbox, rig: Rig) -> None:
    await rig.commands.submit(order_data(), source="api", actor=audit.Actor("mes", "api"))
    drop(inbox, "again.json", order_json(quantity=2))
    (outcome,) = await take_all(inbox)
    assert not outcome.accepted
    assert "order ORD-1 exists already" in (inbox.rejected / "again.json.error.txt").read_text()


async def test_accepted_and_rejected_keep_the_newest_files(inbox: Inbox) -> None:
    for n in range(5):
        drop(inbox, f"bad-{n}.json", "{")
        await take_all(inbox)
    assert names(inbox.rejected) == [
        f"bad-{n}.json{suffix}" for n in (2, 3, 4) for suffix in ("", ".error.txt")
    ]


async def test_the_watcher_survives_anything_a_file_does(
    inbox: Inbox, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_submit = rig.commands.submit

    async def flaky_submit(data, **kwargs):  # type: ignore[no-untyped-def]
        if data.get("id") == "BOOM":
            raise RuntimeError("disk on fire")
        return await real_submit(data, **kwargs)

    monkeypatch.setattr(rig.commands, "submit", flaky_submit)
    watcher = asyncio.create_task(inbox.run())
    try:
        drop(inbox, "boom.json", order_json(id="BOOM"))
        drop(inbox, "bad.json", "{")
        await until(lambda: len(names(inbox.rejected)) == 4)
        drop(inbox, "ORD-1.json", order_json())
        await until(lambda: names(inbox.accepted) == ["ORD-1.json"])
        assert not watcher.done()
        assert (
            "internal error while reading the file: disk on fire"
            in (inbox.rejected / "boom.json.error.txt").read_text()
        )
        # The folder goes away (a share unmounted) and comes back empty (a new share).
        inbox.folder.rename(inbox.folder.with_name("inbox-away"))
        await asyncio.sleep(0.1)
        assert not watcher.done()
        inbox.folder.mkdir()
        serials = {"source": "list", "serials": ["Z1", "Z2", "Z3"]}
        drop(inbox, "ORD-2.json", order_json(id="ORD-2", serials=serials))
        await until(lambda: inbox.accepted.exists() and names(inbox.accepted) == ["ORD-2.json"])
        assert rig.commands.store.get("ORD-2").source == "inbox"
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


def test_the_inbox_comes_from_the_orders_section(tmp_path: Path, rig: Rig) -> None:
    from edge_agent.config.models import OrdersSection

    assert Inbox.from_section(OrdersSection(), rig.commands) is None
    box = Inbox.from_section(
        OrdersSection(inbox=tmp_path / "in", inbox_poll_s=0.5, inbox_keep=7), rig.commands
    )
    assert box is not None and (box.folder, box.poll_s, box.keep) == (tmp_path / "in", 0.5, 7)
