"""`edge-agent outbox status|replay|export` (filled in by issue 4)."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any) -> None:
    sub.add_parser("outbox", help="events waiting for delivery upstream")
