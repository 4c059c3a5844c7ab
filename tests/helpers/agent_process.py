"""`edge-agent run` as a real process, against simulators running in the test's own event loop.

The process runs with ``--exit-when-idle --hold-timeout 0`` unless a test says otherwise: it
exits 0 once its orders are closed and 3 as soon as one is held (a line stop).

For promises about the process (exit status, signals, systemd notifications, restarts) the agent
must be what a service manager starts: ``python -m edge_agent.cli run --config FILE``. The
simulators stay in the test (like devices that outlive the agent), so a test can inject faults and
read the physical truth while the agent runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from simulators.pytest_plugin import drop_order, order_for
from simulators.runner import SimulatorSet
from tests.helpers.margins import VERDICT_DEADLINE_MS
from tests.helpers.waiting import until

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
    api_port: int | None = None,
    **sections: dict[str, Any],
) -> Path:
    """An agent config on these simulators, with an order of ``units`` units (id ``batch_id``)
    waiting in its inbox (``<config folder>/inbox``); ``sections`` add to (or override) its
    tables."""
    inbox = path.parent / "inbox"
    base: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(state_dir), "log_format": "json"},
        "line": {
            "verdict_deadline_ms": VERDICT_DEADLINE_MS,
            "heartbeat_interval_ms": 100,
            "read_point": READ_POINT,
        },
        "orders": {"inbox": str(inbox), "inbox_poll_s": 0.1},
        **sims.device_configs(),
    }
    for name, body in sections.items():
        base[name] = {**base.get(name, {}), **body}
    text = toml_text(base)
    if api_port is not None:  # the REST API, with the one token tests use (API_ENV)
        text += (
            f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n'
            f'[[api.tokens]]\nname = "operator"\ntoken = {{ env = "{TOKEN_VAR}" }}\n'
        )
    path.write_text(text)
    drop_order(inbox, order_for(id=batch_id, lot="DEMO24A", quantity=units))
    return path


TOKEN_VAR = "EDGE_AGENT_TEST_API_TOKEN"
API_ENV = {TOKEN_VAR: "operator-token-for-the-process-tests"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """A person at the running daemon's REST API (``api_port`` of ``write_agent_config``)."""

    def __init__(self, port: int) -> None:
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_ENV[TOKEN_VAR]}"},
            timeout=30.0,
        )

    async def __aenter__(self) -> Operator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def wait_up(self, agent: AgentProcess, within: float = 60.0) -> None:
        async def up() -> bool:
            if agent.returncode is not None:
                raise AssertionError(f"the agent exited:\n{agent.output()[-3000:]}")
            try:
                return (await self.client.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await until(up, "the agent's API", within=within, every=0.1)

    async def order(self, order_id: str) -> dict[str, Any]:
        answer = await self.client.get(f"/orders/{order_id}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def resume(self, order_id: str) -> dict[str, Any]:
        """Acknowledge the order's open alarms, then resume it, as an operator does."""
        alarms = await self.client.get("/alarms", params={"order_id": order_id})
        assert alarms.status_code == 200, alarms.text
        for alarm in alarms.json():
            if alarm["acknowledged_at"] is None:
                done = await self.client.post(f"/alarms/{alarm['id']}/acknowledge")
                assert done.status_code == 200, done.text
        answer = await self.client.post(f"/orders/{order_id}/commands/resume")
        assert answer.status_code == 200, answer.text
        resumed: dict[str, Any] = answer.json()
        return resumed


# `run` as scripts and CI run it: until the orders are done (exit 0) or one is held (exit 3).
UNTIL_DONE_OR_HELD = ("--exit-when-idle", "--hold-timeout", "0")


class AgentProcess:
    """One ``edge-agent run`` process; stdout and stderr go to ``log`` (appended)."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        args: Sequence[str] = UNTIL_DONE_OR_HELD,
    ) -> None:
        self.config = config
        self.args = list(args)
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
                *self.args,
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
