"""structlog set-up: readable on a terminal, JSON lines otherwise (service mode).

Every line carries an ISO 8601 timestamp with the local UTC offset (``2027-03-01T14:02:03.123456
+01:00``): log lines are read beside event times, PLC logs and other hosts' logs, and a time
without its offset is ambiguous at every daylight-saving change.

Under systemd the journal keeps and rotates the log (stderr). Outside systemd a log file
(``[agent] log_file``, the demo's ``agent.log``) is rotated by size by the agent itself
(``RotatingFileHandler``): a line PC left running for months needs no logrotate set-up to keep its
disk, and no line is lost or split at a rotation (one process writes the file; the rotation
happens between two lines).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

from edge_agent.redaction import REDACTED, is_secret_key, redact_url

if TYPE_CHECKING:
    from edge_agent.config.models import AgentSection

Format = Literal["auto", "json", "console"]
_STRUCTLOG = "edge_agent.structlog"  # the stdlib logger structlog writes through to a file
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_BACKUPS = 5


def configure(
    fmt: Format = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    file: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    """Log to ``stream`` (default stderr), or to ``file``, rotated at ``max_bytes`` with
    ``backups`` older files kept (``file.1`` the newest of them)."""
    handler = _rotating(file, max_bytes, backups) if file is not None else None
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and (handler is not None or not stream.isatty()))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    # Libraries (pymodbus, asyncio) log through the standard library: same place, warnings up.
    plain = "%(levelname)s %(name)s: %(message)s"
    target = logging.getLogger(_STRUCTLOG)
    for old in target.handlers[:]:
        target.removeHandler(old)  # closed by basicConfig(force=True) below: it is root's too
    if handler is None:
        logging.basicConfig(stream=stream, level=logging.WARNING, format=plain, force=True)
        factory: Any = structlog.WriteLoggerFactory(file=stream)
    else:
        handler.setFormatter(_LineFormatter(plain))
        logging.basicConfig(handlers=[handler], level=logging.WARNING, force=True)
        target.addHandler(handler)
        target.setLevel(logging.DEBUG)  # structlog filters by level itself
        target.propagate = False
        factory = _file_logger
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_timestamp,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def configure_for(agent: AgentSection, stream: TextIO | None = None) -> None:
    """The logging an ``[agent]`` config section asks for (``run`` and the other commands)."""
    configure(
        agent.log_format,
        agent.log_level,
        stream,
        file=agent.log_file,
        max_bytes=int(agent.log_file_max_mb * 1024 * 1024),
        backups=agent.log_file_backups,
    )


def add_timestamp(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Local time with its UTC offset, ISO 8601 (``datetime.isoformat``)."""
    event_dict["timestamp"] = datetime.now().astimezone().isoformat(timespec="microseconds")
    return event_dict


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


def _rotating(file: Path, max_bytes: int, backups: int) -> logging.Handler:
    file.parent.mkdir(parents=True, exist_ok=True)
    return logging.handlers.RotatingFileHandler(
        file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )


class _FileLogger:
    """Hands structlog's rendered lines to the file's handler (through a stdlib logger, which
    serialises writers and rotations)."""

    def __init__(self) -> None:
        self._target = logging.getLogger(_STRUCTLOG)

    def msg(self, message: str) -> None:
        self._target.info(message)  # the level is in the line already; structlog filtered it

    log = debug = info = warning = warn = error = err = critical = fatal = exception = msg


def _file_logger(*args: object) -> _FileLogger:
    return _FileLogger()


class _LineFormatter(logging.Formatter):
    """structlog's lines are rendered already; library records get the plain format."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == _STRUCTLOG:
            return record.getMessage()
        return super().format(record)
