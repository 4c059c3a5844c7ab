"""The REST API exercised by clients not written here: schemathesis generating requests from the
served OpenAPI document, and curl."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from edge_agent.orders import audit
from tests.helpers.api import TOKENS, Rig, make_rig, order_data, serving

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path / "state")


async def run(*argv: str, cwd: Path, timeout_s: float = 300) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace")


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    rig: Rig, tmp_path: Path
) -> None:
    """Every operation of the served document, positive and negative data, the example order
    and the stateful links (submit → show / commands / report): every answer must be
    documented, match its schema, and none may be a 5xx."""
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is missing: install requirements-dev.lock")
    async with serving(rig) as server:
        async with rig.client() as client:
            document = (await client.get("/openapi.json")).json()
        operations = sum(len(methods) for methods in document["paths"].values())
        code, out = await run(
            str(SCHEMATHESIS),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--header",
            f"Authorization: Bearer {TOKENS['mes']}",
            "--max-examples",
            "8",
            "--seed",
            "11",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            cwd=tmp_path,
        )
    assert code == 0, out[-6000:]
    assert f"Tested: {operations}" in out, out[-3000:]  # every operation of the document
    assert "✅ Stateful" in out and re.search(r"Scenarios:\s+[1-9]", out), out[-3000:]
    stored = rig.commands.store.find("WO-2026-0001")  # the document's example order went in
    assert stored is not None


def _curl() -> str:
    found = shutil.which("curl")
    if found is None:
        if os.environ.get("EDGE_AGENT_CI") == "1":
            pytest.fail("curl is missing (Debian package: curl)")
        pytest.skip("needs curl (Debian package: curl)")
    return found


async def test_curl_drives_an_order_through_the_api(rig: Rig, tmp_path: Path) -> None:
    curl = _curl()
    order_file = tmp_path / "order.json"
    order_file.write_text(json.dumps(order_data()))
    auth = f"Authorization: Bearer {TOKENS['operator']}"

    async def call(*args: str) -> tuple[int, str]:
        code, out = await run(
            curl, "--silent", "--show-error", "--write-out", "\n%{http_code}", *args, cwd=tmp_path
        )
        assert code == 0, out
        body, _, status = out.rpartition("\n")
        return int(status), body

    async with serving(rig) as server:
        url = server.url
        status, body = await call(
            "-H",
            auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            f"@{order_file}",
            f"{url}/orders",
        )
        assert status == 201 and json.loads(body)["state"] == "ready"
        status, body = await call("-H", auth, "-X", "POST", f"{url}/orders/ORD-1/commands/start")
        assert status == 200 and json.loads(body)["state"] == "running"
        status, body = await call(
            "-H",
            auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            '{"reason": "jam"}',
            f"{url}/orders/ORD-1/commands/hold",
        )
        assert status == 200 and json.loads(body)["state"] == "held"
        status, body = await call("-H", auth, f"{url}/line")
        assert status == 200 and json.loads(body)["state"] == "held"
        status, body = await call("-H", auth, "-X", "POST", f"{url}/orders/ORD-1/commands/close")
        assert status == 409 and "allowed only when it is completed" in json.loads(body)["message"]
        status, body = await call(f"{url}/orders")  # no token
        assert status == 401
        status, body = await call("-H", auth, "-X", "POST", f"{url}/orders/ORD-1/commands/stop")
        assert status == 200 and json.loads(body)["state"] == "closed"
        status, body = await call("-H", auth, f"{url}/orders/ORD-1/report.html")
        assert status == 200 and body.lstrip().startswith("<!DOCTYPE html>")
        status, body = await call(f"{url}/openapi.json")
        assert status == 200 and json.loads(body)["openapi"].startswith("3.")
    done = [(r.action, r.actor) for r in audit.rows(rig.conn) if r.outcome == "done"]
    assert done == [
        ("store", "operator"),
        ("start", "operator"),
        ("hold", "operator"),
        ("stop", "operator"),
        ("close", "auto-close"),
    ]
