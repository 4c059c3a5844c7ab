"""Named crash points for crash-safety tests.

``EDGE_AGENT_CRASH_AT=name:n`` makes the process SIGKILL itself the n-th time it reaches the point
``name``: the same death as a power cut or the OOM killer, at a chosen moment. When the variable is
unset (always, in production) a crash point is one comparison.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "printer_buffer_full",
    "block_taken",  # a block of serials marked sent, none of it handed to the printer yet
    "decoded",
    "outbox_commit",
    "group_commit",  # the state writer's transaction complete, its COMMIT not yet issued
    # upstream path: published (PUBACKs not yet in), delivered (not yet recorded), recorded
    "forward_published",
    "forward_delivered",
    "forward_marked",
    # aggregation stations: SSCC reserved (before print), label printed (confirmed, not yet
    # read back), case committed (before its PASS), pallet reserved, pallet committed
    "case_reserved",
    "label_printed",
    "case_committed",
    "pallet_reserved",
    "pallet_committed",
)


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("EDGE_AGENT_CRASH_AT")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


_TARGET = _target()
_seen = 0


def crash_point(name: str) -> None:
    global _seen
    if _TARGET is None or _TARGET[0] != name:
        return
    _seen += 1
    if _seen >= _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
