"""Serving the API with uvicorn inside the agent's event loop.

``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers (``capture_signals``) and
re-raises the signal when it stops; inside the agent that would take the signals from the
agent's own clean-stop path. ``_EmbeddedServer`` switches that off, and the agent stops the
server by leaving the ``ApiServer`` context. The listening socket is bound here, so a busy port
is a clear error at start instead of uvicorn's ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
import uvicorn

from edge_agent.errors import ConfigError

log = structlog.get_logger("edge_agent.api")

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    key_password: str | None = None


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The agent owns SIGTERM/SIGINT; the server is stopped by ApiServer.__aexit__.
        yield


class ApiServer:
    """``async with ApiServer(app, host=..., port=...) as api:`` serves until the block ends."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8470,
        tls: Tls | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        self.shutdown_timeout_s = shutdown_timeout_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        assert self._sock is not None, "the server is not started"
        host, port = self._sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    async def __aenter__(self) -> ApiServer:
        self._sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the agent configures logging
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=False,  # nothing sits in front of the agent: the peer is the client
            timeout_graceful_shutdown=math.ceil(self.shutdown_timeout_s),
            ssl_certfile=str(self.tls.cert) if self.tls else None,
            ssl_keyfile=str(self.tls.key) if self.tls else None,
            ssl_keyfile_password=self.tls.key_password if self.tls else None,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            self._sock.close()
            raise ConfigError(
                f"cannot load the TLS certificate or key ({exc}); check tls_cert, tls_key and "
                "tls_key_password",
                key="api.tls_cert",
            ) from exc
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="api")
        await self._started()
        log.info("api_listening", url=self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._task is not None
        server, task = self._server, self._task
        stopping = getattr(getattr(self.app, "state", None), "stopping", None)
        if isinstance(stopping, asyncio.Event):
            stopping.set()  # long-lived answers (event streams) end now
        server.should_exit = True  # stop accepting, let answers in progress finish
        try:
            await asyncio.wait({task}, timeout=self.shutdown_timeout_s + 2.0)
        finally:
            if not task.done():  # over time, or we were cancelled ourselves: stop it now
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._sock is not None:
                self._sock.close()
        if not task.cancelled() and task.exception() is not None:
            log.error("api_server_failed", error=str(task.exception()), exc_info=task.exception())
        log.info("api_stopped")

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            return socket.create_server((self.host, self.port), family=family, reuse_port=False)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); another "
                "program (or another edge-agent) uses the port, or the address is not this "
                "machine's: change [api] host/port",
                key="api.port",
            ) from exc

    async def _started(self) -> None:
        assert self._server is not None and self._task is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises what stopped it
                    raise ConfigError("the API server stopped while starting", key="api")
                await asyncio.sleep(0.01)
