"""What the hierarchy's tables hold, as values: containers (bundles, cases, pallets) with their
state, and the children a reference names (a unit or a container)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from edge_agent.aggregation import sscc as ids
from edge_agent.aggregation.plan import IdentifierKind, Level


class ContainerState(enum.StrEnum):
    RESERVED = "reserved"  # identifier allocated (a label may be printed); nothing packed yet
    OPEN = "open"  # commissioned; children may be added and removed
    CLOSED = "closed"  # complete; may itself be packed into the level above
    SCRAPPED = "scrapped"  # reserved, never committed: the identifier is never used again
    DISAGGREGATED = "disaggregated"  # emptied for good; its identifier decommissioned


LIVE = (ContainerState.OPEN, ContainerState.CLOSED)


class LooseReason(enum.StrEnum):
    """Common reasons a commissioned unit (or closed case) is in no parent. Free text is
    accepted too (an operator's reason for a removal)."""

    REMOVED = "removed"  # taken out of its parent in rework
    DISAGGREGATED = "disaggregated"  # its parent was disaggregated
    PARTIAL_REFUSED = "partial_refused"  # the plan refuses a partial last parent
    CASE_REJECTED = "case_rejected"  # its case was rejected by the case station
    LEFT_OVER = "left_over"  # left when the order ended


@dataclass(frozen=True)
class Container:
    epc: str
    code: str  # 18 SSCC digits, or 01<gtin>21<serial>
    order_id: str
    level: Level
    kind: IdentifierKind
    state: ContainerState
    gtin: str | None
    serial: str | None
    reason: str | None
    children: int  # how many it holds now
    parent: str | None  # EPC of the container holding it

    @property
    def identifier(self) -> ids.Identifier:
        return ids.Identifier(self.kind, self.code, self.epc, self.gtin, self.serial)

    def to_json(self) -> dict[str, Any]:
        return {
            "epc": self.epc,
            "code": self.code,
            "hri": self.identifier.hri,
            "order_id": self.order_id,
            "level": str(self.level),
            "identifier": str(self.kind),
            "state": str(self.state),
            "reason": self.reason,
            "children": self.children,
            "parent": self.parent,
        }


@dataclass(frozen=True)
class Item:
    """A child as the ledger knows it: a unit (serial) or a container."""

    epc: str
    level: Level
    order_id: str
    state: str  # SerialState of a unit, ContainerState of a container
    gtin: str | None = None
    serial: str | None = None
    lot: str | None = None

    @property
    def is_unit(self) -> bool:
        return self.level == Level.UNIT


CONTAINER_COLUMNS = (
    "c.epc, c.code, c.order_id, c.level, c.kind, c.state, c.gtin, c.serial, c.reason, "
    "(SELECT count(*) FROM packed k WHERE k.parent = c.epc), "
    "(SELECT p.parent FROM packed p WHERE p.child = c.epc)"
)


def container_of(row: tuple[Any, ...]) -> Container:
    epc, code, order_id, level, kind, state, gtin, serial, reason, children, parent = row
    return Container(
        epc, code, order_id, Level(level), IdentifierKind(kind), ContainerState(state), gtin,
        serial, reason, int(children), parent,
    )  # fmt: skip


def as_item(box: Container) -> Item:
    return Item(box.epc, box.level, box.order_id, str(box.state), box.gtin, box.serial)
