"""The operator screen: pages served by the agent's own API server under /hmi (no CDN, no
build step; the templates, styles and one small script ship in this package).

Its names load on first use: every `edge-agent` command imports ``edge_agent.hmi.commands``
to build its parser, and the web stack (FastAPI, Jinja2) would otherwise add about 35 MB to
each of them (``outbox export`` included)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.hmi.settings import HmiSettings
    from edge_agent.hmi.web import install

__all__ = ["HmiSettings", "install"]
_HOMES = {"HmiSettings": "edge_agent.hmi.settings", "install": "edge_agent.hmi.web"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
