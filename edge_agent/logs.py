"""structlog set-up: readable on a terminal, JSON lines otherwise (service mode)."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

from edge_agent.redaction import REDACTED, is_secret_key, redact_url


def configure(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    # Libraries (pymodbus, asyncio) log through the standard library: same stream, warnings up.
    logging.basicConfig(
        stream=stream,
        level=logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def redact_secrets(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """No log line shows a secret: values of secret-named fields are masked, and so are URL
    passwords in every text (exception tracebacks included)."""
    for key, value in event_dict.items():
        if key != "event" and is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_url(value)
    return event_dict
