"""The L3 site-server simulator (HTTP server, MQTT client of a broker, exchange folder)."""

from simulators.l3.server import L3Sim, L3SimConfig
from simulators.l3.site import L3Faults, L3Site

__all__ = ["L3Faults", "L3Sim", "L3SimConfig", "L3Site"]
