"""The operator screen: pages served by the agent's own API server under /hmi (no CDN, no
build step; the templates, styles and one small script ship in this package)."""

from __future__ import annotations

from edge_agent.hmi.settings import HmiSettings
from edge_agent.hmi.web import install

__all__ = ["HmiSettings", "install"]
