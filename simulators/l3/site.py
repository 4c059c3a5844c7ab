"""What a simulated L3 site server knows, without I/O: the orders it hands out, its serial pools
(paged like OPEN-SCS ``SNRequestUnallocated`` with a request token: the same token always gets
the same page), and what the line sent back (returns, close reports, refusals), each recorded
once with its duplicates counted. The transports (``http.py``, ``mqtt.py``, ``folder.py``) put
this on the wire with the drivers' own codec (``drivers/l3/wire.py``), in reverse.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from drivers.l3 import wire
from edge_agent.contracts import SerialPage

DEFAULT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
SSCC_KEY = "sscc:"  # a request for SSCCs names "sscc:<extension digit><company prefix>"


@dataclass
class L3Faults:
    """Misbehaviour on demand; counters count down as they are used."""

    fail_requests: int = 0  # next N serial requests fail (HTTP 503 / an MQTT error answer)
    fail_messages: int = 0  # next N returns / reports / refusals fail the same way
    fail_orders: int = 0  # next N order downloads fail
    retry_after_s: int | None = None  # sent with those HTTP 503s as Retry-After
    lose_answers: int = 0  # next N serial requests are served, then the answer is lost
    lose_message_answers: int = 0  # the same for messages: recorded, acknowledgement lost
    garbage_answers: int = 0  # next N serial requests answer a body that is not JSON
    delay_s: float = 0.0  # every answer waits this long (a slow server)
    reuse_serials: int = 0  # next N new pages repeat a serial of an earlier page
    page_serials: list[str] = field(default_factory=list)  # put into the next new page
    extra_serials: int = 0  # next new page holds this many more serials than asked for


@dataclass
class _Received:
    first: dict[str, Any]
    times: int = 1


class L3Site:
    def __init__(
        self,
        *,
        pool_size: int | None = None,
        seed: int = 1,
        serial_length: int = 12,
        alphabet: str = DEFAULT_ALPHABET,
    ) -> None:
        self.faults = L3Faults()
        self.pool_size = pool_size  # serials per GTIN; None = never exhausted
        self.serial_length = serial_length
        self.alphabet = alphabet
        self._rng = random.Random(seed)
        self._orders: dict[str, dict[str, Any]] = {}  # id -> document, not acknowledged yet
        self.orders_acknowledged: list[str] = []
        self.pages: dict[str, SerialPage] = {}  # request token -> the page handed out for it
        self.page_requests: Counter[str] = Counter()  # request token -> times asked
        self.handed_out: dict[str, list[str]] = {}  # GTIN -> serials handed out, in order
        self._issued: set[str] = set()
        self.received: dict[str, dict[str, _Received]] = {k: {} for k in wire.MESSAGE_KINDS}

    # --- orders -------------------------------------------------------------------------------

    def add_order(self, document: dict[str, Any]) -> None:
        """An order for the line to download (kept until the line acknowledges it)."""
        self._orders[str(document.get("id"))] = document

    def pending_orders(self) -> list[dict[str, Any]]:
        return list(self._orders.values())

    def acknowledge_order(self, order_id: str) -> bool:
        if self._orders.pop(order_id, None) is None:
            return False
        self.orders_acknowledged.append(order_id)
        return True

    # --- serial pools -------------------------------------------------------------------------

    def serve(self, request: wire.SerialRequestDoc) -> SerialPage:
        """The page for this request token: the one handed out before, or a new one."""
        self.page_requests[request.request_id] += 1
        page = self.pages.get(request.request_id)
        if page is None:
            page = self._new_page(request)
            self.pages[request.request_id] = page
        return page

    def _new_page(self, request: wire.SerialRequestDoc) -> SerialPage:
        given = self.handed_out.setdefault(request.gtin, [])
        count = request.count + self.faults.extra_serials
        self.faults.extra_serials = 0
        serials: list[str] = list(self.faults.page_serials)
        self.faults.page_serials = []
        if self.faults.reuse_serials and self._issued:
            self.faults.reuse_serials -= 1
            serials.append(next(iter(self._issued)))
        left = None if self.pool_size is None else self.pool_size - len(given)
        while len(serials) < count and (left is None or left > 0):
            if request.gtin.startswith(SSCC_KEY):  # a pool of SSCCs, not of serials of a GTIN
                serials.append(_sscc(request.gtin[len(SSCC_KEY) :], len(given) + len(serials)))
            else:
                serials.append(self._fresh())
            if left is not None:
                left -= 1
        given.extend(serials)
        exhausted = left is not None and left <= 0
        return SerialPage(
            request.request_id, request.order_id, request.gtin, tuple(serials), exhausted
        )

    def _fresh(self) -> str:
        while True:
            serial = "".join(self._rng.choice(self.alphabet) for _ in range(self.serial_length))
            if serial not in self._issued:
                self._issued.add(serial)
                return serial

    @property
    def pages_handed_out(self) -> int:
        return len(self.pages)

    # --- what the line sends back -------------------------------------------------------------

    def receive(self, document: dict[str, Any]) -> bool:
        """Record a message (envelope already checked); False when it is a duplicate."""
        kind, message_id = document["kind"], document["message_id"]
        seen = self.received[kind].get(message_id)
        if seen is not None:
            seen.times += 1
            return False
        self.received[kind][message_id] = _Received(document)
        return True

    def messages(self, kind: str) -> dict[str, dict[str, Any]]:
        return {i: r.first for i, r in self.received[kind].items()}

    @property
    def returns(self) -> dict[str, dict[str, Any]]:
        return self.messages("serial_return")

    @property
    def reports(self) -> dict[str, dict[str, Any]]:
        return self.messages("close_report")

    @property
    def refusals(self) -> dict[str, dict[str, Any]]:
        return self.messages("order_refused")

    @property
    def duplicates(self) -> int:
        return sum(r.times - 1 for kind in self.received.values() for r in kind.values())

    def returned_serials(self) -> list[str]:
        return [s for r in self.returns.values() for s in r["payload"].get("serials", [])]

    def take_fault(self, name: str) -> bool:
        """Use one count of a countdown fault; True when it applies to this call."""
        left = getattr(self.faults, name)
        if left:
            setattr(self.faults, name, left - 1)
            return True
        return False


def _sscc(prefix: str, number: int) -> str:
    """The ``number``-th SSCC of a pool: extension digit and company prefix, serial reference,
    mod-10 check digit."""
    body = f"{prefix}{number:0{17 - len(prefix)}d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str(-total % 10)
