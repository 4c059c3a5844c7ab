"""Operator screen users, sessions, roles and CSRF, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from edge_agent.cli import main
from edge_agent.hmi.lockout import LoginGuard
from edge_agent.hmi.sessions import COOKIE, SessionCodec
from edge_agent.hmi.settings import HmiSettings
from edge_agent.hmi.users import UserError, UserFile
from edge_agent.orders import audit
from edge_agent.orders.audit import Role
from tests.helpers.api import Rig, make_rig, order_data
from tests.helpers.hmi import PASSWORDS, browser, csrf_of, login, post, serving_hmi, users_file


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> HmiSettings:
    return HmiSettings(users=users_file(tmp_path))


def _error(answer: object) -> str:
    location = answer.headers["location"]  # type: ignore[attr-defined]
    return parse_qs(urlsplit(location).query).get("error", [""])[0]


async def test_every_page_needs_a_login_and_the_login_returns_to_it(
    rig: Rig, settings: HmiSettings
) -> None:
    async with serving_hmi(rig, settings), browser(rig) as client:
        for path in [
            "/hmi/line",
            "/hmi/orders",
            "/hmi/orders/ORD-1",
            "/hmi/rejects",
            "/hmi/aggregation",
            "/hmi/orders/ORD-1/report.html",
            "/hmi/frames/x.png",
        ]:
            answer = await client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/hmi/login?next="), path
        assert (await client.get("/hmi/line/events")).status_code == 401
        token = csrf_of(await client.get("/hmi/login"))
        answer = await client.post(
            "/hmi/login",
            data={
                "name": "anna",
                "password": PASSWORDS["anna"],
                "csrf": token,
                "next": "/hmi/orders",
            },
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/hmi/orders"
        page = await client.get("/hmi/orders")
        assert page.status_code == 200 and "anna · operator" in page.text
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/hmi" in cookie


async def test_a_wrong_password_or_name_is_refused_and_audited(
    rig: Rig, settings: HmiSettings
) -> None:
    async with serving_hmi(rig, settings), browser(rig) as client:
        for name, password in [
            ("anna", "wrong-password"),
            ("nobody", PASSWORDS["anna"]),
            ("sam", PASSWORDS["anna"]),
        ]:
            token = csrf_of(await client.get("/hmi/login"))
            answer = await client.post(
                "/hmi/login", data={"name": name, "password": password, "csrf": token}
            )
            assert answer.status_code == 303
            assert "wrong name or password" in _error(answer)
            assert (await client.get("/hmi/line")).status_code == 303  # still not logged in
        await login(client, "anna")
    logins = [(r.actor, r.outcome) for r in audit.rows(rig.conn) if r.action == "login"]
    assert logins == [
        ("anna", "refused"),
        ("nobody", "refused"),
        ("sam", "refused"),
        ("anna", "done"),
    ]


async def test_a_form_without_its_sessions_csrf_token_is_refused(
    rig: Rig, settings: HmiSettings
) -> None:
    await rig.commands.submit(order_data(), source="api", actor=audit.Actor("mes", "api"))
    async with serving_hmi(rig, settings), browser(rig) as client, browser(rig) as other:
        token = await login(client, "anna")
        other_token = await login(other, "sam")
        for fields in [{}, {"csrf": ""}, {"csrf": other_token}, {"csrf": token[:-1] + "x"}]:
            answer = await client.post("/hmi/orders/ORD-1/commands/start", data=fields)
            assert answer.status_code == 403, fields
        assert rig.commands.store.get("ORD-1").state == "ready"  # nothing happened
        answer = await post(client, "/hmi/orders/ORD-1/commands/start", token)
        assert answer.status_code == 303 and not _error(answer)
        assert rig.commands.store.get("ORD-1").state == "running"
        # the login form is protected too (no login from another site's page)
        fresh = browser(rig)
        async with fresh:
            answer = await fresh.post(
                "/hmi/login", data={"name": "anna", "password": PASSWORDS["anna"]}
            )
            assert answer.status_code == 403


async def test_a_session_expires_and_a_forged_or_old_cookie_proves_nothing() -> None:
    codec = SessionCodec(lifetime_s=60.0, key=b"k" * 32)
    session = codec.new("anna", now=1000.0)
    cookie = codec.encode(session)
    assert codec.decode(cookie, now=1059.0) == session
    assert codec.decode(cookie, now=1060.0) is None  # expired
    payload, signature = cookie.split(".")
    assert codec.decode(payload + "." + signature[:-2] + "AA", now=1001.0) is None
    forged = SessionCodec(60.0, key=b"x" * 32).encode(session)
    assert codec.decode(forged, now=1001.0) is None  # another key (the agent restarted)
    assert codec.decode("garbage", now=1001.0) is None
    assert codec.csrf_ok(session, codec.csrf_token(session))
    assert not codec.csrf_ok(codec.new("anna", now=1000.0), codec.csrf_token(session))


async def test_an_expired_cookie_sent_anyway_is_refused(rig: Rig, tmp_path: Path) -> None:
    settings = HmiSettings(users=users_file(tmp_path), session_minutes=1.0 / 60)
    async with serving_hmi(rig, settings), browser(rig) as client:
        await login(client, "anna")
        cookie = client.cookies[COOKIE]
        await asyncio.sleep(1.2)
        async with browser(rig) as replay:
            replay.cookies.set(COOKIE, cookie, path="/hmi")
            assert (await replay.get("/hmi/line")).status_code == 303


async def test_a_removed_user_or_a_changed_role_counts_at_the_next_request(
    rig: Rig, settings: HmiSettings
) -> None:
    async with serving_hmi(rig, settings), browser(rig) as client:
        await login(client, "anna")
        settings.users.add("anna", Role.SUPERVISOR, PASSWORDS["anna"], replace=True)
        assert "anna · supervisor" in (await client.get("/hmi/line")).text
        settings.users.remove("anna")
        assert (await client.get("/hmi/line")).status_code == 303


async def test_roles_the_operator_is_refused_abort_the_supervisor_may_and_the_audit_names_them(
    rig: Rig, settings: HmiSettings
) -> None:
    await rig.commands.submit(order_data(), source="api", actor=audit.Actor("mes", "api"))
    async with serving_hmi(rig, settings), browser(rig) as anna, browser(rig) as sam:
        anna_csrf = await login(anna, "anna")
        sam_csrf = await login(sam, "sam")
        assert (await post(anna, "/hmi/orders/ORD-1/commands/start", anna_csrf)).status_code == 303
        page = await anna.get("/hmi/orders/ORD-1")
        assert 'disabled title="needs a supervisor">Abort (supervisor)' in page.text
        refused = await post(
            anna, "/hmi/orders/ORD-1/commands/abort", anna_csrf, reason="wrong lot"
        )
        assert "needs a supervisor" in _error(refused)
        assert rig.commands.store.get("ORD-1").state == "running"
        missing = await post(sam, "/hmi/orders/ORD-1/commands/abort", sam_csrf)
        assert "needs a reason" in _error(missing)
        done = await post(sam, "/hmi/orders/ORD-1/commands/abort", sam_csrf, reason="wrong lot")
        assert not _error(done)
        assert rig.commands.store.get("ORD-1").state == "aborted"
    rows = [
        (r.actor, r.source, r.action, r.outcome, r.reason)
        for r in audit.rows(rig.conn)
        if r.order_id == "ORD-1" and r.action in ("start", "abort")
    ]
    assert rows == [
        ("anna", "hmi", "start", "done", None),
        ("anna", "hmi", "abort", "refused", "wrong lot"),
        ("sam", "hmi", "abort", "refused", None),
        ("sam", "hmi", "abort", "done", "wrong lot"),
    ]


def test_users_file_stores_argon2_hashes_only(tmp_path: Path) -> None:
    users = UserFile(tmp_path / "users.json")
    users.add("anna", Role.OPERATOR, "a-long-password")
    text = users.path.read_text()
    assert "a-long-password" not in text and "$argon2id$" in text
    assert users.path.stat().st_mode & 0o777 == 0o640
    assert users.verify("anna", "a-long-password") is not None
    assert users.verify("anna", "a-long-passwore") is None
    assert users.verify("bob", "a-long-password") is None
    with pytest.raises(UserError, match="exists"):
        users.add("anna", Role.SUPERVISOR, "another-password")
    with pytest.raises(UserError, match="at least 8"):
        users.add("bob", Role.OPERATOR, "short")
    with pytest.raises(UserError, match="user name"):
        users.add("../bob", Role.OPERATOR, "a-long-password")


def test_the_user_command_reads_the_password_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.json"
    added = subprocess.run(  # the installed entry point, the password on stdin
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "user",
            "add",
            "sam",
            "--role",
            "supervisor",
            "--users-file",
            str(path),
        ],
        input="sam-supervisor-pw\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    assert "sam-supervisor-pw" not in added.stdout + added.stderr
    assert UserFile(path).verify("sam", "sam-supervisor-pw") is not None

    def run(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(["user", *args, "--users-file", str(path)])

    assert run("add", "sam", "--role", "operator", stdin="whatever-pw\n") == 1
    assert "--replace" in capsys.readouterr().err
    assert run("add", "anna", "--role", "operator", stdin="short\n") == 1
    assert "at least 8" in capsys.readouterr().err
    assert run("list") == 0
    assert re.search(r"sam\s+supervisor", capsys.readouterr().out)
    assert run("remove", "sam") == 0
    assert UserFile(path).users() == {}
    assert run("remove", "sam") == 1


async def test_the_login_page_says_how_to_add_the_first_user(rig: Rig, tmp_path: Path) -> None:
    settings = HmiSettings(users=UserFile(tmp_path / "none-yet.json"))
    async with serving_hmi(rig, settings), browser(rig) as client:
        page = await client.get("/hmi/login")
        assert "edge-agent user add NAME --role operator" in page.text
        settings.users.add("anna", Role.OPERATOR, PASSWORDS["anna"])
        assert 'id="no-users"' not in (await client.get("/hmi/login")).text


def test_wrong_passwords_lock_the_name_for_a_while() -> None:
    now = [1000.0]
    guard = LoginGuard(max_failures=3, window_s=60, lock_s=120, clock=lambda: now[0])
    assert not guard.failed("anna") and not guard.failed("ANNA")
    now[0] += 61  # the first two fell out of the window
    assert not guard.failed("anna") and not guard.failed("anna")
    assert guard.locked_for("anna") == 0
    assert guard.failed("Anna")  # the third within a minute locks, whatever the case typed
    assert guard.locked_for("anna") == 120 and guard.locked_for("sam") == 0
    now[0] += 119
    assert guard.locked_for("anna") == pytest.approx(1)
    now[0] += 1
    assert guard.locked_for("anna") == 0


async def test_a_locked_name_is_refused_even_with_its_password(
    rig: Rig, settings: HmiSettings
) -> None:
    async with serving_hmi(rig, settings), browser(rig) as client:
        for _ in range(5):
            token = csrf_of(await client.get("/hmi/login"))
            answer = await client.post(
                "/hmi/login", data={"name": "anna", "password": "guess-guess", "csrf": token}
            )
        assert "anna is locked for 5 min" in _error(answer)
        token = csrf_of(await client.get("/hmi/login"))
        answer = await client.post(
            "/hmi/login", data={"name": "anna", "password": PASSWORDS["anna"], "csrf": token}
        )
        assert "too many wrong passwords" in _error(answer)
        assert (await client.get("/hmi/line")).status_code == 303
        await login(client, "sam")  # other names are not locked
    refused = [r for r in audit.rows(rig.conn) if r.action == "login" and r.outcome == "refused"]
    assert len(refused) == 6 and "too many wrong passwords" in refused[-1].detail["detail"]
