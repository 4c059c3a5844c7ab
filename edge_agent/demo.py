"""`edge-agent demo`: a whole line on in-process simulators, ending in a reconciliation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_agent import logs
from edge_agent.app import Agent, UntilIdle
from edge_agent.config import parse_config
from edge_agent.db import open_reader
from edge_agent.line.stats import LineStats
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet


def demo_config_text() -> str:
    return resources.files("edge_agent").joinpath("resources/demo.toml").read_text(encoding="utf-8")


async def run_demo(
    *,
    units: int,
    speed: float | None,
    state_dir: Path | None,
    report_json: Path | None,
    seed: int,
    defect_rate: float,
    console: Console,
    devices: dict[str, str] | None = None,
    upstream: str | None = None,
) -> int:
    """Run one batch on simulators; ``devices`` picks simulator/driver types, e.g. plc=opcua."""
    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(state_dir)},
        "orders": {"inbox": str(state_dir / "inbox")},
        "simulators": {
            "units_per_min": speed,
            "printer": {"port": 0},
            "plc": {"port": 0},
            "camera": {"port": 0, "seed": seed, "defect_rate": defect_rate},
        },
    }
    for kind, type_name in (devices or {}).items():
        overrides["simulators"][kind]["type"] = type_name
    base = parse_config(demo_config_text(), "demo.toml", overrides)
    section = base.model.simulators
    assert section is not None
    log_file = (state_dir / "agent.log").open("a", encoding="utf-8")
    logs.configure("json", "info", stream=log_file)
    try:
        async with SimulatorSet(section) as sims, contextlib.AsyncExitStack() as stack:
            sections = sims.device_configs()
            capture = None
            if upstream == "epcis-http":
                from simulators.upstream.capture_server import CaptureServerSim

                capture = await stack.enter_async_context(CaptureServerSim())
                forwarder = capture.driver_config(name="l3-capture")
                sections["upstream"] = {"forwarders": [forwarder], "drain_on_exit_s": 60}
            config = parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)
            write_order_file(state_dir / "inbox", demo_order(units))
            stopped = await _run_with_progress(config, units, console)
            await asyncio.sleep(0)  # let the last gate decisions land
            truth = sims.ground_truth()
            if capture is not None:
                truth["upstream_received"] = len(capture.events)
    finally:
        logs.configure("auto", "warning")  # nothing may keep logging into the closed file
        log_file.close()
    with contextlib.closing(open_reader(state_dir)) as conn:
        ledger_report = reconcile(conn)
    report = demo_report(ledger_report, truth, stopped)
    if "upstream_received" in truth:
        report["events_received_upstream"] = truth["upstream_received"]
    report["state_dir"] = str(state_dir)
    print_report(report, console)
    if report_json is not None:
        text = json.dumps(report, indent=2) + "\n"
        await asyncio.to_thread(report_json.write_text, text, encoding="utf-8")
    ok = report["balanced"] and report["defects_rejected"] == report["injected_defects"]
    if upstream is not None:  # every event must have reached the capture server
        ok = ok and report["events_pending_delivery"] == 0
    return 0 if ok else (3 if stopped else 4)


async def _run_with_progress(config: Any, units: int, console: Console) -> str | None:
    stats = LineStats()
    columns = (
        TextColumn("[bold]units"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>5.0f}/min"),
        TextColumn("[green]✓{task.fields[passed]}"),
        TextColumn("[red]✗{task.fields[rejected]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[reasons]}"),
    )
    with Progress(*columns, console=console, refresh_per_second=8) as progress:
        task = progress.add_task("line", total=units, rate=0.0, passed=0, rejected=0, reasons="")

        step = max(1, units // 10)
        next_line = [step]

        def tick() -> None:
            reasons = ", ".join(f"{k} {v}" for k, v in stats.by_reason.most_common(4))
            if not console.is_terminal and stats.units >= next_line[0]:
                # No live bar without a terminal: a plain line every tenth of the batch instead.
                next_line[0] += step
                console.print(
                    f"units {stats.units}/{units}  {stats.units_per_min():.0f}/min  "
                    f"passed {stats.passed}  rejected {stats.rejected}  {reasons}"
                )
            progress.update(
                task,
                completed=stats.units,
                rate=stats.units_per_min(),
                passed=stats.passed,
                rejected=stats.rejected,
                reasons=reasons,
            )

        try:
            served = await Agent(config, stats=stats, on_tick=tick).serve(
                until_idle=UntilIdle(hold_timeout_s=0)
            )
        finally:
            tick()
    if served.waiting is not None:
        hold = served.hold.reason if served.hold is not None else served.waiting.state
        console.print(f"[bold red]line stopped:[/] order {served.waiting.id} {hold}")
        return str(hold)
    return None


def demo_order(units: int, order_id: str = "DEMO-BATCH-0001") -> dict[str, Any]:
    """The demo's work order: the demo product, with serials generated on the line."""
    return {
        "id": order_id,
        "product": {"gtin": "09506000134352", "description": "Demo tablets 20 mg"},
        "lot": "DEMO24A",
        "expiry": "281231",
        "quantity": units,
        "serials": {"source": "generate", "length": 12},
        "market": "DE",
    }


def write_order_file(inbox: Path, order: dict[str, Any]) -> Path:
    """Drop an order into an inbox folder as the inbox expects it: written aside, then renamed."""
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / f"{order['id']}.json"
    tmp = inbox / f".{order['id']}.json.part"
    tmp.write_text(json.dumps(order, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def demo_report(
    ledger: dict[str, Any], truth: dict[str, Any], stopped: str | None
) -> dict[str, Any]:
    injected: dict[int, str] = truth.get("injected_defects", {})
    rejected_at_gate = set(truth.get("gate_rejected", []))
    passed_at_gate = set(truth.get("gate_passed", []))
    defects_rejected = sum(1 for t in injected if t in rejected_at_gate)
    good_rejected = len(rejected_at_gate - set(injected))
    problems = list(ledger["problems"])
    if len(passed_at_gate) != ledger["serials_commissioned"]:
        problems.append(
            f"PLC passed {len(passed_at_gate)} units but {ledger['serials_commissioned']} serials "
            "are commissioned"
        )
    if truth.get("printed_twice"):
        problems.append(f"{truth['printed_twice']} serials printed twice")
    if truth.get("units_triggered", 0) != ledger["units"]:
        problems.append(
            f"{truth.get('units_triggered')} units on the line, {ledger['units']} decided"
        )
    report = dict(ledger)
    report.update(
        {
            "injected_defects": len(injected),
            "injected_by_kind": _count(injected.values()),
            "defects_rejected": defects_rejected,
            "good_rejected": good_rejected,
            "plc_passed": len(passed_at_gate),
            "plc_rejected": len(rejected_at_gate),
            "printed": truth.get("printed", 0),
            "duplicates": ledger["duplicates"] + truth.get("printed_twice", 0),
            "line_stopped": stopped,
            "problems": problems,
            "balanced": not problems,
        }
    )
    return report


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Reconciliation — batch {report['batch_id']}", show_header=True)
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
    if "state_dir" in report:
        console.print(f"state database: {report['state_dir']}/state.db")
