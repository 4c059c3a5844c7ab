"""What the operator screen needs besides the API's services."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.hmi.users import UserFile

if TYPE_CHECKING:
    from edge_agent.config.models import AgentConfig


@dataclass(frozen=True)
class HmiSettings:
    users: UserFile
    session_minutes: float = 480.0  # a shift; a login ends after this long
    archive_dir: Path | None = None  # the failed-frame archive ([vision] archive_dir)
    line_name: str = ""  # shown in the header ([line] id)
    live_interval_s: float = 0.25  # how often the live stream looks at the line


def hmi_settings(config: AgentConfig) -> HmiSettings | None:
    """The screen's settings from the config; None when it has no ``[hmi]`` section."""
    if config.hmi is None:
        return None
    return HmiSettings(
        users=UserFile(config.hmi.users_file),
        session_minutes=float(config.hmi.session_minutes),
        archive_dir=config.vision.archive_dir,
        line_name=config.line.id,
    )
