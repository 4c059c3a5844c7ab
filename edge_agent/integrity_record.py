"""What an integrity check of the state database found, as recorded in its ``meta`` table.

Apart from ``edge_agent.integrity`` (the background check), which runs on top of the database
module: the database's own start-up check records its result here too.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

META_KEY = "integrity_check"  # JSON: at, ok, seconds, tables, problems (the first few), kind
MAX_PROBLEMS = 20  # per table: the first ones say enough, the full list can be very long


@dataclass(frozen=True)
class IntegrityResult:
    at: float  # wall time the check completed
    ok: bool
    seconds: float
    tables: int  # tables checked one by one (0: the whole file at once)
    problems: tuple[str, ...] = ()
    kind: str = "background"  # or "start": the full quick_check after an unclean stop

    def as_json(self) -> str:
        return json.dumps(
            {
                "at": self.at,
                "ok": self.ok,
                "seconds": round(self.seconds, 3),
                "tables": self.tables,
                "problems": list(self.problems[:MAX_PROBLEMS]),
                "kind": self.kind,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> IntegrityResult | None:
        try:
            data = json.loads(text)
            return cls(
                float(data["at"]),
                bool(data["ok"]),
                float(data["seconds"]),
                int(data["tables"]),
                tuple(str(p) for p in data.get("problems", [])),
                str(data.get("kind", "background")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def last_result(conn: sqlite3.Connection) -> IntegrityResult | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    return IntegrityResult.from_json(str(row[0])) if row else None
