"""The L3 wire format: the JSON documents every transport carries (HTTP bodies, MQTT payloads,
files in a folder). No I/O here: the drivers and the L3 simulator both use these functions, so
both ends agree by construction, and the README's "L3 link" section is the contract.

- order: the work-order document (``edge_agent/orders/model.py``), unvalidated here;
- serial request: ``{"request_id", "order_id", "gtin", "count"}``;
- serial page: ``{"request_id", "order_id", "gtin", "serials": [...], "exhausted": bool}``;
- message (return, close report, refusal): ``{"message_id", "kind", "order_id", "created_at",
  "payload"}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edge_agent.contracts import L3Message, SerialPage

MESSAGE_KINDS = ("serial_return", "close_report", "order_refused")
# HTTP path (and folder/MQTT sub-topic) per message kind
HTTP_PATHS = {"serial_return": "returns", "close_report": "reports", "order_refused": "refusals"}
CONTENT_TYPE = "application/json"


class WireError(ValueError):
    """A document that does not follow the wire format; the message says what is wrong."""


@dataclass(frozen=True)
class SerialRequestDoc:
    request_id: str
    order_id: str
    gtin: str
    count: int


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON ({exc})") from None


# --- serial requests and pages -------------------------------------------------------------


def serial_request(order_id: str, gtin: str, count: int, request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "order_id": order_id, "gtin": gtin, "count": count}


def parse_serial_request(document: Any) -> SerialRequestDoc:
    body = _object(document, "serial request")
    count = body.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise WireError("serial request: 'count' must be a whole number >= 1")
    return SerialRequestDoc(
        _text(body, "request_id", "serial request"),
        _text(body, "order_id", "serial request"),
        _text(body, "gtin", "serial request"),
        count,
    )


def page_document(page: SerialPage) -> dict[str, Any]:
    return {
        "request_id": page.request_id,
        "order_id": page.order_id,
        "gtin": page.gtin,
        "serials": list(page.serials),
        "exhausted": page.exhausted,
    }


def parse_page(document: Any) -> SerialPage:
    """The page as L3 sent it; its content (serials valid, not used before, not more than
    asked for, for this request) is checked by the core before any of it is used."""
    body = _object(document, "serial page")
    serials = body.get("serials")
    if not isinstance(serials, list) or not all(isinstance(s, str) for s in serials):
        raise WireError("serial page: 'serials' must be a list of strings")
    exhausted = body.get("exhausted", False)
    if not isinstance(exhausted, bool):
        raise WireError("serial page: 'exhausted' must be true or false")
    return SerialPage(
        _text(body, "request_id", "serial page"),
        _text(body, "order_id", "serial page"),
        _text(body, "gtin", "serial page"),
        tuple(serials),
        exhausted,
    )


# --- messages ------------------------------------------------------------------------------


def message_document(message: L3Message) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "kind": message.kind,
        "order_id": message.order_id,
        "created_at": message.created_at,
        "payload": message.payload,
    }


def parse_message(document: Any) -> dict[str, Any]:
    body = _object(document, "message")
    _text(body, "message_id", "message")
    _text(body, "order_id", "message")
    if body.get("kind") not in MESSAGE_KINDS:
        raise WireError(f"message: 'kind' must be one of {', '.join(MESSAGE_KINDS)}")
    if not isinstance(body.get("payload"), dict):
        raise WireError("message: 'payload' must be an object")
    return body


def message_file_name(message_id: str) -> str:
    """File name of a message in a folder: the id with ':' as '.', since ':' is not allowed in
    file names on Windows shares and FAT media (the file itself holds the exact id)."""
    return re.sub(r"[^A-Za-z0-9._-]", ".", message_id) + ".json"


# --- orders --------------------------------------------------------------------------------


def parse_order_list(document: Any) -> list[Any]:
    """``{"orders": [order, ...]}`` → the order documents (each checked by the core)."""
    body = _object(document, "order list")
    orders = body.get("orders")
    if not isinstance(orders, list):
        raise WireError("order list: 'orders' must be a list")
    return orders


def _object(document: Any, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise WireError(f"{what}: not a JSON object")
    return document


def _text(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{what}: '{key}' must be a non-empty string")
    return value
