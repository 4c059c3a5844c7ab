"""Configuration: TOML files validated by pydantic, errors that say file, line, key and fix."""

from edge_agent.config.loader import DeviceSpec, LoadedConfig, load_config, parse_config
from edge_agent.config.models import AgentConfig

__all__ = ["AgentConfig", "DeviceSpec", "LoadedConfig", "load_config", "parse_config"]
