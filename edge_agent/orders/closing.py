"""Settling an order's serial account at its end (close, abort, cancel).

Idempotent, so a crash part-way is finished by the next attempt: the ledger batch is closed
(serials never sent become unused), the unused serials are queued as one return to L3 when they
came from L3, and the close report is written under ``<state_dir>/reports`` and queued for L3.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import structlog

from edge_agent.aggregation import supply
from edge_agent.aggregation.hierarchy import Hierarchy
from edge_agent.aggregation.plan import AggregationLevel, IdentifierKind
from edge_agent.l3 import messages
from edge_agent.ledger import Ledger, SerialState
from edge_agent.orders import audit, report_html
from edge_agent.orders.model import OrderState
from edge_agent.orders.report import close_report
from edge_agent.orders.store import OrderRecord
from edge_agent.reconcile import reconcile

log = structlog.get_logger("edge_agent.orders")


class OrderSettlement:
    def __init__(
        self, conn: sqlite3.Connection, ledger: Ledger, reports_dir: Path, *, l3_link: bool
    ) -> None:
        self.conn = conn
        self.ledger = ledger
        self.reports_dir = reports_dir
        self.l3_link = l3_link

    def reconcile(self, order_id: str) -> dict[str, Any]:
        return reconcile(self.conn, order_id)

    async def settle(
        self, record: OrderRecord, final: OrderState, actor: audit.Actor, reason: str | None
    ) -> dict[str, Any]:
        order = record.order
        # A container reserved and never committed (its label perhaps printed) ends scrapped
        # with the order: its identifier is never used again. Open ones stay as they are (a
        # close is refused with them; an abort reports them unbalanced).
        Hierarchy(self.ledger).recover_reserved(order.id, reason=f"order_{final}")
        self.ledger.close_batch(order.id, reason=f"order_{final}")
        returned = 0
        if self.l3_link and order.serials.source in ("l3", "list"):
            unused = self.ledger.serials_in(order.id, SerialState.UNUSED)
            returned = len(unused)
            messages.queue(
                self.conn,
                "serial_return",
                order.id,
                {"order_id": order.id, "gtin": order.product.gtin, "serials": unused},
            )
        for level in supply.l3_levels(order):  # identifiers L3 sent and the order never used
            unused = supply.unused(self.conn, order.id, level.level)
            if unused and self.l3_link:
                key = supply.page_key(order, level, self.ledger.company_prefix_length)
                messages.queue(
                    self.conn,
                    "serial_return",
                    order.id,
                    {"order_id": order.id, "gtin": key, "serials": _serials_of(level, unused)},
                    key=f"identifiers-{level.level}",
                )
        report = close_report(self.conn, record, final, actor, reason)
        report["serials_returned"] = returned
        self._write(order.id, report)
        self._write_html(order.id, report)
        if self.l3_link:
            messages.queue(self.conn, "close_report", order.id, report)
        return report

    def report_path(self, order_id: str) -> Path:
        return self.reports_dir / f"{order_id}.json"

    def _write(self, order_id: str, report: dict[str, Any]) -> None:
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        path = self.report_path(order_id)
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _write_html(self, order_id: str, report: dict[str, Any]) -> None:
        # The JSON is the record and is stored already; the page is a rendering of it that the
        # API renders again from the JSON when it is missing, so a failure here must not keep
        # the order from closing.
        try:
            report_html.write(report_html.html_path(self.report_path(order_id)), report)
        except Exception as exc:
            log.error("close_report_html_failed", order=order_id, error=str(exc), exc_info=exc)


def _serials_of(level: AggregationLevel, codes: list[str]) -> list[str]:
    """What L3 sent, back: the serial of a ``01<gtin>21<serial>`` code, an SSCC whole."""
    if level.kind == IdentifierKind.GTIN_SERIAL:
        return [code[18:] for code in codes]
    return codes
