"""The reconciliation table `edge-agent batch report` prints (and the demo after each order)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_report(report: dict[str, Any], console: Console) -> None:
    what = f"order {report['order_id']}" if "order_id" in report else f"batch {report['batch_id']}"
    table = Table(title=f"Reconciliation — {what}", show_header=True)
    table.add_column("item")
    table.add_column("count", justify="right")
    rows = [
        ("units", report["units"]),
        ("passed", report["passed"]),
        ("rejected", report["rejected"]),
        *((f"  rejected: {k}", v) for k, v in report["rejected_by_reason"].items()),
        ("injected defects", report.get("injected_defects", "-")),
        ("defects rejected", report.get("defects_rejected", "-")),
        ("good units rejected", report.get("good_rejected", "-")),
        ("serials allocated", report["serials_allocated"]),
        ("serials commissioned", report["serials_commissioned"]),
        ("serials rejected", report["serials_rejected"]),
        ("serials unused", report["serials_unused"]),
        ("serials returned", report["serials_returned"]),
        ("serials in flight", report["serials_in_flight"]),
        ("duplicates", report["duplicates"]),
        ("events waiting for upstream", report["events_pending_delivery"]),
    ]
    if "events_received_upstream" in report:
        rows.append(("events received upstream", report["events_received_upstream"]))
    for name, value in rows:
        table.add_row(name, str(value))
    balanced = "[bold green]yes" if report["balanced"] else "[bold red]NO"
    table.add_row("balanced", balanced)
    console.print(table)
    for problem in report.get("problems", []):
        console.print(f"[red]problem:[/] {problem}")
    if "state_dir" in report and "order_id" not in report:
        console.print(f"state database: {report['state_dir']}/state.db")
