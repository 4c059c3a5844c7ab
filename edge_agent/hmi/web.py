"""The operator screen's routes under /hmi, in the API's own FastAPI app.

Pages are server-rendered (Jinja2, autoescaped); actions are plain HTML form posts answered
with a redirect back (303), so every button works without script; the overview's live figures
come from one small script reading a server-sent event stream. Every action goes through the
command path (or the alarm board, or the aggregation hierarchy) with the logged-in user as the
actor, source ``hmi`` and the user's role: the command path refuses the order commands the role
may not give (abort, close with exceptions), this screen the rework of cases and pallets to an
operator (the hierarchy has no roles yet); every refusal is audited.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData, UploadFile
from starlette.responses import StreamingResponse

from edge_agent.api.deps import ApiServices, services
from edge_agent.api.routes.aggregation import PALLET_CLOSE_WAIT_S, hierarchy_of
from edge_agent.db import write
from edge_agent.errors import EdgeAgentError, OrderInvalid
from edge_agent.hmi import views
from edge_agent.hmi.lockout import LoginGuard
from edge_agent.hmi.sessions import COOKIE, Session, SessionCodec
from edge_agent.hmi.settings import HmiSettings
from edge_agent.orders import audit
from edge_agent.orders.commands import SUPERVISOR_COMMANDS
from edge_agent.orders.lifecycle import NEEDS_REASON, allowed_commands
from edge_agent.orders.model import TERMINAL_STATES, OrderCommand

log = structlog.get_logger("edge_agent.hmi")

HERE = Path(__file__).parent
MAX_ORDER_FILE_BYTES = 16 * 1024 * 1024
STREAM_MAX_S = 300.0  # a stream ends after this long; the browser reconnects at once
KEEPALIVE_S = 15.0
MAX_CONCURRENT_LOGINS = 2
LOOP_SHARE_FACTOR = 10.0  # the live overview takes at most 1/10 of the event loop's time
ORDERS_SHOWN = 100
AUDIT_SHOWN = 100
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'self'; form-action 'self'"
)

router = APIRouter(prefix="/hmi", include_in_schema=False)


class LoginRequired(Exception):
    """No session, or an expired one, or its user is gone: to the login page."""


class CsrfRefused(Exception):
    """A form post without its session's CSRF token."""


@dataclass
class Hmi:
    settings: HmiSettings
    codec: SessionCodec
    frames: views.FrameIndex
    templates: Jinja2Templates
    stopping: asyncio.Event  # set when the server stops: the live streams end at once
    logins: asyncio.Semaphore  # password checks at a time
    lockout: LoginGuard
    _latest: tuple[float, str] = (0.0, "")  # (due again at, overview)

    def overview_json(self, services: ApiServices) -> str:
        """The overview for the live streams, computed at most once per interval whatever the
        number of screens watching. It reads the state database on the line's event loop, so
        it takes at most a tenth of the loop's time: on a long order whose counts take longer
        to read, the figures refresh less often."""
        now = time.monotonic()
        due, text = self._latest
        if not text or now >= due:
            text = json.dumps(views.overview(services), separators=(",", ":"))
            took = time.monotonic() - now
            pause = max(self.settings.live_interval_s * 0.9, LOOP_SHARE_FACTOR * took)
            self._latest = (now + pause, text)
        return text


@dataclass(frozen=True)
class HmiUser:
    name: str
    role: audit.Role
    session: Session

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(self.name, "hmi", str(self.role))

    @property
    def supervisor(self) -> bool:
        return self.role == audit.Role.SUPERVISOR


def install(app: FastAPI, settings: HmiSettings) -> None:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.hmi = Hmi(
        settings,
        SessionCodec(settings.session_minutes * 60.0),
        views.FrameIndex(settings.archive_dir),
        templates,
        app.state.stopping,
        asyncio.Semaphore(MAX_CONCURRENT_LOGINS),
        LoginGuard(),
    )
    app.include_router(router)
    app.mount("/hmi/static", StaticFiles(directory=HERE / "static"), name="hmi-static")
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(CsrfRefused, _csrf_refused)


