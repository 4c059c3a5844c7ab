"""Config handling every driver shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from edge_agent.config.loader import validate_table

C = TypeVar("C", bound=BaseModel)


def validated(model: type[C], name: str, config: C | Mapping[str, Any]) -> C:
    """``config`` as ``model``: a driver accepts its validated model or a plain table (tests,
    integrators), checked as the config loader checks it: strict, and with errors that never show
    a secret's value."""
    if isinstance(config, model):
        return config
    return validate_table(model, cast(Mapping[str, Any], config), key=name)
