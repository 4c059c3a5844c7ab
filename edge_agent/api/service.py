"""The API as the agent runs it, from the ``[api]`` config section."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import SecretStr

from edge_agent.api.app import create_app
from edge_agent.api.auth import MIN_TOKEN_LENGTH, BearerTokens
from edge_agent.api.deps import ApiServices
from edge_agent.api.server import ApiServer, Tls
from edge_agent.config.models import AgentConfig, ApiSection, SecretRef
from edge_agent.errors import ConfigError
from edge_agent.hmi.settings import HmiSettings, hmi_settings
from edge_agent.line.stats import LineStats
from edge_agent.monitoring.sources import MonitoringSources
from edge_agent.outbox.store import ForwarderStatus


def api_server(
    section: ApiSection,
    services: ApiServices,
    *,
    monitoring: MonitoringSources | None = None,
    hmi: HmiSettings | None = None,
) -> ApiServer:
    """The server to enter (``async with``); secrets are resolved here, at start.
    ``monitoring``: the live objects /metrics and /health read (see MonitoringSources);
    ``hmi``: the operator screen (``edge_agent.hmi.settings.hmi_settings(config)``)."""
    app = create_app(
        services,
        [bearer_tokens(section)],
        monitoring=monitoring,
        metrics_public=section.metrics_public,
        hmi=hmi,
    )
    return ApiServer(app, host=section.host, port=section.port, tls=_tls(section))


def agent_api_server(
    model: AgentConfig,
    services: ApiServices,
    *,
    stats: Callable[[], LineStats | None],
    outbox: Callable[[], Sequence[ForwarderStatus]],
) -> ApiServer:
    """The daemon's server: the REST API, /metrics and /health over the daemon's live objects
    (its ``LineStats`` and ``OutboxStore.status``), and the operator screen when the config has
    ``[hmi]``."""
    assert model.api is not None
    monitoring = MonitoringSources.of_agent(
        model,
        services.commands.conn,
        services.line,
        services.alarms,
        stats=stats,
        outbox=outbox,
    )
    return api_server(model.api, services, monitoring=monitoring, hmi=hmi_settings(model))


def bearer_tokens(section: ApiSection) -> BearerTokens:
    tokens: dict[str, SecretStr] = {}
    roles = {entry.name: entry.role for entry in section.tokens}
    for index, entry in enumerate(section.tokens):
        key = f"api.tokens[{index}].token"
        secret = _resolve(entry.token, key)
        if len(secret.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"the token of {entry.name!r} is shorter than {MIN_TOKEN_LENGTH} characters; "
                "make a long random one (e.g. `openssl rand -hex 24`)",
                key=key,
            )
        tokens[entry.name] = secret
    return BearerTokens(tokens, roles=roles)


def _tls(section: ApiSection) -> Tls | None:
    if section.tls_cert is None or section.tls_key is None:
        return None
    password = section.tls_key_password
    return Tls(
        section.tls_cert,
        section.tls_key,
        None if password is None else _resolve(password, "api.tls_key_password").get_secret_value(),
    )


def _resolve(ref: SecretRef, key: str) -> SecretStr:
    return SecretStr(ref.resolve_for(key))