# --- dependencies -------------------------------------------------------------------------------


def _hmi(request: Request) -> Hmi:
    found: Hmi = request.app.state.hmi
    return found


async def _session(request: Request) -> Session:
    hmi = _hmi(request)
    session = hmi.codec.decode(request.cookies.get(COOKIE))
    if session is None:
        session = hmi.codec.new(None)
        request.state.new_session = session
    return session


CurrentSession = Annotated[Session, Depends(_session)]


async def _user(request: Request, session: CurrentSession) -> HmiUser:
    if session.user is None:
        raise LoginRequired
    user = _hmi(request).settings.users.get(session.user)
    if user is None:  # removed since the login
        raise LoginRequired
    return HmiUser(user.name, user.role, session)


async def _services(request: Request) -> ApiServices:
    return services(request)


User = Annotated[HmiUser, Depends(_user)]
Services = Annotated[ApiServices, Depends(_services)]


async def _form(request: Request, session: CurrentSession) -> AsyncIterator[FormData]:
    form = await request.form(max_files=1, max_fields=20)
    try:
        token = form.get("csrf")
        if not _hmi(request).codec.csrf_ok(session, token if isinstance(token, str) else None):
            raise CsrfRefused
        yield form
    finally:
        await form.close()  # an uploaded file's spool


Form = Annotated[FormData, Depends(_form)]


# --- answers ------------------------------------------------------------------------------------


def _page(
    request: Request,
    template: str,
    session: Session,
    user: HmiUser | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    hmi = _hmi(request)
    answer = hmi.templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "csrf": hmi.codec.csrf_token(session),
            "line_name": hmi.settings.line_name,
            "ok": request.query_params.get("ok", "")[:500],
            "error": request.query_params.get("error", "")[:2000],
            **context,
        },
        status_code=status,
    )
    _secure(answer)
    new = getattr(request.state, "new_session", None)
    if new is not None:
        _set_cookie(request, answer, new)
    return answer


def _secure(answer: Response) -> None:
    answer.headers["Content-Security-Policy"] = _CSP
    answer.headers["X-Frame-Options"] = "SAMEORIGIN"
    answer.headers["X-Content-Type-Options"] = "nosniff"
    answer.headers["Referrer-Policy"] = "same-origin"
    answer.headers["Cache-Control"] = "no-store"


