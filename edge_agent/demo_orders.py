"""What the demo's L3 sends and what the demo's operator does: the work orders (different products
and lots, serials from L3 in pages), where the burst of unreadable codes goes, and the operator who
acknowledges the alarms of a held order and resumes it through the REST API.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.api.client import ApiClient, ApiError
from edge_agent.orders.model import TERMINAL_STATES, OrderState

# GTIN-14s of the GS1 example company prefix 0950600, each with its check digit; one product each.
PRODUCTS: tuple[tuple[str, str, str], ...] = (
    ("09506000134352", "Paracetamol 500 mg tablets, 20", "DE"),
    ("09506000134369", "Ibuprofen 400 mg film-coated tablets, 30", "FR"),
    ("09506000134376", "Amoxicillin 250 mg capsules, 21", "IT"),
    ("09506000134383", "Omeprazole 20 mg gastro-resistant capsules, 28", "AT"),
)
HELD_ORDER = 2  # the order (1-based) whose run of unreadable codes holds the line
RESUME_REASON = "demo operator: print head cleaned, codes read again"
RESUME_ATTEMPTS = 20  # a resume refused by its recovery checks is tried again, this often


def demo_orders(count: int, quantity: int, *, today: dt.date | None = None) -> list[dict[str, Any]]:
    """``count`` L3 order documents, one product and one lot each, serials from L3."""
    today = today or dt.date.today()
    stamp = time.strftime("%y%m%d%H%M%S")
    documents = []
    for index in range(count):
        gtin, description, market = PRODUCTS[index % len(PRODUCTS)]
        expiry = dt.date(today.year + 2 + index % 2, (index * 5) % 12 + 1, 28)
        documents.append(
            {
                "id": f"WO-{stamp}-{index + 1}",
                "product": {"gtin": gtin, "description": description},
                "lot": f"DEMO-{chr(ord('A') + index % 26)}{index // 26 + 1}",
                "expiry": expiry.strftime("%y%m%d"),
                "quantity": quantity,
                "serials": {"source": "l3"},
                "market": market,
            }
        )
    return documents


def l3_settings(quantity: int) -> dict[str, Any]:
    """The agent's [l3] timings for the demo: pages well below an order's quantity, so that an
    order takes several; fast loops, so nothing waits on L3 for long."""
    page = max(4, min(500, quantity // 4))
    return {
        "page_size": page,
        "low_water": max(2, page // 2),
        "request_timeout_s": 5.0,
        "poll_interval_s": 0.2,
        "check_interval_s": 0.1,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 1.0,
    }


def burst_window(quantity: int, rejects_to_stop: int) -> tuple[int, int]:
    """Where in an order's units the burst may start: after a few good ones, leaving room for
    the whole run before the quantity is reached."""
    latest = max(1, quantity - rejects_to_stop - 2)
    return min(latest, max(1, quantity // 5)), min(latest, max(1, quantity // 2))


@dataclass
class Operator:
    """An operator at the line's screen, through the REST API: sees a held order, acknowledges
    its alarms, resumes it with a reason."""

    client: ApiClient
    resumed: list[str] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)

    async def orders(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await asyncio.to_thread(self.client.get, "/orders")
        return found

    async def resume(self, order_id: str) -> None:
        """Acknowledge every open alarm of the order, then resume it; a resume its recovery
        checks refuse (a device still coming back) is tried again a moment later."""
        for attempt in range(RESUME_ATTEMPTS):
            await self._acknowledge(order_id)
            try:
                await asyncio.to_thread(
                    self.client.post,
                    f"/orders/{order_id}/commands/resume",
                    {"reason": RESUME_REASON},
                )
            except ApiError as exc:
                if exc.status != 409 or attempt == RESUME_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
                continue
            self.resumed.append(order_id)
            return

    async def close(self, order_id: str) -> None:
        """Close a completed order whose line end is done (its alarms acknowledged: the
        auto-close found cases still to pack)."""
        await self._acknowledge(order_id)
        await asyncio.to_thread(self.client.post, f"/orders/{order_id}/commands/close", {})

    async def _acknowledge(self, order_id: str) -> None:
        alarms = await asyncio.to_thread(
            self.client.get, "/alarms", which="unacknowledged", order_id=order_id
        )
        for alarm in alarms:
            await asyncio.to_thread(self.client.post, f"/alarms/{alarm['id']}/acknowledge")
            self.acknowledged.append(int(alarm["id"]))


def ended(orders: list[dict[str, Any]], ids: list[str], *, also: Sequence[str] = ()) -> bool:
    """Every order of ``ids`` is in a terminal state (or, ``also``, stuck for a person)."""
    states = {o["id"]: OrderState(o["state"]) for o in orders}
    return all(states.get(i) in TERMINAL_STATES or i in also for i in ids)
