"""`edge-agent run` as a real process, against simulators running in the test's own event loop.

For promises about the process (exit status, signals, systemd notifications, restarts) the agent
must be what a service manager starts: ``python -m edge_agent.cli run --config FILE``. The
simulators stay in the test (like devices that outlive the agent), so a test can inject faults and
read the physical truth while the agent runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from simulators.runner import SimulatorSet

READ_POINT = "urn:epc:id:sgln:0950600.01340.DEMO"


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    """Flat TOML tables (the only shape these configs need)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items()) + "\n"
        for name, body in sections.items()
    )


def write_agent_config(
    path: Path,
    sims: SimulatorSet,
    state_dir: Path,
    *,
    units: int,
    batch_id: str = "PROC-1",
    **sections: dict[str, Any],
) -> Path:
    """An agent config on these simulators; ``sections`` add to (or override) its tables."""
    base: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(state_dir), "log_format": "json"},
        "line": {
            "verdict_deadline_ms": 500,
            "heartbeat_interval_ms": 100,
            "read_point": READ_POINT,
        },
        "batch": {
            "id": batch_id,
            "gtin": "09506000134352",
            "lot": "DEMO24A",
            "expiry": "281231",
            "target_quantity": units,
        },
        **sims.device_configs(),
    }
    for name, body in sections.items():
        base[name] = {**base.get(name, {}), **body}
    path.write_text(toml_text(base))
    return path


class AgentProcess:
    """One ``edge-agent run`` process; stdout and stderr go to ``log`` (appended)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.env.pop("EDGE_AGENT_CRASH_AT", None)
        self.proc: asyncio.subprocess.Process | None = None
        self.ignore_sigint = False  # start it as a shell does for a background job

    def _prepare_child(self) -> None:
        if self.ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def start(self) -> AgentProcess:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "--config",
                str(self.config),
                stdout=out,
                stderr=out,
                env=self.env,
                preexec_fn=self._prepare_child,
            )
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, within: float = 60.0) -> int:
        """The exit status; a process still running after ``within`` seconds is killed and the
        test fails with the end of its log."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                f"the agent was still running after {within} s:\n{self.output()[-3000:]}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def __aenter__(self) -> AgentProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def run_agent_process(config: Path, log: Path, within: float = 60.0) -> int:
    async with AgentProcess(config, log) as agent:
        return await agent.wait(within)
