"""`edge-agent demo`: one line daemon on in-process simulators, fed work orders by a simulated L3.

The daemon (``Agent.serve``) runs as it does under systemd, with its REST API on loopback; only
the devices and the site server are simulators, each over its real protocol. L3 hands out the
orders (one product and lot each) and their serials in pages; the orders run one after another,
close balanced, return their unused serials and deliver their close reports. In order 2 the
camera sees a run of unreadable codes: the line holds on repeated rejects, and the demo, as an
operator would, acknowledges the alarm and resumes the order through the REST API. The report
compares the state database with what physically happened on the simulated line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_agent import logs
from edge_agent.api.client import ApiClient, Endpoint
from edge_agent.app import Agent
from edge_agent.batch_report import print_report
from edge_agent.config import LoadedConfig, parse_config
from edge_agent.db import open_reader
from edge_agent.errors import EdgeAgentError, LineStopped
from edge_agent.line.stats import LineStats
from edge_agent.orders.store import OrderStore
from edge_agent.reconcile import reconcile
from edge_agent.stops import StopReason
from simulators.demo.aggregation import AggregateOptions, Api, LineEnd, aggregation_report
from simulators.demo.orders import (
    HELD_ORDER,
    Operator,
    burst_window,
    demo_orders,
    ended,
    l3_settings,
)
from simulators.runner import SimulatorSet

API_TOKEN_NAME = "demo-operator"
SETTLE_S = 60.0  # after the last order: the longest wait for L3 to have every return and report
UNCLOSED_S = 10.0  # an order completed this long and not closed did not balance: a person decides
# Counts of the per-order reports that the whole-demo report adds up.
TOTALS = (
    "units",
    "passed",
    "rejected",
    "injected_defects",
    "defects_rejected",
    "good_rejected",
    "undecided_rejected",
    "serials_allocated",
    "serials_commissioned",
    "serials_rejected",
    "serials_unused",
    "serials_returned",
    "serials_in_flight",
    "duplicates",
    "plc_passed",
    "plc_rejected",
    "printed",
    "events_commissioning",
    "events_decommissioning",
    "events_destroying",
    "events_pending_delivery",
)


def demo_config_text() -> str:
    return resources.files("edge_agent").joinpath("resources/demo.toml").read_text(encoding="utf-8")


@dataclass
class DemoRun:
    """What the demo saw of the daemon while the orders ran."""

    order_ids: list[str]
    api_url: str = ""
    served: str | None = None  # how serve() ended; None while it ran until the demo stopped it
    error: str | None = None  # why the demo gave up waiting, if it did
    resumed: list[str] = field(default_factory=list)
    segments: int = 0
    problems: list[str] = field(default_factory=list)  # the line end's, if it failed


async def run_demo(
    *,
    units: int,
    speed: float | None,
    state_dir: Path | None,
    report_json: Path | None,
    seed: int,
    defect_rate: float,
    console: Console,
    orders: int = 1,
    devices: dict[str, str] | None = None,
    upstream: str | None = None,
    aggregate: AggregateOptions | None = None,
    keep_running: bool = False,
) -> int:
    """Run ``orders`` orders of ``units`` each; ``devices`` picks simulator/driver types, e.g.
    plc=opcua; ``aggregate``: units into cases and pallets at the line end. Exit status: 0 all
    balanced and every injected defect (unit or case) rejected, 3 an order did not end (held,
    or the daemon stopped), 4 an order does not balance."""
    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(24)
    token_file = _write_token(state_dir, token)
    users_file, logins_file = _screen_users(state_dir)
    overrides: dict[str, Any] = {
        "agent": {"state_dir": str(state_dir)},
        "orders": {"inbox": str(state_dir / "inbox")},
        "simulators": {
            "units_per_min": speed,
            "printer": {"port": 0},
            "plc": {"port": 0},
            "camera": {"port": 0, "seed": seed, "defect_rate": defect_rate},
            "l3": {"type": "http", "port": 0, "seed": seed},
        },
    }
    if aggregate is not None:
        # line clearance: the next order starts once the line end of the last one is done
        overrides["orders"]["auto_start"] = False
    for kind, type_name in (devices or {}).items():
        overrides["simulators"][kind]["type"] = type_name
    base = parse_config(demo_config_text(), "demo.toml", overrides)
    section = base.model.simulators
    assert section is not None
    documents = demo_orders(orders, units)
    if aggregate is not None:
        for document in documents:
            document["aggregation"] = aggregate.plan()
    log_file = (state_dir / "agent.log").open("a", encoding="utf-8")
    logs.configure("json", "info", stream=log_file)
    try:
        async with SimulatorSet(section) as sims, contextlib.AsyncExitStack() as stack:
            line_end = None
            if aggregate is not None:
                queue = [d["id"] for d in documents]
                line_end = LineEnd(aggregate, seed, queue=queue, units_per_min=speed)
                await line_end.start(sims.line, sims.plc)
                stack.push_async_callback(line_end.stop)
            arrivals: dict[int, tuple[str, str]] = {}  # trigger -> (GTIN, lot) as printed
            sims.line.on_trigger(lambda t, u: arrivals.__setitem__(t, (u.gtin, u.lot)))
            if orders >= HELD_ORDER:
                held = documents[HELD_ORDER - 1]
                stop_after = base.model.line.max_consecutive_rejects
                sims.camera.add_burst(
                    stop_after + 1,
                    lot=held["lot"],
                    start_within=burst_window(units, stop_after),
                )
            sections = sims.device_configs()
            sections["l3"] = {**sections["l3"], **l3_settings(units)}
            sections["api"] = {
                "host": "127.0.0.1",
                "port": 0,
                # the demo acts as the line's supervisor too (rework, closing with exceptions)
                "tokens": [
                    {
                        "name": API_TOKEN_NAME,
                        "token": {"file": str(token_file)},
                        "role": "supervisor",
                    }
                ],
            }
            sections["hmi"] = {"users_file": str(users_file)}
            capture = None
            if upstream == "epcis-http":
                from simulators.upstream.capture_server import CaptureServerSim

                capture = await stack.enter_async_context(CaptureServerSim())
                forwarder = capture.driver_config(name="l3-capture")
                sections["upstream"] = {"forwarders": [forwarder], "drain_on_exit_s": 60}
            if line_end is not None:
                sections["aggregation"] = line_end.config_section()
            config = parse_config(demo_config_text(), "demo.toml", overrides, sections=sections)
            run = await _serve_orders(
                config,
                sims,
                documents,
                Access(token, token_file, logins_file),
                units,
                speed,
                console,
                line_end,
                keep_running=keep_running,
            )
            await asyncio.sleep(0)  # let the last gate decisions land
            truth = sims.ground_truth()
            truth["printed_serials"] = list(sims.printer.printed)
            truth["l3_returns"] = [dict(r) for r in sims.l3.returns.values()]
            if capture is not None:
                truth["upstream_received"] = len(capture.events)
            if line_end is not None:
                truth["line_end"] = line_end.truth()
                run.problems += line_end.errors
    finally:
        logs.configure("auto", "warning")  # nothing may keep logging into the closed file
        log_file.close()
    with contextlib.closing(open_reader(state_dir)) as conn:
        report = orders_report(conn, run, truth, arrivals, documents)
        if "line_end" in truth:
            add_aggregation(report, aggregation_report(conn, run.order_ids, truth["line_end"]))
            report["line_end"] = truth["line_end"]  # what physically happened at it
    if "upstream_received" in truth:
        report["events_received_upstream"] = truth["upstream_received"]
    report["state_dir"] = str(state_dir)
    report["api_token_file"] = str(token_file)
    for order in report["orders"]:
        if "batch_id" in order:  # an order that never arrived has no reconciliation
            print_report(order, console)
    print_summary(report, console)
    if report_json is not None:
        text = json.dumps(report, indent=2) + "\n"
        await asyncio.to_thread(report_json.write_text, text, encoding="utf-8")
    return exit_status(report, upstream is not None)


def add_aggregation(report: dict[str, Any], figures: dict[str, Any]) -> None:
    """The line end's figures into the report; a hierarchy that does not balance, a case
    defect not rejected or a case whose ledger content differs from its physical one is a
    problem of the run (exit 4)."""
    balanced = all(o.get("hierarchy_balanced", False) for o in report["orders"])
    problems = figures.pop("aggregation_problems")
    missed = figures["case_defects_injected"] - figures["case_defects_rejected"]
    if missed:
        problems.insert(0, f"{missed} case defects were not rejected")
    if missed := figures.get("bundle_defects_injected", 0) - figures.get(
        "bundle_defects_rejected", 0
    ):
        problems.insert(0, f"{missed} bundle defects were not rejected")
    report.update(figures)
    report["hierarchy_balanced"] = balanced
    report["problems"] += problems
    report["balanced"] = report["balanced"] and balanced and not problems


def exit_status(report: dict[str, Any], upstream: bool) -> int:
    """0 every order closed balanced and every injected defect rejected (and, with upstream,
    every event delivered); 3 an order did not end or the daemon stopped; 4 otherwise."""
    ok = report["balanced"] and report["defects_rejected"] == report["injected_defects"]
    if upstream:
        ok = ok and report["events_pending_delivery"] == 0
    if ok:
        return 0
    return 3 if report["line_stopped"] else 4


@dataclass
class Access:
    """How a person reaches this run's daemon: the API token and the screen's logins."""

    token: str
    token_file: Path
    logins_file: Path


def _screen_users(state_dir: Path) -> tuple[Path, Path]:
    """An operator and a supervisor for the operator screen, with passwords made for this run:
    the users file holds their hashes, ``hmi-logins`` (only the user may read it) the passwords,
    which are never printed."""
    from edge_agent.hmi.users import UserFile
    from edge_agent.orders.audit import Role

    users_file = state_dir / "hmi-users.json"
    logins_file = state_dir / "hmi-logins"
    users = UserFile(users_file)
    lines = []
    for name, role in (("operator", Role.OPERATOR), ("supervisor", Role.SUPERVISOR)):
        password = secrets.token_urlsafe(12)
        users.add(name, role, password, replace=True)
        lines.append(f"{name} ({role}): {password}")
    fd = os.open(logins_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return users_file, logins_file


async def _until_interrupted(console: Console, url: str | None, serving: asyncio.Task[Any]) -> None:
    """--keep-running: the orders are done; the daemon stays up for the screens until Ctrl-C."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    console.print(f"every order has ended; the daemon stays up at {url}/hmi: Ctrl-C ends the demo")
    try:
        waiter = asyncio.create_task(interrupted.wait())
        await asyncio.wait({waiter, serving}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _write_token(state_dir: Path, token: str) -> Path:
    """This run's API bearer token, in a file only the user may read (the config refers to it:
    a secret is never written into a config)."""
    path = state_dir / "api-token"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a former run's file may have other permissions
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return path


async def _serve_orders(
    config: LoadedConfig,
    sims: SimulatorSet,
    documents: list[dict[str, Any]],
    access: Access,
    units: int,
    speed: float | None,
    console: Console,
    line_end: LineEnd | None = None,
    *,
    keep_running: bool = False,
) -> DemoRun:
    """Start the daemon, hand L3 the orders, resume what holds, stop the daemon when every
    order has ended and L3 has its returns and close reports."""
    run = DemoRun([d["id"] for d in documents])
    # Generous: the line's pace (2x) plus start-up, a hold and its resume checks per order.
    per_unit_s = 2 * 60.0 / speed if speed else 0.1
    limit_s = 120.0 + len(documents) * (units * per_unit_s + 30.0)
    stats = LineStats()
    with _progress(console, stats, units * len(documents)) as tick:
        agent = Agent(config, stats=stats, on_tick=tick)
        ready = asyncio.Event()
        serving = asyncio.create_task(agent.serve(ready), name="daemon")
        try:
            await _until_ready(ready, serving)
            assert agent.api_url is not None
            run.api_url = agent.api_url
            if line_end is not None:
                line_end.stations = agent.stations
            token, token_file = access.token, access.token_file
            console.print(
                f"REST API: {agent.api_url}  (bearer token in {token_file}; "
                f'try: curl -H "Authorization: Bearer $(cat {token_file})" '
                f"{agent.api_url}/orders)"
            )
            console.print(
                f"Operator screen: {agent.api_url}/hmi  (logins for an operator and a "
                f"supervisor in {access.logins_file})"
            )
            for document in documents:
                sims.l3.add_order(document)
            with ApiClient(Endpoint(agent.api_url, token), timeout_s=30.0) as client:
                operator = Operator(client)
                await _until_orders_end(run, operator, serving, console, limit_s, config, line_end)
                run.resumed = operator.resumed
            if run.error is None and not serving.done():
                await _until_l3_has_everything(run, sims, serving)
            if keep_running and not serving.done():
                await _until_interrupted(console, agent.api_url, serving)
        finally:
            if agent.controller is not None:
                run.segments = agent.controller.segments
            agent.request_stop(LineStopped(StopReason.SHUTDOWN, "demo finished"))
            try:
                served = await asyncio.wait_for(serving, 60.0)
            except Exception as exc:  # the daemon failed: the report says so
                run.served = run.served or f"failed: {exc!r}"
            else:
                if run.served is None and served.ended != "signal":
                    run.served = served.ended
            tick()
            if stats.units:
                lat = stats.latency_ms.summary()
                console.print(f"frame→verdict: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
    return run


async def _until_ready(ready: asyncio.Event, serving: asyncio.Task[Any]) -> None:
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({waiter, serving}, timeout=60.0, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if serving.done():
        serving.result()  # raises what stopped it (a config error at start)
        raise EdgeAgentError("the daemon ended while starting; see agent.log")
    if not ready.is_set():
        raise EdgeAgentError("the daemon was not ready within 60 s; see agent.log")


async def _until_orders_end(
    run: DemoRun,
    operator: Operator,
    serving: asyncio.Task[Any],
    console: Console,
    limit_s: float,
    config: LoadedConfig,
    line_end: LineEnd | None,
) -> None:
    """Watch the orders through the API; resume a held one as an operator would; with a line
    end, finish its cases and pallets when the order's units are made, then close it."""
    deadline = time.monotonic() + limit_s
    seen_held: set[tuple[str, float]] = set()
    completed_since: dict[str, float] = {}  # completed, not closed: it did not balance
    last_error = ""
    while time.monotonic() < deadline:
        if serving.done():
            run.served = "ended early"
            run.error = "the daemon ended while orders were still to run"
            return
        try:
            listed = await operator.orders()
        except EdgeAgentError as exc:  # the API busy for a moment: asked again, bounded
            last_error = f"; the API last said: {exc}"
            await asyncio.sleep(1.0)
            continue
        mine = [o for o in listed if o["id"] in run.order_ids]
        if line_end is not None:
            await _line_end(line_end, config, mine, operator, console)
        now = time.monotonic()
        for order in mine:
            if order["state"] == "completed" and (
                line_end is None or order["id"] in line_end.finished
            ):
                completed_since.setdefault(order["id"], now)
        unclosed = [i for i, t in completed_since.items() if now - t > UNCLOSED_S]
        for order in mine:
            if order["state"] != "held":
                continue
            detail = await asyncio.to_thread(operator.client.get, f"/orders/{order['id']}")
            hold: dict[str, Any] = detail["holds"][-1] if detail["holds"] else {}
            key = (order["id"], float(hold.get("held_at", 0.0)))
            if key in seen_held:
                continue
            seen_held.add(key)
            console.print(
                f"[yellow]order {order['id']} held:[/] {hold.get('reason')}; acknowledging its "
                "alarms and resuming it through the REST API"
            )
            try:
                await operator.resume(order["id"])
            except EdgeAgentError as exc:  # refused for good, or the API went away
                run.error = f"order {order['id']} could not be resumed: {exc}"
                return
            console.print(f"[green]order {order['id']} resumed[/]")
        if len(mine) == len(run.order_ids) and ended(mine, run.order_ids, also=unclosed):
            return
        await asyncio.sleep(0.2)
    run.error = f"the orders had not ended after {limit_s:.0f} s{last_error}"


async def _line_end(
    line_end: LineEnd,
    config: LoadedConfig,
    orders: list[dict[str, Any]],
    operator: Operator,
    console: Console,
) -> None:
    """The people at the line end: finish the cases and pallets of an order whose units are
    made, close it, then start the next one (line clearance: orders do not start by
    themselves with aggregation)."""
    line_end.watch(orders)
    api = Api(operator.client)
    for order in orders:
        if order["state"] != "completed" or order["id"] in line_end.finished:
            continue
        console.print(f"order {order['id']}: units made; finishing its cases and pallets")
        await line_end.finish(order["id"], api)
        if await _auto_closed(api, order["id"]):
            console.print(f"[green]order {order['id']} closed[/] by the agent (auto-close)")
            continue
        try:
            await operator.close(order["id"])
        except EdgeAgentError as exc:
            line_end.errors.append(f"order {order['id']} could not be closed: {exc}")
            continue
        console.print(f"[green]order {order['id']} closed[/] with its cases and pallets")
    busy = [o for o in orders if o["state"] in ("running", "held")]
    unfinished = [
        o for o in orders if o["state"] == "completed" and o["id"] not in line_end.finished
    ]
    queue = {order_id: n for n, order_id in enumerate(line_end.queue)}
    ready = sorted(
        (o for o in orders if o["state"] == "ready"), key=lambda o: queue.get(o["id"], 0)
    )
    if busy or unfinished or not ready:
        return
    try:
        await api.post(f"/orders/{ready[0]['id']}/commands/start")
    except EdgeAgentError as exc:  # refused for now (a device coming back): the next poll
        log_once(console, f"order {ready[0]['id']} not started yet: {exc}")
        return
    console.print(f"order {ready[0]['id']} started (the line end is clear)")


AUTO_CLOSE_WAIT_S = 20.0  # the agent looks at a completed order every second


async def _auto_closed(api: Api, order_id: str) -> bool:
    """The line end is finished: the agent's auto-close closes the order once it balances;
    False when it has not within AUTO_CLOSE_WAIT_S (then a person closes it)."""
    deadline = time.monotonic() + AUTO_CLOSE_WAIT_S
    while time.monotonic() < deadline:
        try:
            if (await api.get(f"/orders/{order_id}"))["state"] == "closed":
                return True
        except EdgeAgentError:  # the API busy for a moment: asked again
            pass
        await asyncio.sleep(0.2)
    return False


_said: set[str] = set()


def log_once(console: Console, message: str) -> None:
    if message not in _said:
        _said.add(message)
        console.print(message)


async def _until_l3_has_everything(
    run: DemoRun, sims: SimulatorSet, serving: asyncio.Task[Any]
) -> None:
    """The close reports and returns are queued at close and delivered by the L3 link."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and not serving.done():
        reports = {r["order_id"] for r in sims.l3.reports.values()}
        if set(run.order_ids) <= reports and _returns_delivered(sims, run.order_ids):
            return
        await asyncio.sleep(0.1)
    run.error = f"L3 had not received every close report and return after {SETTLE_S:.0f} s"


def _returns_delivered(sims: SimulatorSet, order_ids: list[str]) -> bool:
    returned = {r["order_id"] for r in sims.l3.returns.values()}
    return set(order_ids) <= returned


@contextlib.contextmanager
def _progress(console: Console, stats: LineStats, total: int) -> Any:
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
        task = progress.add_task("line", total=total, rate=0.0, passed=0, rejected=0, reasons="")
        step = max(1, total // 10)
        next_line = [step]

        def tick() -> None:
            reasons = ", ".join(f"{k} {v}" for k, v in stats.by_reason.most_common(4))
            if not console.is_terminal and stats.units >= next_line[0]:
                # No live bar without a terminal: a plain line every tenth of the run instead.
                next_line[0] += step
                console.print(
                    f"units {stats.units}/{total}  {stats.units_per_min():.0f}/min  "
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

        yield tick


# --- the report ------------------------------------------------------------------------------


def orders_report(
    conn: Any,
    run: DemoRun,
    truth: dict[str, Any],
    arrivals: dict[int, tuple[str, str]],
    documents: list[dict[str, Any]],
) -> dict[str, Any]:
    """Per order: its reconciliation from the state database against what physically happened
    to its units; then the holds, the totals and how the daemon fared."""
    store = OrderStore(conn)
    returned_by_l3 = _l3_returned(truth)
    per_order: list[dict[str, Any]] = []
    holds: list[dict[str, Any]] = []
    for document in documents:
        order_id = document["id"]
        record = store.find(order_id)
        if record is None:  # never arrived: nothing in the ledger to compare
            per_order.append(_missing(document))
            continue
        printed_as = (document["product"]["gtin"], document["lot"])
        triggers = {t for t, unit in arrivals.items() if unit == printed_as}
        ledger = reconcile(conn, order_id)
        one = demo_report(ledger, order_truth(truth, triggers, _serials(conn, order_id)), None)
        one["order_id"] = order_id
        one["state"] = str(record.state)
        one["serials_returned_to_l3"] = returned_by_l3.get(order_id, 0)
        if record.state != "closed":
            one["problems"].append(f"order {order_id} is {record.state}, not closed")
            one["balanced"] = False
        per_order.append(one)
        for hold in store.holds(order_id):
            end = hold.resumed_at
            holds.append(
                {
                    "order_id": order_id,
                    "reason": hold.reason,
                    "detail": json.loads(hold.detail or "{}"),
                    "held_at": hold.held_at,
                    "resumed_at": end,
                    "resumed_by": hold.resumed_by,
                    "duration_s": None if end is None else round(end - hold.held_at, 3),
                }
            )
    report: dict[str, Any] = {key: sum(o.get(key, 0) for o in per_order) for key in TOTALS}
    for key in ("rejected_by_reason", "serials_rejected_by_reason", "injected_by_kind"):
        merged: Counter[str] = Counter()
        for order in per_order:
            merged.update(order.get(key, {}))
        report[key] = dict(sorted(merged.items()))
    problems = [p for o in per_order for p in o["problems"]] + run.problems
    if truth.get("printed_twice"):
        problems.append(f"{truth['printed_twice']} serials printed twice")
    if run.error is not None:
        problems.append(run.error)
    unresumed = [h["reason"] for h in holds if h["resumed_at"] is None]
    report.update(
        {
            "orders": per_order,
            "holds": holds,
            "l3": truth.get("l3", {}),
            "api_url": run.api_url,
            "process_exits": 0 if run.served is None else 1,
            "daemon": {"pid": os.getpid(), "segments": run.segments, "resumed": run.resumed},
            "line_stopped": (unresumed or [None])[-1] or run.error or run.served,
            "problems": problems,
            "balanced": not problems and all(o["balanced"] for o in per_order),
        }
    )
    return report


def order_truth(truth: dict[str, Any], triggers: set[int], serials: set[str]) -> dict[str, Any]:
    """The part of the line's physical truth that belongs to one order's units."""
    printed = [s for s in truth.get("printed_serials", []) if s in serials]
    injected = truth.get("injected_defects", {})
    return {
        "units_triggered": len(triggers),
        "printed": len(printed),
        "printed_twice": len(printed) - len(set(printed)),
        "injected_defects": {t: k for t, k in injected.items() if t in triggers},
        "gate_passed": [t for t in truth.get("gate_passed", []) if t in triggers],
        "gate_rejected": [t for t in truth.get("gate_rejected", []) if t in triggers],
    }


def _serials(conn: Any, order_id: str) -> set[str]:
    rows = conn.execute("SELECT serial FROM serials WHERE batch_id = ?", (order_id,))
    return {serial for (serial,) in rows}


def _l3_returned(truth: dict[str, Any]) -> dict[str, int]:
    """Serials L3 received back, by order (each return message counted once)."""
    counts: dict[str, int] = {}
    for message in truth.get("l3_returns", []):
        order_id = str(message["order_id"])
        counts[order_id] = counts.get(order_id, 0) + len(message["payload"].get("serials", []))
    return counts


def _missing(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": document["id"],
        "state": "not received",
        "problems": [f"order {document['id']} never reached the line"],
        "balanced": False,
    }


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
    on_line = truth.get("units_triggered", 0)
    if on_line != len(passed_at_gate) + len(rejected_at_gate):
        problems.append(
            f"{on_line} units on the line, {len(passed_at_gate) + len(rejected_at_gate)} gated"
        )
    # A unit without a verdict (in flight when the line stopped) is rejected at the gate for
    # lack of one; the ledger must then have rejected its serial without a decision.
    undecided = on_line - ledger["units"]
    settled = ledger["serials_rejected"] - ledger["rejected"]
    if undecided < 0 or undecided > settled:
        problems.append(
            f"{on_line} units on the line, {ledger['units']} decided and {settled} serials "
            "rejected undecided"
        )
    report = dict(ledger)
    report.update(
        {
            "injected_defects": len(injected),
            "injected_by_kind": _count(injected.values()),
            "defects_rejected": defects_rejected,
            "good_rejected": good_rejected,
            "undecided_rejected": max(0, undecided),
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


def print_summary(report: dict[str, Any], console: Console) -> None:
    table = Table(title="Orders", show_header=True)
    for name in ("order", "GTIN", "lot", "state", "units", "passed", "rejected", "returned"):
        table.add_column(name, justify="right" if name in ("units", "passed") else "left")
    table.add_column("balanced")
    for order in report["orders"]:
        table.add_row(
            order["order_id"],
            str(order.get("gtin", "-")),
            str(order.get("lot", "-")),
            order["state"],
            str(order.get("units", "-")),
            str(order.get("passed", "-")),
            str(order.get("rejected", "-")),
            str(order.get("serials_returned", "-")),
            "[green]yes" if order["balanced"] else "[red]NO",
        )
    console.print(table)
    for hold in report["holds"]:
        held = f"{hold['duration_s']:.1f} s" if hold["duration_s"] is not None else "not resumed"
        console.print(f"hold: order {hold['order_id']} {hold['reason']} — {held}")
    exits = report["process_exits"]
    console.print(
        f"daemon: one process (pid {report['daemon']['pid']}), "
        f"{report['daemon']['segments']} line segments, "
        + ("never exited" if exits == 0 else "[red]ended before the demo stopped it[/]")
    )
    if "bundles" in report:
        console.print(
            f"bundler: {report['bundles']} bundles; bundle defects injected "
            f"{report['bundle_defects_injected']}, rejected {report['bundle_defects_rejected']}"
        )
    if "cases" in report:
        console.print(
            f"line end: {report['cases']} cases, {report['pallets']} pallets; case defects "
            f"injected {report['case_defects_injected']}, rejected "
            f"{report['case_defects_rejected']}; units loose {report['units_loose']}; "
            f"hierarchy balanced: {'yes' if report['hierarchy_balanced'] else 'NO'}"
        )
    for problem in report["problems"]:
        console.print(f"[red]problem:[/] {problem}")
    if hint := _outbox_hint(report):
        console.print(hint)
    balanced = "[bold green]yes" if report["balanced"] else "[bold red]NO"
    console.print(f"all orders balanced: {balanced}   REST API was at {report['api_url']}")
    console.print(f"state database: {report['state_dir']}/state.db")


def _outbox_hint(report: dict[str, Any]) -> str | None:
    """Why events wait for upstream after a demo without a forwarder: nothing is lost, nothing
    was sent; how to see them delivered or written out."""
    if "events_received_upstream" in report:
        return None
    waiting = sum(o.get("events_pending_delivery", 0) for o in report["orders"])
    if not waiting:
        return None
    return (
        f"events waiting for upstream: {waiting:,}, kept in the outbox (this demo has no "
        "forwarder; --upstream epcis-http delivers them to a simulated EPCIS capture server, "
        f"edge-agent outbox export --state-dir {report['state_dir']} --out events.jsonld "
        "writes them out)"
    )
