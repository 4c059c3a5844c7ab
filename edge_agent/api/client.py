"""A small client of the agent's REST API, for the CLI (and scripts).

Every failure is an ``EdgeAgentError`` with a sentence for people: the agent not running, a
refused command with the agent's own message and problems, a token the agent does not know.
"""

from __future__ import annotations

import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from edge_agent.config.models import ApiSection
from edge_agent.errors import ConfigError, EdgeAgentError

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_CONFIG = Path("/etc/edge-agent/line.toml")


class ApiUnreachable(EdgeAgentError):
    """Nothing answers at the API address."""


class ApiError(EdgeAgentError):
    """The agent answered with an error; ``status``, ``code`` and ``problems`` say which."""

    def __init__(self, status: int, code: str, message: str, problems: list[dict[str, Any]]):
        self.status = status
        self.code = code
        self.problems = problems
        if code == "order_invalid" and problems:  # one line per problem, each with its key
            message = "\n".join(f"{p.get('key')}: {p.get('message')}" for p in problems)
        super().__init__(message)


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str
    verify: ssl.SSLContext | bool = True


class ApiClient:
    def __init__(self, endpoint: Endpoint, *, timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint
        self._http = httpx.Client(
            base_url=endpoint.url,
            headers={"Authorization": f"Bearer {endpoint.token}"},
            verify=endpoint.verify,
            timeout=timeout_s,
            trust_env=False,  # the agent is on this machine or the line network: no proxy
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params).json()

    def get_text(self, path: str) -> str:
        return self._call("GET", path).text

    def post(self, path: str, body: Any = None) -> Any:
        return self._call("POST", path, json=body).json()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.endpoint.url
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc):
                raise ApiUnreachable(
                    f"the agent at {url} refused the TLS handshake or its certificate is not "
                    f"trusted ({exc}); check [api] tls_cert or the --api address"
                ) from None
            raise ApiUnreachable(f"no agent answers at {url}: is edge-agent running?") from None
        except httpx.TimeoutException:
            raise ApiUnreachable(f"the agent at {url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"talking to the agent at {url} failed: {exc}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code == 401:
        message = "the agent refused the token: check --token-file or the [api] tokens"
    else:
        message = str(body.get("message") or f"HTTP {response.status_code}")
    found = body.get("problems")
    problems = [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []
    return ApiError(response.status_code, str(body.get("error", "http_error")), message, problems)


# --- where the agent is ------------------------------------------------------------------------


def endpoint(
    *,
    config: Path | None,
    api: str | None,
    token_file: Path | None,
    token_name: str | None = None,
    cacert: Path | None = None,
) -> Endpoint:
    """The API address and token: ``--api`` / ``--token-file`` win over the config's [api]."""
    if config is None and api is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    section = _api_section(config) if config is not None else None
    if api is not None:
        url = api.rstrip("/")
    elif section is not None:
        url = _url(section)
    else:
        url = DEFAULT_URL
    token = _token(section, config, token_file, token_name)
    return Endpoint(url, token, _verify(section, cacert, url))


def _api_section(path: Path) -> ApiSection:
    """Only the [api] section: the rest of the line config is the daemon's business, and a
    mistake elsewhere in it must not keep an operator from holding the line."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror})", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from exc
    if "api" not in data:
        raise ConfigError(
            "no [api] section: the agent serves no API the CLI could talk to; add one "
            "(README 'REST API') or give --api and --token-file",
            file=str(path),
        )
    try:
        return ApiSection.model_validate(data["api"])
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(["api", *(str(p) for p in first["loc"])])
        raise ConfigError(
            first["msg"].removeprefix("Value error, ") + "; `edge-agent check-config` shows all",
            file=str(path),
            key=key,
        ) from None


def _url(section: ApiSection) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(section.host, section.host)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if section.tls_cert else "http"
    return f"{scheme}://{shown}:{section.port}"


def _token(
    section: ApiSection | None, config: Path | None, token_file: Path | None, name: str | None
) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token ({exc.strerror})", file=str(token_file)
            ) from exc
        if not token:
            raise ConfigError("the token file is empty", file=str(token_file))
        return token
    if section is None:
        raise ConfigError(
            "no token: give --config with the agent's config file (its [api] section), or "
            "--token-file FILE"
        )
    entries = [t for t in section.tokens if name is None or t.name == name]
    if not entries:
        known = ", ".join(t.name for t in section.tokens)
        raise ConfigError(f"no token named {name!r} (there are: {known})", file=str(config))
    entry = entries[0]
    try:
        return entry.token.resolve().get_secret_value()
    except ConfigError as exc:
        raise ConfigError(
            f"cannot read the token of {entry.name!r} here ({exc}); give --token-file FILE",
            file=str(config),
            key="api.tokens",
        ) from None


def _verify(section: ApiSection | None, cacert: Path | None, url: str) -> ssl.SSLContext | bool:
    if not url.startswith("https://"):
        return True
    trusted = cacert or (section.tls_cert if section is not None else None)
    context = ssl.create_default_context()
    if trusted is not None:
        try:
            context.load_verify_locations(cafile=str(trusted))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the certificate to trust ({exc})", file=str(trusted)
            ) from exc
        # the agent's own (often self-signed) certificate is trusted as it is
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
