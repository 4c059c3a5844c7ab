"""Service hygiene, logs: JSON timestamps carry their UTC offset; a log file outside systemd is
rotated by size and keeps every line whole."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog

from edge_agent import logs
from edge_agent.config.models import AgentSection

ISO_WITH_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


@pytest.fixture
def time_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone, as the TZ variable sets it for a service."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_json_timestamps_carry_the_local_utc_offset(time_zone: None) -> None:
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    structlog.get_logger("test").info("unit_passed", order="O1", serial="S1")
    line = json.loads(stream.getvalue().splitlines()[0])
    stamp = line["timestamp"]
    assert ISO_WITH_OFFSET.fullmatch(stamp), stamp
    when = datetime.fromisoformat(stamp)
    assert when.utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))  # EST / EDT
    assert abs(when.timestamp() - time.time()) < 60  # the offset and the clock agree


def test_console_lines_carry_the_offset_too(time_zone: None) -> None:
    stream = io.StringIO()
    logs.configure("console", "info", stream=stream)
    structlog.get_logger("test").warning("clock_jump")
    assert re.search(r"T\d\d:\d\d:\d\d\.\d{6}-0[45]:00", stream.getvalue()), stream.getvalue()


def test_a_log_file_rotates_by_size_and_keeps_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "agent.log"
    logs.configure("auto", "info", file=path, max_bytes=4000, backups=2)
    log = structlog.get_logger("test")
    for n in range(300):
        log.info("unit_passed", n=n, serial=f"SERIAL{n:06d}", padding="x" * 40)
    logging.getLogger("pymodbus").warning("a library's warning")  # same file, same rotation
    files = sorted(tmp_path.joinpath("logs").iterdir())
    assert [f.name for f in files] == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(f.stat().st_size <= 4000 for f in files)
    lines = [line for f in reversed(files) for line in f.read_text().splitlines()]
    assert lines[-1] == "WARNING pymodbus: a library's warning"
    numbers = [json.loads(line)["n"] for line in lines[:-1]]  # every line is whole JSON
    assert numbers == list(range(numbers[0], 300))  # in order, nothing lost within the kept files
    assert numbers[0] > 0  # the oldest went with the rotation
    assert all(ISO_WITH_OFFSET.fullmatch(json.loads(line)["timestamp"]) for line in lines[:-1])


def test_the_agent_section_names_the_file_and_its_limits(tmp_path: Path) -> None:
    section = AgentSection(
        state_dir=tmp_path,
        log_file=tmp_path / "edge-agent.log",
        log_file_max_mb=0.002,
        log_file_backups=1,
    )
    logs.configure_for(section)
    for n in range(100):
        structlog.get_logger("test").info("tick", n=n)
    assert sorted(os.listdir(tmp_path)) == ["edge-agent.log", "edge-agent.log.1"]
    first = json.loads((tmp_path / "edge-agent.log").read_text().splitlines()[0])
    assert first["event"] == "tick" and first["level"] == "info"  # JSON in a file (auto)


def test_reconfiguring_closes_the_previous_file(tmp_path: Path) -> None:
    logs.configure("json", "info", file=tmp_path / "a.log")
    structlog.get_logger("test").info("one")
    logs.configure("json", "info", stream=io.StringIO())
    structlog.get_logger("test").info("two")
    assert [json.loads(x)["event"] for x in (tmp_path / "a.log").read_text().splitlines()] == [
        "one"
    ]
    assert not logging.getLogger("edge_agent.structlog").handlers
