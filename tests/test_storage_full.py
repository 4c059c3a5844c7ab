"""A full disk is a clean storage stop, never a crash: while running, at a restart, and before.

The state directory lives on a real, small filesystem (a tmpfs mounted for the test; that needs
root, which the CI machine has) and the disk is filled by something else, as a log or another
program would. The agent must stop the line with ``storage_error`` (PLC code 11) and one clear log
line, exit 3 (which systemd does not restart), do the same when restarted on the still-full disk,
and resume the batch without loss once there is room again. Free disk space is also watched with
alarm and stop levels of its own (``[agent] disk_free_alarm_mb`` / ``disk_free_stop_mb``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.modbus import registers as reg
from edge_agent.db import open_reader
from edge_agent.line.stats import LineStats
from edge_agent.outbox.store import OutboxStore
from edge_agent.reconcile import reconcile
from simulators.runner import SimulatorSet
from simulators.upstream.capture_server import CaptureServerSim
from tests.helpers.agent_process import (
    API_ENV,
    AgentProcess,
    Operator,
    free_port,
    write_agent_config,
)
from tests.helpers.line import (
    check_gate_matches_ledger,
    check_nothing_sent_twice,
    gates_settled,
    run_agent,
    simulators,
    state_db,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.slow

MB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``make(size_mb)`` mounts a tmpfs of that size and returns its mount point."""
    mounts: list[Path] = []

    def make(size_mb: int) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        why = None
        if shutil.which("mount") is None:
            why = "mount (util-linux) is not installed"
        else:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                why = f"cannot mount a small tmpfs: {done.stderr.strip() or 'needs root'}"
        if why is not None:
            if os.environ.get("EDGE_AGENT_CI") == "1":
                pytest.fail(f"{why} (the CI machine runs as root)")
            pytest.skip(why)
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(disk: Path, leave: int = 0) -> Path:
    """Another program writes a file until about ``leave`` bytes are free (0: the disk is full)."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):  # ENOSPC: full
        while (room := free_bytes(disk) - leave) > 0:
            out.write(b"\0" * min(room, 1 << 20))
        if leave == 0:
            while True:
                out.write(b"\0" * 4096)
    return filler


def log_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def only_storage_stop(text: str, detail: str) -> None:
    """The run ended with one line_stop, storage_error, saying ``detail``; no traceback."""
    assert "Traceback" not in text, text[-3000:]
    stops = [e for e in log_events(text) if e["event"] == "line_stop"]
    assert len(stops) == 1, stops
    assert stops[0]["reason"] == "storage_error" and detail in stops[0]["detail"], stops
    assert "line stopped: storage_error" in text  # what the command prints on stderr


async def stop_reason(sims: SimulatorSet) -> int:
    return int((await sims.plc._get(3, reg.HR_STOP_REASON, 1))[0])


async def test_a_full_disk_stops_the_line_cleanly_and_so_does_a_restart(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(16)
    state = disk / "state"
    # Far more than print before the filled disk stops the line: SQLite writes on into the pages
    # its files already hold, from 20 to almost 400 units after the fill.
    units = 1500
    async with SimulatorSet(simulators()) as sims:
        # The free-space watch off: what is tested here is the database's own failure.
        config = write_agent_config(
            tmp_path / "agent.toml",
            sims,
            state,
            units=units,
            api_port=(port := free_port()),
            agent={"disk_free_alarm_mb": 0, "disk_free_stop_mb": 0},
        )
        running, restart, resumed = (tmp_path / f"agent-{n}.out" for n in (1, 2, 3))
        async with AgentProcess(config, running, env=API_ENV) as agent:
            await until(
                lambda: len(sims.plc.passed_triggers) >= 30 or agent.returncode is not None,
                "units through the gate",
                within=60.0,
            )
            assert agent.returncode is None, agent.output()[-3000:]
            filler = fill(disk)
            assert await agent.wait(within=60.0) == 3, agent.output()[-3000:]
        only_storage_stop(running.read_text(), "database or disk is full")
        await gates_settled(sims)
        assert await stop_reason(sims) == 11
        assert not sims.plc.running()
        stopped_at = len(sims.printer.printed)
        assert stopped_at < units

        # The hold is recorded when the full disk still took that write; else it is recorded
        # later, and meanwhile the order still reads Running (what a reader sees of a database
        # on a full disk is not to be trusted here: the restart's own log says which it was).
        await sims.plc._set(3, reg.HR_STOP_REASON, [0])  # so the restart's code is seen anew
        async with AgentProcess(config, restart, env=API_ENV) as agent:
            assert await agent.wait(within=60.0) == 3, agent.output()[-3000:]
        if '"line_stop"' not in restart.read_text():  # held: a restart keeps it held
            assert "line stopped: storage_error; order PROC-1 needs a person" in restart.read_text()
        else:  # running: its new segment meets the full disk and stops the same way
            only_storage_stop(restart.read_text(), "database or disk is full")
        assert await stop_reason(sims) == 11
        assert len(sims.printer.printed) == stopped_at

        filler.unlink()  # room again: the order resumes (an operator resumes a held one)
        async with AgentProcess(config, resumed, env=API_ENV, args=["--exit-when-idle"]) as agent:
            async with Operator(port) as operator:
                await operator.wait_up(agent)
                if (await operator.order("PROC-1"))["state"] == "held":
                    await operator.resume("PROC-1")
            assert await agent.wait(within=180.0) == 0, agent.output()[-3000:]
        await gates_settled(sims)
        with contextlib.closing(open_reader(state)) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)
            check_nothing_sent_twice(conn, sims)
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "closed"


async def test_free_disk_space_has_an_alarm_and_a_stop_level(
    agent_config_factory: Any, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(48)
    units = 1000
    async with SimulatorSet(simulators()) as sims:
        config = agent_config_factory(
            simulators=sims,
            agent={
                "state_dir": str(disk / "state"),
                "disk_free_alarm_mb": 24,
                "disk_free_stop_mb": 12,
            },
            order={"quantity": units},
            line={"verdict_deadline_ms": 500},
        )
        stats = LineStats()
        run = asyncio.ensure_future(run_agent(config, stats))
        try:
            await until(lambda: stats.units >= 20 or run.done(), "units decided")
            # Another program fills the disk: in a thread, so the agent's loop (this test's) runs on
            await asyncio.to_thread(fill, disk, 18 * MB)  # below the alarm level: the line runs on
            await until(lambda: any("disk_free_alarm_mb" in a for a in stats.alarms), "alarm")
            decided = stats.units
            await until(lambda: stats.units >= decided + 20 or run.done(), "units after the alarm")
            assert not run.done()
            await asyncio.to_thread(fill, disk, 8 * MB)  # below the stop level
            stopped = await asyncio.wait_for(run, 30)
        finally:
            run.cancel()
        await gates_settled(sims)
        assert await stop_reason(sims) == 11
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)

        printed = len(sims.printer.printed)
        again = await run_agent(config, LineStats())  # still below the stop level: no line
        assert len(sims.printer.printed) == printed

    assert stopped is not None and stopped.reason == "storage_error", stopped
    assert "disk_free_stop_mb = 12" in str(stopped) and "MB free" in str(stopped)
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "open" and report["units"] < units
    assert again is not None and again.reason == "storage_error"


@pytest.mark.parametrize("where", ["mark", "prune"])
async def test_an_outbox_storage_failure_stops_the_line(
    where: str,
    agent_config_factory: Any,
    capture_sim: CaptureServerSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forwarder cannot record what it delivered (``mark``), or retention cannot prune: the
    database under the outbox failed. Injected at the sqlite boundary, since a really full disk
    fails the ledger's own writes first (above); the forwarder is real, over HTTP."""
    original = getattr(OutboxStore, where)
    calls: list[int] = []

    def failing(self: OutboxStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if where == "prune" or len(calls) > 3:  # a few deliveries are recorded first
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OutboxStore, where, failing)
    forwarder = capture_sim.driver_config(name="l3", poll_interval_s=0.01)
    units = 2000
    async with SimulatorSet(simulators()) as sims:
        config = agent_config_factory(
            simulators=sims,
            order={"quantity": units},
            line={"verdict_deadline_ms": 500},
            upstream={"forwarders": [forwarder], "backoff_initial_s": 0.05, "drain_on_exit_s": 1},
        )
        stopped = await asyncio.wait_for(run_agent(config), 60)
        await gates_settled(sims)
        assert await stop_reason(sims) == 11
        with state_db(config) as conn:
            report = reconcile(conn)
            check_gate_matches_ledger(conn, sims)

    assert stopped is not None and stopped.reason == "storage_error", stopped
    assert "database or disk is full" in str(stopped)
    assert report["balanced"], report["problems"]
    assert report["batch_state"] == "open" and report["units"] < units
