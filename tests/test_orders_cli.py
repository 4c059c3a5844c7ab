"""`edge-agent order | line` against a running API (served from the config's [api] section, as
the agent serves it), and `edge-agent audit verify` on the state database."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
import structlog.testing

from edge_agent.api.service import api_server
from edge_agent.cli import main
from edge_agent.config.models import ApiSection
from edge_agent.errors import ConfigError
from edge_agent.stops import StopReason
from tests.helpers.api import TOKENS, Rig, make_rig, order_data, self_signed, services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    folder: Path, *, tls: bool = False, port: int | None = None, role: str | None = None
) -> Path:
    token = folder / "operator.token"
    token.write_text(TOKENS["operator"] + "\n")
    lines = [
        "[agent]",
        f'state_dir = "{folder / "state"}"',
        "",
        "[api]",
        'host = "127.0.0.1"',
        f"port = {port or free_port()}",
    ]
    if tls:
        pair = self_signed(folder)
        lines += [f'tls_cert = "{pair.cert}"', f'tls_key = "{pair.key}"']
    lines += ["[[api.tokens]]", 'name = "operator"', f'token = {{ file = "{token}" }}']
    lines += [f'role = "{role}"', ""] if role else [""]
    path = folder / "line.toml"
    path.write_text("\n".join(lines))
    return path


class Agent:
    def __init__(self, rig: Rig, config: Path) -> None:
        self.rig = rig
        self.config = config

    async def cli(self, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        """Run the CLI in a thread (it blocks), against the API served on this loop."""
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--config", str(self.config)])
        out, err = capsys.readouterr()
        return code, out, err


async def serve(
    folder: Path, *, tls: bool = False, role: str | None = None
) -> AsyncIterator[Agent]:
    rig = make_rig(folder / "state")
    config = write_config(folder, tls=tls, role=role)
    section = ApiSection.model_validate(tomllib.loads(config.read_text())["api"])
    # the agent's log lines would land in the CLI's captured stdout: keep them apart
    with structlog.testing.capture_logs():
        async with api_server(section, services(rig)):
            yield Agent(rig, config)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async for running in serve(tmp_path):
        yield running


async def test_an_order_from_submit_to_report(
    agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    order_file = tmp_path / "ORD-1.json"
    order_file.write_text(json.dumps(order_data()))
    code, out, _ = await agent.cli("order", "submit", str(order_file), capsys=capsys)
    assert (code, out) == (0, "order ORD-1 stored: ready\n")

    toml_file = tmp_path / "ORD-2.toml"
    toml_file.write_text(
        'id = "ORD-2"\nlot = "LOT-B"\nexpiry = "301231"\nquantity = 2\nmarket = "FR"\n'
        '[product]\ngtin = "09506000134352"\n'
        '[serials]\nsource = "list"\nserials = ["T1", "T2"]\n'
    )
    code, out, _ = await agent.cli("order", "submit", str(toml_file), capsys=capsys)
    assert (code, out) == (0, "order ORD-2 stored: ready\n")

    code, out, _ = await agent.cli("order", "list", capsys=capsys)
    assert code == 0
    assert out.splitlines()[0].split() == ["ORDER", "STATE", "GTIN", "LOT", "QUANTITY", "RECEIVED"]
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["ORD-2", "ready"],
        ["ORD-1", "ready"],
    ]

    code, out, _ = await agent.cli("order", "start", "ORD-1", capsys=capsys)
    assert (code, out) == (0, "order ORD-1: running\n")
    code, out, _ = await agent.cli("order", "list", "--state", "running", "--json", capsys=capsys)
    assert [o["id"] for o in json.loads(out)] == ["ORD-1"]

    agent.rig.run_units("ORD-1", ["pass", "no_read"])
    alarm = agent.rig.alarms.raise_(StopReason.DEVICE_ERROR, "camera lost", order_id="ORD-1")
    code, out, _ = await agent.cli(
        "order", "hold", "ORD-1", "--reason", "camera lost", capsys=capsys
    )
    assert (code, out) == (0, "order ORD-1: held\n")

    code, out, _ = await agent.cli("line", "status", capsys=capsys)
    assert code == 0
    assert out.splitlines()[0] == "line held: order ORD-1 (held)"
    assert "units 2  passed 1  rejected 1  remaining 2 of 3" in out
    assert "no_read: 1" in out
    assert f"#{alarm.id} device_error order ORD-1 (active, to acknowledge): camera lost" in out

    code, _, err = await agent.cli("order", "resume", "ORD-1", capsys=capsys)
    assert code == 1 and "acknowledge the alarms of order ORD-1 first" in err
    code, out, _ = await agent.cli("line", "ack", str(alarm.id), capsys=capsys)
    assert (code, out) == (0, f"alarm #{alarm.id} device_error acknowledged by api:operator\n")
    code, out, _ = await agent.cli("order", "resume", "ORD-1", capsys=capsys)
    assert (code, out) == (0, "order ORD-1: running\n")

    agent.rig.run_units("ORD-1", ["pass", "pass"])
    code, out, _ = await agent.cli("order", "stop", "ORD-1", capsys=capsys)
    assert (code, out) == (0, "order ORD-1: closed\n")

    code, out, _ = await agent.cli("order", "show", "ORD-1", capsys=capsys)
    assert code == 0
    assert out.startswith("order ORD-1: closed  (Tablets 20 mg)")
    assert "commands allowed now: none (it has ended)" in out
    assert "api:operator hold done  reason: camera lost" in out
    assert "api:operator acknowledge done" in out

    code, out, _ = await agent.cli("order", "report", "ORD-1", capsys=capsys)
    assert code == 0
    assert "units 4  passed 3  rejected 1  yield 100.0 % of 3" in out
    assert "balanced" in out and "NOT balanced" not in out
    page = tmp_path / "ORD-1.html"
    code, out, _ = await agent.cli("order", "report", "ORD-1", "--html", str(page), capsys=capsys)
    assert code == 0 and "<svg" in page.read_text() and "camera lost" in page.read_text()
    code, out, _ = await agent.cli("order", "report", "ORD-1", "--json", capsys=capsys)
    assert json.loads(out)["reconciliation"]["rejected_by_reason"] == {"no_read": 1}

    code, out, _ = await agent.cli("order", "cancel", "ORD-2", "--reason", "dup", capsys=capsys)
    assert (code, out) == (0, "order ORD-2: cancelled\n")


async def test_refusals_print_the_agents_message_and_exit_1(
    agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(order_data(lot="bad lot", quantity=0)))
    code, out, err = await agent.cli("order", "submit", str(bad), capsys=capsys)
    assert code == 1 and out == ""
    assert "edge-agent: lot: AI (10) BATCH/LOT: character ' '" in err
    assert "quantity: Input should be greater than or equal to 1" in err
    assert "Traceback" not in err

    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    code, _, err = await agent.cli("order", "submit", str(not_json), capsys=capsys)
    assert code == 1 and f"{not_json}: not valid JSON" in err

    code, _, err = await agent.cli("order", "show", "NOPE", capsys=capsys)
    assert code == 1 and "no order 'NOPE'" in err
    code, _, err = await agent.cli("line", "ack", "77", capsys=capsys)
    assert code == 1 and "no alarm 77" in err

    good = tmp_path / "good.json"
    good.write_text(json.dumps(order_data()))
    await agent.cli("order", "submit", str(good), capsys=capsys)
    code, _, err = await agent.cli("order", "close", "ORD-1", capsys=capsys)
    assert code == 1 and "'close' is allowed only when it is completed" in err
    with pytest.raises(SystemExit) as exited:  # argparse: hold needs --reason
        await agent.cli("order", "hold", "ORD-1", capsys=capsys)
    assert exited.value.code == 2
    assert "--reason" in capsys.readouterr().err


async def test_https_with_the_configs_own_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async for agent in serve(tmp_path, tls=True):
        code, out, _ = await agent.cli("line", "status", capsys=capsys)
        assert (code, out.splitlines()[0]) == (0, "line idle: no order")
        # the CLI trusts the certificate the config names; without it, it refuses the server
        port = tomllib.loads(agent.config.read_text())["api"]["port"]
        token = tmp_path / "operator.token"
        capsys.readouterr()
        code = await asyncio.to_thread(
            main,
            ["line", "status", "--api", f"https://127.0.0.1:{port}", "--token-file", str(token)],
        )
        err = capsys.readouterr().err
        assert code == 1 and "certificate is not trusted" in err


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point in its own process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_agent_running_is_a_clear_message(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKENS["mes"])
    port = free_port()
    done = run_cli("order", "list", "--api", f"http://127.0.0.1:{port}", "--token-file", str(token))
    assert done.returncode == 1
    assert (
        done.stderr
        == f"edge-agent: no agent answers at http://127.0.0.1:{port}: is edge-agent running?\n"
    )
    config = write_config(tmp_path, port=port)
    done = run_cli("line", "status", "--config", str(config))
    assert done.returncode == 1 and "no agent answers" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_wrong_token_and_a_config_without_api(
    agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("x" * 32)
    port = tomllib.loads(agent.config.read_text())["api"]["port"]
    capsys.readouterr()
    argv = ["order", "list", "--api", f"http://127.0.0.1:{port}", "--token-file", str(wrong)]
    code = await asyncio.to_thread(main, argv)
    assert code == 1 and "the agent refused the token" in capsys.readouterr().err

    no_api = tmp_path / "no-api.toml"
    no_api.write_text('[agent]\nstate_dir = "/tmp/x"\n')
    code = await asyncio.to_thread(main, ["order", "list", "--config", str(no_api)])
    assert code == 2 and "no [api] section" in capsys.readouterr().err


def test_a_token_the_cli_cannot_read_says_what_to_do(tmp_path: Path) -> None:
    from edge_agent.api.client import endpoint

    config = tmp_path / "line.toml"
    config.write_text(
        '[api]\n[[api.tokens]]\nname = "mes"\ntoken = { env = "EDGE_AGENT_TEST_UNSET_TOKEN" }\n'
    )
    with pytest.raises(ConfigError, match=r"cannot read the token of 'mes' here.*--token-file"):
        endpoint(config=config, api=None, token_file=None)


# --- audit verify ----------------------------------------------------------------------------


async def test_audit_verify_passes_then_fails_after_a_row_is_changed(
    agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    order_file = tmp_path / "o.json"
    order_file.write_text(json.dumps(order_data()))
    await agent.cli("order", "submit", str(order_file), capsys=capsys)
    await agent.cli("order", "start", "ORD-1", capsys=capsys)
    await agent.cli("order", "hold", "ORD-1", "--reason", "jam", capsys=capsys)
    state_dir = agent.rig.state_dir

    done = run_cli("audit", "verify", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit trail holds: 3 rows, head ")
    done = run_cli("audit", "verify", "--config", str(agent.config), "--json")
    assert json.loads(done.stdout)["ok"] is True

    # Someone bypasses the agent: drops the append-only triggers and rewrites the reason.
    with sqlite3.connect(state_dir / "state.db") as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET reason = 'scheduled break' WHERE action = 'hold'")
    done = run_cli("audit", "verify", "--state-dir", str(state_dir))
    assert done.returncode == 1
    assert "audit trail BROKEN" in done.stdout
    assert "row 3: content does not match its hash (changed)" in done.stdout

    with sqlite3.connect(state_dir / "state.db") as db:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE seq = 2")
    done = run_cli("audit", "verify", "--state-dir", str(state_dir), "--json")
    assert done.returncode == 1
    assert "row 2..2 missing (deleted)" in json.loads(done.stdout)["problems"]


def test_audit_verify_without_a_state_database(tmp_path: Path) -> None:
    done = run_cli("audit", "verify", "--state-dir", str(tmp_path / "nothing"))
    assert done.returncode == 1
    assert "no state database at" in done.stderr and "Traceback" not in done.stderr