def _set_cookie(request: Request, answer: Response, session: Session) -> None:
    codec = _hmi(request).codec
    answer.set_cookie(
        COOKIE,
        codec.encode(session),
        max_age=max(1, int(session.expires_at - _now())),
        path="/hmi",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _back(path: str, *, ok: str = "", error: str = "") -> RedirectResponse:
    query = urlencode({k: v for k, v in (("ok", ok), ("error", error)) if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


async def _to_login(request: Request, exc: Exception) -> Response:
    if request.method == "GET" and not request.url.path.endswith("/events"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/hmi/login?{urlencode({'next': target})}", status_code=303)
    if request.url.path.endswith("/events"):
        return Response("log in first", status_code=401, media_type="text/plain")
    return _back("/hmi/login", error="your session has ended: log in again")


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    answer = HTMLResponse(
        "<!doctype html><title>Refused</title><p>This form is out of date (or did not come from "
        "this screen). <a href='/hmi/line'>Back to the line</a>, then try again.</p>",
        status_code=403,
    )
    _secure(answer)
    return answer


def _now() -> float:
    return time.time()


# --- login --------------------------------------------------------------------------------------


@router.get("")
async def root() -> RedirectResponse:
    return RedirectResponse("/hmi/line", status_code=303)


@router.get("/login")
async def login_page(request: Request, session: CurrentSession) -> HTMLResponse:
    return _page(
        request,
        "login.html",
        session,
        None,
        next=_safe_next(request.query_params.get("next")),
        no_users=not _hmi(request).settings.users.users(),
    )


@router.post("/login")
async def login(
    request: Request, session: CurrentSession, form: Form, services: Services
) -> Response:
    hmi = _hmi(request)
    name, password = str(form.get("name", "")).strip()[:40], str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    conn = services.commands.conn
    locked = hmi.lockout.locked_for(name)
    if locked:
        why = f"too many wrong passwords: {name} may try again in {locked / 60:.0f} min"
        return _refused_login(conn, name, why, target)
    # argon2 takes tens of milliseconds of CPU and 64 MiB: not on the loop that runs the line,
    # and never many at once (a flood of logins must not starve the line PC)
    async with hmi.logins:
        user = await asyncio.to_thread(hmi.settings.users.verify, name, password)
    if user is None:
        why = "wrong name or password"
        if hmi.lockout.failed(name):
            why += f"; {name} is locked for {hmi.lockout.lock_s / 60:.0f} min"
        return _refused_login(conn, name, why, target)
    hmi.lockout.succeeded(name)
    with write(conn):
        audit.append(conn, audit.Actor(user.name, "hmi", str(user.role)), "login")
    log.info("hmi_login", user=user.name, role=str(user.role))
    answer = RedirectResponse(target, status_code=303)
    _set_cookie(request, answer, hmi.codec.new(user.name))  # a new nonce: no fixation
    return answer


def _refused_login(conn: Any, name: str, why: str, target: str) -> RedirectResponse:
    with write(conn):
        audit.append(
            conn,
            audit.Actor(name or "-", "hmi"),
            "login",
            outcome="refused",
            detail={"detail": why},
        )
    log.warning("hmi_login_refused", user=name, detail=why)
    return RedirectResponse(f"/hmi/login?{urlencode({'error': why, 'next': target})}", 303)


@router.post("/logout")
async def logout(request: Request, form: Form, session: CurrentSession) -> Response:
    answer = _back("/hmi/login", ok="logged out")
    _set_cookie(request, answer, _hmi(request).codec.new(None))
    return answer


def _safe_next(target: str | None) -> str:
    """Only a path of this screen (never another site) to go to after the login."""
    if target and target.startswith("/hmi/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/hmi/line"


# --- line overview ------------------------------------------------------------------------------


@router.get("/line")
async def line_page(request: Request, user: User, services: Services) -> HTMLResponse:
    data = views.overview(services)
    return _page(request, "line.html", user.session, user, data=data, data_json=json.dumps(data))


@router.get("/line/events")
async def line_events(request: Request, user: User, services: Services) -> StreamingResponse:
    hmi = _hmi(request)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        last, quiet, started = "", 0.0, asyncio.get_running_loop().time()
        loop = asyncio.get_running_loop()
        while not hmi.stopping.is_set() and loop.time() - started < STREAM_MAX_S:
            if hmi.settings.users.get(user.name) is None or not _session_alive(request):
                return
            text = hmi.overview_json(services)
            if text != last:
                last, quiet = text, 0.0
                yield f"data: {text}\n\n"
            elif quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": keepalive\n\n"
            try:
                await asyncio.wait_for(hmi.stopping.wait(), hmi.settings.live_interval_s)
            except TimeoutError:
                quiet += hmi.settings.live_interval_s

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _session_alive(request: Request) -> bool:
    return _hmi(request).codec.decode(request.cookies.get(COOKIE)) is not None


@router.post("/alarms/{alarm_id}/acknowledge")
async def acknowledge(
    request: Request, alarm_id: int, user: User, form: Form, services: Services
) -> Response:
    back = _return_to(form)
    board = services.alarms
    alarm = board.get(alarm_id)
    if alarm is None:
        return _back(back, error=f"no alarm {alarm_id}")
    if alarm.acknowledged_at is None:
        conn = services.commands.conn
        with write(conn):  # the acknowledgement and its audit record commit together
            board.acknowledge(alarm_id, str(user.actor))
            audit.append(
                conn,
                user.actor,
                "acknowledge",
                order_id=alarm.order_id,
                detail={"alarm": alarm_id, "kind": alarm.kind},
            )
    return _back(back, ok=f"alarm {alarm_id} acknowledged")


def _return_to(form: FormData) -> str:
    target = str(form.get("back", ""))
    return _safe_next(target).partition("?")[0]


# --- orders -------------------------------------------------------------------------------------


@router.get("/orders")
async def orders_page(request: Request, user: User, services: Services) -> HTMLResponse:
    store = services.commands.store
    ids = services.commands.conn.execute(
        "SELECT id FROM orders ORDER BY queue DESC LIMIT ?", (ORDERS_SHOWN,)
    ).fetchall()
    records = [store.get(order_id) for (order_id,) in ids]
    open_ = [r for r in records if r.state not in TERMINAL_STATES]
    ended = [r for r in records if r.state in TERMINAL_STATES]
    return _page(
        request,
        "orders.html",
        user.session,
        user,
        queue=sorted(open_, key=lambda r: r.queue),
        ended=ended,
        actions={r.id: _actions(r.state) for r in records},
    )


@router.post("/orders")
async def submit(request: Request, user: User, form: Form, services: Services) -> Response:
    upload = form.get("order")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _back("/hmi/orders", error="choose an order file (.json or .toml) first")
    body = await upload.read(MAX_ORDER_FILE_BYTES + 1)
    if len(body) > MAX_ORDER_FILE_BYTES:
        return _back("/hmi/orders", error="the file is too large for the screen: use the inbox")
    try:
        data = _order_data(upload.filename, body)
        record = await services.commands.submit(data, source="hmi", actor=user.actor)
    except OrderInvalid as exc:
        problems = "; ".join(f"{key}: {message}" for key, message in exc.problems)
        return _back("/hmi/orders", error=f"{upload.filename} refused: {problems}")
    except EdgeAgentError as exc:  # every agent error says what and what to do; no secret
        return _back("/hmi/orders", error=f"{upload.filename} refused: {exc}")
    return _back("/hmi/orders", ok=f"order {record.id} stored ({record.state})")


def _order_data(name: str, body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        data = tomllib.loads(text) if name.lower().endswith(".toml") else json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise OrderInvalid(None, "hmi", [("file", f"cannot be read: {exc}")]) from None
    if not isinstance(data, dict):
        raise OrderInvalid(None, "hmi", [("file", "an order is an object")])
    return data


@router.get("/orders/{order_id}")
async def order_page(
    request: Request, order_id: str, user: User, services: Services
) -> HTMLResponse:
    record = services.commands.store.find(order_id)
    if record is None:
        return _page(request, "missing.html", user.session, user, 404, what=f"order {order_id}")
    conn = services.commands.conn
    rows = audit.rows(conn, order_id=order_id, limit=10_000)[-AUDIT_SHOWN:]
    return _page(
        request,
        "order.html",
        user.session,
        user,
        order=record,
        actions=_actions(record.state),
        holds=services.commands.store.holds(order_id),
        audit_rows=list(reversed(rows)),
        report=record.state in TERMINAL_STATES and services.reports.load(order_id) is not None,
        clock=views.clock,
        hold_detail=views.hold_detail,
    )


def _actions(state: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": str(command),
            "reason_required": command in NEEDS_REASON,
            "supervisor": command in SUPERVISOR_COMMANDS,
        }
        for command in allowed_commands(state)
    ]


@router.post("/orders/{order_id}/commands/{command}")
async def order_command(
    request: Request, order_id: str, command: str, user: User, form: Form, services: Services
) -> Response:
    back = _return_to(form) if form.get("back") else f"/hmi/orders/{order_id}"
    try:
        which = OrderCommand(command)
    except ValueError:
        return _back(back, error=f"no command {command!r}")
    reason = str(form.get("reason", "")).strip()[:500] or None
    try:
        done = await services.commands.command(order_id, which, user.actor, reason=reason)
    except EdgeAgentError as exc:  # refused, or the line could not act: said on the screen
        return _back(back, error=str(exc))
    return _back(back, ok=f"{which}: order {done.id} is {done.state}")


@router.get("/orders/{order_id}/report")
async def report_page(
    request: Request, order_id: str, user: User, services: Services
) -> HTMLResponse:
    if services.reports.load(order_id) is None:
        return _page(
            request,
            "missing.html",
            user.session,
            user,
            404,
            what=f"a close report of order {order_id} (it is made when the order ends)",
        )
    return _page(request, "report.html", user.session, user, order_id=order_id)


@router.get("/orders/{order_id}/report.html")
async def report_html(order_id: str, user: User, services: Services) -> HTMLResponse:
    page = services.reports.html(order_id)
    if page is None:
        return HTMLResponse("no close report", status_code=404)
    answer = HTMLResponse(page)
    _secure(answer)
    return answer


# --- rejects, frames, aggregation ---------------------------------------------------------------


@router.get("/rejects")
async def rejects_page(request: Request, user: User, services: Services) -> HTMLResponse:
    hmi = _hmi(request)
    order_id = request.query_params.get("order") or None
    rejects = views.recent_rejects(services, hmi.frames, order_id)
    return _page(
        request,
        "rejects.html",
        user.session,
        user,
        rejects=rejects,
        order_id=order_id,
        archive=hmi.settings.archive_dir is not None,
    )


@router.get("/frames/{name}")
async def frame(request: Request, name: str, user: User) -> Response:
    path = _hmi(request).frames.image_path(name)
    if path is None:
        return Response("no such frame", status_code=404, media_type="text/plain")
    return FileResponse(
        path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/aggregation")
async def aggregation_page(request: Request, user: User, services: Services) -> HTMLResponse:
    code = request.query_params.get("code", "").strip()[:200]
    found: dict[str, Any] | None = None
    error = ""
    if code:
        try:
            found = views.container_view(hierarchy_of(request), code)
        except EdgeAgentError as exc:
            error = str(exc)
    return _page(
        request,
        "aggregation.html",
        user.session,
        user,
        code=code,
        box=found,
        lookup_error=error,
        line_end=views.line_end_view(getattr(services, "stations", None)),
    )


# The line end's station actions: action -> (station, audit action, needs a supervisor). Closing
# the pallet being built ends it short of the plan's count: a supervisor's decision.
LINE_END = {
    "last-case": ("case", "station_last_case", False),
    "last-bundle": ("bundle", "station_last_bundle", False),
    "close-pallet": ("pallet", "station_close_pallet", True),
    "release": ("pallet", "station_release_pallet", False),
}


@router.post("/aggregation/stations/{action}")
async def line_end_action(
    request: Request, action: str, user: User, form: Form, services: Services
) -> Response:
    back = "/hmi/aggregation?line_end=1"
    if action not in LINE_END:
        return RedirectResponse(back, status_code=303)
    name, audited, supervisor = LINE_END[action]
    runner = getattr(services, "stations", None)
    station = getattr(runner, f"{name}_station", None) if runner is not None else None
    conn = services.commands.conn
    detail: dict[str, Any] = {}
    try:
        if supervisor and not user.supervisor:
            raise EdgeAgentError(f"{action.replace('-', ' ')} needs a supervisor; {user.name} is "
                                 "an operator")  # fmt: skip
        if station is None:
            raise EdgeAgentError(
                f"the {name} station is not running (no order for it, or its devices are down: "
                "see the alarms)"
            )
        ok = await _line_end(request, action, station, form, detail)
    except (ValueError, EdgeAgentError) as exc:
        with write(conn):
            audit.append(conn, user.actor, audited, outcome="refused",
                         order_id=getattr(station, "order_id", None),
                         detail={**detail, "message": str(exc)})  # fmt: skip
        return _back_to(back, error=str(exc))
    with write(conn):
        audit.append(conn, user.actor, audited, order_id=station.order_id, detail=detail)
    return _back_to(back, ok=ok)


async def _line_end(
    request: Request, action: str, station: Any, form: FormData, detail: dict[str, Any]
) -> str:
    """Do ``action`` on ``station``; what the screen says. ValueError/EdgeAgentError: refused."""
    if action in ("last-case", "last-bundle"):
        raw = str(form.get("count", "")).strip()
        if not raw.isdigit():
            raise ValueError(f"give the count of the last {station.level} (a whole number)")
        station.expect(int(raw))
        detail["count"] = int(raw)
        child = station.child_level
        return f"the next {station.level} the station reads holds {raw} {child}s"
    if action == "release":
        if not station.release():
            raise EdgeAgentError("the pallet station does not hold")
        return "pallet station released: it prints a label with a new SSCC"
    detail["cases"] = len(station.scanned())
    closing = asyncio.ensure_future(station.close_pallet(partial=True))
    done, _ = await asyncio.wait([asyncio.shield(closing)], timeout=PALLET_CLOSE_WAIT_S)
    if not done:
        request.app.state.closing_pallet = closing  # kept: it goes on until it is closed
        return f"still closing: {station.held or 'the pallet label is still printing'}"
    box = closing.result()
    if box is None:
        raise EdgeAgentError("no case is scanned onto the pallet")
    return f"pallet {box.identifier.hri} closed with {box.children} cases"


# Rework of a case or pallet (the supervisor's): action -> whether it needs a reason
REWORK = {
    "reopen": False,
    "close": False,
    "remove": True,
    "replace": True,
    "relabel": True,
    "disaggregate": True,
}


@router.post("/aggregation/{action}")
async def aggregation_rework(
    request: Request, action: str, user: User, form: Form, services: Services
) -> Response:
    code = str(form.get("code", "")).strip()[:200]
    back = f"/hmi/aggregation?{urlencode({'code': code})}"
    if action not in REWORK:
        return RedirectResponse(back, status_code=303)
    reason = str(form.get("reason", "")).strip()[:500]
    if not user.supervisor:
        with write(services.commands.conn):
            audit.append(
                services.commands.conn,
                user.actor,
                f"container_{action}",
                reason=reason or None,
                outcome="refused",
                detail={"parent": code, "message": "rework needs a supervisor"},
            )
        return _back_to(back, error=f"rework needs a supervisor; {user.name} is an operator")
    hierarchy, actor = hierarchy_of(request), user.actor
    child, new = str(form.get("child", "")).strip(), str(form.get("new", "")).strip()
    try:
        if action == "reopen":
            box = hierarchy.reopen(code, actor=actor)
        elif action == "close":
            box = hierarchy.close_container(code, actor=actor)
        elif action == "remove":
            box = hierarchy.unpack(code, [child], reason=reason, actor=actor)
        elif action == "replace":
            box = hierarchy.replace(code, child, new, reason=reason, actor=actor)
        elif action == "relabel":
            box = hierarchy.relabel(code, reason=reason, actor=actor)
        else:
            box = hierarchy.disaggregate(code, reason=reason, actor=actor)
    except EdgeAgentError as exc:
        return _back_to(back, error=str(exc))
    done = f"/hmi/aggregation?{urlencode({'code': box.identifier.hri})}"
    return _back_to(done, ok=f"{action}: {box.level} {box.identifier.hri} is {box.state}")


def _back_to(target: str, *, ok: str = "", error: str = "") -> RedirectResponse:
    """Back to a page that has a query of its own, with the outcome added to it."""
    extra = urlencode({k: v for k, v in (("ok", ok), ("error", error)) if v})
    return RedirectResponse(f"{target}&{extra}" if extra else target, status_code=303)
