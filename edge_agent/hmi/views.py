"""What the screens show, as plain data: the same dicts fill the pages and the live stream."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.alarms import Alarm
from edge_agent.api.deps import ApiServices
from edge_agent.api.status import LineMode

SPEED_UNITS = 50  # speed over the last this many units of the order
SPEED_STALE_S = 10.0  # no unit for this long: the line stands (speed 0)
REJECTS_SHOWN = 50


def overview(services: ApiServices) -> dict[str, Any]:
    snapshot = services.line.snapshot()
    store = services.commands.store
    record = store.find(snapshot.order_id) if snapshot.order_id else None
    hold = store.open_hold(record.id) if record is not None else None
    return {
        "state": str(snapshot.state),
        "order": None
        if record is None
        else {
            "id": record.id,
            "state": str(record.state),
            "gtin": record.order.product.gtin,
            "product": record.order.product.description or "",
            "lot": record.order.lot,
            "expiry": record.order.expiry,
            "quantity": record.order.quantity,
        },
        "counters": snapshot.counters.model_dump(mode="json"),
        "speed": round(units_per_min(services.commands.conn, snapshot.order_id))
        if snapshot.state == LineMode.RUNNING
        else 0,
        "devices": [d.model_dump(mode="json") for d in snapshot.devices],
        "alarms": [alarm_view(a) for a in open_alarms(services)],
        "hold": None
        if hold is None
        else {
            "order_id": hold.order_id,
            "reason": hold.reason,
            "detail": hold_detail(hold.detail),
            "held_at": clock(hold.held_at),
        },
    }


def hold_detail(stored: str) -> str:
    """A hold's detail as a person reads it (stored as the JSON detail of its transition)."""
    try:
        detail = json.loads(stored)
    except ValueError:
        return stored
    if isinstance(detail, dict):
        return str(detail.get("detail", ""))
    return str(detail)


def open_alarms(services: ApiServices) -> list[Alarm]:
    board = services.alarms
    found = {a.id: a for a in board.active()} | {a.id: a for a in board.unacknowledged()}
    return [found[k] for k in sorted(found)]


def alarm_view(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": alarm.id,
        "kind": alarm.kind,
        "message": alarm.message,
        "order_id": alarm.order_id,
        "raised_at": clock(alarm.raised_at),
        "count": alarm.count,
        "active": alarm.active,
        "acknowledged": alarm.acknowledged_at is not None,
        "acknowledged_by": alarm.acknowledged_by,
    }


def units_per_min(conn: sqlite3.Connection, order_id: str | None) -> float:
    if order_id is None:
        return 0.0
    times = [
        t
        for (t,) in conn.execute(
            "SELECT decided_at FROM units WHERE batch_id = ? ORDER BY id DESC LIMIT ?",
            (order_id, SPEED_UNITS),
        )
    ]
    if len(times) < 2 or time.time() - times[0] > SPEED_STALE_S:
        return 0.0
    span = times[0] - times[-1]
    return (len(times) - 1) * 60.0 / span if span > 0 else 0.0


# --- recent rejects and their frames ------------------------------------------------------------

_STEM = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Frame:
    stem: str
    image: str | None  # file name of the PNG in the archive


class FrameIndex:
    """The failed-frame archive's sidecars by (batch, trigger); new files are read as they come."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._known: dict[str, tuple[str, int] | None] = {}  # stem -> (batch, trigger)
        self._by_unit: dict[tuple[str, int], Frame] = {}

    def find(self, batch: str, trigger: int) -> Frame | None:
        self._refresh()
        return self._by_unit.get((batch, trigger))

    def image_path(self, name: str) -> Path | None:
        """The archive's PNG of that name; None for any name that is not one of them."""
        if self.directory is None or not _STEM.match(name) or not name.endswith(".png"):
            return None
        self._refresh()
        stem = name.removesuffix(".png")
        if stem not in self._known:
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def _refresh(self) -> None:
        if self.directory is None:
            return
        try:
            stems = {p.stem for p in self.directory.glob("*.json")}
        except OSError:
            return
        for gone in set(self._known) - stems:
            unit = self._known.pop(gone)
            if unit is not None:
                self._by_unit.pop(unit, None)
        for stem in stems - set(self._known):
            self._known[stem] = self._read(stem)

    def _read(self, stem: str) -> tuple[str, int] | None:
        assert self.directory is not None
        try:
            record = json.loads((self.directory / f"{stem}.json").read_text(encoding="utf-8"))
            unit = (str(record["batch"]), int(record["trigger"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._by_unit[unit] = Frame(stem, record.get("image"))
        return unit


def recent_rejects(
    services: ApiServices, frames: FrameIndex, order_id: str | None = None
) -> list[dict[str, Any]]:
    where, args = "verdict = 'reject'", list[Any]()
    if order_id:
        where += " AND batch_id = ?"
        args.append(order_id)
    rows = services.commands.conn.execute(
        f"SELECT batch_id, trigger, serial, reason, read_text, decided_at FROM units "
        f"WHERE {where} ORDER BY id DESC LIMIT ?",
        (*args, REJECTS_SHOWN),
    ).fetchall()
    found = []
    for batch, trigger, serial, reason, read, at in rows:
        frame = frames.find(batch, trigger)
        found.append(
            {
                "order_id": batch,
                "trigger": trigger,
                "expected": serial,
                "read": read,
                "reason": reason,
                "at": clock(at),
                "image": frame.image if frame is not None else None,
            }
        )
    return found


def clock(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


# --- aggregation ------------------------------------------------------------------------------


def container_view(hierarchy: Hierarchy, code: str) -> dict[str, Any]:
    """A case or pallet as its label names it: state, parent and each child (AggregationRefused
    when the code names none)."""
    box = hierarchy.container(code)
    children = []
    for epc in hierarchy.children(box.epc):
        item = hierarchy.item(epc)
        inner = None if item.is_unit else hierarchy.container(epc)
        children.append(
            {
                "epc": epc,
                "level": str(item.level),
                "state": item.state,
                "serial": item.serial,
                "code": inner.identifier.hri if inner is not None else _unit_hri(item),
                "is_unit": item.is_unit,
            }
        )
    parent = hierarchy.container(box.parent) if box.parent else None
    return {
        **box.to_json(),
        "capacity": hierarchy.capacity(box),
        "parent_code": parent.identifier.hri if parent is not None else None,
        "children_list": children,
    }


def _unit_hri(item: Any) -> str:
    return f"(01){item.gtin}(21){item.serial}" if item.gtin and item.serial else item.epc


def line_end_view(runner: Any) -> dict[str, Any] | None:
    """The daemon's stations as the aggregation screen shows them (None: no [aggregation])."""
    if runner is None:
        return None

    def boxing(station: Any) -> dict[str, Any] | None:
        if station is None:
            return None
        return {
            "capacity": station.capacity,
            "last": station.expected_next,
            "partial_allowed": station.partial_allowed,
            "child": str(station.child_level),
        }

    pallet = runner.pallet_station
    return {
        "order_id": runner.order_id,
        "bundle": boxing(getattr(runner, "bundle_station", None)),
        "case": boxing(runner.case_station),
        "pallet": None
        if pallet is None
        else {
            "capacity": pallet.capacity,
            "scanned": len(pallet.scanned()),
            "held": pallet.held,
            "partial_allowed": pallet.partial_allowed,
        },
    }
