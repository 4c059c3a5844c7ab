"""The demo serves the operator screen and, with --keep-running, stays up after its last order
until Ctrl-C, so a newcomer can explore the screens (issue 14)."""

from __future__ import annotations

import asyncio
import re
import signal
import stat
import sys
from pathlib import Path

import httpx

from tests.helpers.waiting import until


async def test_the_demo_serves_the_screen_and_keeps_running_until_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", "demo", "--units", "12", "--fast",
            "--state-dir", str(state), "--keep-running",
            stdout=sink, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await until(lambda: "stays up" in out.read_text(), "the demo's orders", within=120)
            assert proc.returncode is None, out.read_text()[-2000:]
            text = out.read_text()
            url = re.search(r"Operator screen: (http://127\.0\.0\.1:\d+)/hmi", text)
            assert url is not None, text[-2000:]
            logins = state / "hmi-logins"
            assert stat.S_IMODE(logins.stat().st_mode) == 0o600
            for line in logins.read_text().splitlines():  # never printed, only in the file
                assert line.split(": ", 1)[1] not in text
            async with httpx.AsyncClient(base_url=url.group(1), timeout=10) as client:
                assert (await client.get("/hmi/login")).status_code == 200
                metrics = (await client.get("/metrics")).text
            assert re.search(r"^edge_agent_units_total 12\.0$", metrics, re.M), metrics[:2000]
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 60) == 0, out.read_text()[-2000:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
