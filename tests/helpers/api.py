"""A real API on loopback for tests: the real command path, ledger, alarm board, settlement and
stored reports on a fresh state database, served by uvicorn in the test's event loop; only the
line is a fake that records what it was asked (the line controller comes later)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from edge_agent.alarms import AlarmBoard
from edge_agent.api.app import create_app
from edge_agent.api.auth import BearerTokens
from edge_agent.api.deps import ApiServices
from edge_agent.api.server import ApiServer, Tls
from edge_agent.api.status import DbLineStatus, LineStatus
from edge_agent.db import open_db
from edge_agent.ledger import Ledger, UnitOutcome
from edge_agent.orders.closing import OrderSettlement
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.report_html import StoredReports
from edge_agent.orders.validation import OrderRules

TOKENS = {"mes": "mes-token-0123456789abcdef", "operator": "operator-token-fedcba9876543210"}
READ_POINT = "urn:epc:id:sgln:0950600.01340.L1"


def order_data(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ORD-1",
        "product": {"gtin": "09506000134352", "description": "Tablets 20 mg"},
        "lot": "LOT-A1",
        "expiry": "301231",
        "quantity": 3,
        "serials": {"source": "list", "serials": ["S0001", "S0002", "S0003", "S0004"]},
        "market": "DE",
    }
    base.update(changes)
    return base


class FakeLine:
    """LineControl that acts at once and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.problems: list[str] = []

    def wake(self) -> None:
        self.calls.append(("wake", ""))

    async def hold(self, order_id: str, reason: str) -> None:
        self.calls.append(("hold", order_id))

    def start_problems(self) -> list[str]:
        return []

    async def resume_problems(self, order_id: str) -> list[str]:
        return self.problems

    async def finish(self, order_id: str) -> None:
        self.calls.append(("finish", order_id))

    async def abort(self, order_id: str) -> None:
        self.calls.append(("abort", order_id))


@dataclass
class Rig:
    conn: sqlite3.Connection
    ledger: Ledger
    alarms: AlarmBoard
    commands: CommandPath
    settlement: OrderSettlement
    line: FakeLine
    state_dir: Path
    url: str = ""

    def client(
        self, token: str | None = TOKENS["mes"], headers: dict[str, str] | None = None
    ) -> httpx.AsyncClient:
        sent = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.AsyncClient(base_url=self.url, headers=sent | (headers or {}), timeout=10.0)

    def run_units(self, order_id: str, verdicts: list[str]) -> None:
        """Units through the real ledger, as the line would: "pass" or a reject reason each."""
        batch = self.ledger.open_batch(*self._batch(order_id))
        outcomes = []
        for trigger, verdict in enumerate(verdicts, start=1):
            taken = self.ledger.take_for_print(batch)
            assert taken is not None, "the order has no serial left"
            _, serial = taken
            self.ledger.mark_printed(batch, serial)
            passed = verdict == "pass"
            outcomes.append(UnitOutcome(trigger, passed, "ok" if passed else verdict, serial))
        self.ledger.commit_outcomes(batch, outcomes)

    def _batch(self, order_id: str) -> tuple[str, str, str, str, int]:
        order = self.commands.store.get(order_id).order
        return order.id, order.product.gtin, order.lot, order.expiry, order.quantity


def make_rig(state_dir: Path, *, auto_close: bool = True) -> Rig:
    conn = open_db(state_dir)
    ledger = Ledger(conn, read_point=READ_POINT, company_prefix_length=7)
    alarms = AlarmBoard(conn)
    settlement = OrderSettlement(conn, ledger, state_dir / "reports", l3_link=False)
    commands = CommandPath(conn, ledger, alarms, settlement, OrderRules(), auto_close=auto_close)
    line = FakeLine()
    commands.line = line
    return Rig(conn, ledger, alarms, commands, settlement, line, state_dir)


def services(rig: Rig, line_status: LineStatus | None = None) -> ApiServices:
    return ApiServices(
        commands=rig.commands,
        alarms=rig.alarms,
        line=line_status or DbLineStatus(rig.conn),
        reports=StoredReports(rig.settlement.report_path),
    )


@contextlib.asynccontextmanager
async def serving(
    rig: Rig, *, line_status: LineStatus | None = None, tls: Tls | None = None, port: int = 0
) -> AsyncIterator[ApiServer]:
    tokens = BearerTokens({name: SecretStr(value) for name, value in TOKENS.items()})
    app = create_app(services(rig, line_status), [tokens])
    async with ApiServer(app, host="127.0.0.1", port=port, tls=tls) as server:
        rig.url = server.url
        yield server


def self_signed(folder: Path) -> Tls:
    """A self-signed certificate for 127.0.0.1 (as an operator makes one for the line PC)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-agent test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "api.crt", folder / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Tls(cert_path, key_path)
