"""What the line needs to know of the order it packs: the ``LineJob``.

The line runtime prints and verifies one lot of one product; it needs the order's identity
(id, GTIN, lot, expiry), its quantity and where its next serials come from, nothing else of the
work order (market, aggregation plan and master data are the order's and its reports').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edge_agent.orders.model import DEFAULT_ALPHABET, WorkOrder

SerialSource = Literal["l3", "generate", "list"]


@dataclass(frozen=True)
class LineJob:
    id: str  # the order id, also the ledger batch of its serials and events
    gtin: str
    lot: str
    expiry: str  # YYMMDD
    quantity: int  # units to print
    serial_source: SerialSource = "generate"
    serial_length: int = 12  # generate: length and alphabet of new serials
    serial_alphabet: str = DEFAULT_ALPHABET

    @classmethod
    def from_order(cls, order: WorkOrder) -> LineJob:
        spec = order.serials
        return cls(
            id=order.id,
            gtin=order.product.gtin,
            lot=order.lot,
            expiry=order.expiry,
            quantity=order.quantity,
            serial_source=spec.source,
            serial_length=spec.length,
            serial_alphabet=spec.alphabet,
        )
