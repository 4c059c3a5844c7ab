"""The inbox folder: order files dropped by people or by a file transfer from L3.

A file is taken only when it is complete: its name does not start with "." and ends in .json or
.toml (write it under another name and rename it, as transfer tools do), and its size and
modification time did not change between two looks. It is first renamed into ``processing/``,
so it is taken once, then submitted through the command path (the actor is the file name, the
source "inbox"), and moved to ``accepted/`` or ``rejected/``; a rejected file gets a
``<name>.error.txt`` beside it saying why. A file left in ``processing/`` by a crash is taken
again at start; an order it had stored already counts as accepted. ``accepted/`` and
``rejected/`` keep the newest ``keep`` files each. A bad file never stops the watcher.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edge_agent.alarms import AlarmKind
from edge_agent.config.models import OrdersSection
from edge_agent.errors import EdgeAgentError, OrderInvalid
from edge_agent.orders import audit
from edge_agent.orders.commands import CommandPath
from edge_agent.orders.validation import parse_order

log = structlog.get_logger("edge_agent.inbox")

SOURCE = "inbox"
SUFFIXES = (".json", ".toml")
MAX_FILE_BYTES = 64 * 1024 * 1024
ERROR_SUFFIX = ".error.txt"


@dataclass(frozen=True)
class Outcome:
    name: str
    accepted: bool
    order_id: str | None
    why: str = ""


class Inbox:
    def __init__(
        self, folder: Path, commands: CommandPath, *, poll_s: float = 1.0, keep: int = 1000
    ) -> None:
        self.folder = folder
        self.commands = commands
        self.poll_s = poll_s
        self.keep = keep
        self.processing = folder / "processing"
        self.accepted = folder / "accepted"
        self.rejected = folder / "rejected"
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last look

    @classmethod
    def from_section(cls, section: OrdersSection, commands: CommandPath) -> Inbox | None:
        """The inbox ``[orders] inbox`` names, or None when the line has none."""
        if section.inbox is None:
            return None
        return cls(section.inbox, commands, poll_s=section.inbox_poll_s, keep=section.inbox_keep)

    async def run(self) -> None:
        """Watch the folder until cancelled."""
        self.prepare()
        log.info("inbox_watching", folder=str(self.folder))
        await self.recover()
        unreadable = False
        while True:
            try:
                await self.scan()
            except OSError as exc:  # the folder went away, a disk error: say so, keep watching
                if not unreadable:
                    log.error("inbox_unreadable", folder=str(self.folder), error=str(exc))
                unreadable = True
            else:
                if unreadable:
                    log.info("inbox_readable_again", folder=str(self.folder))
                unreadable = False
            await asyncio.sleep(self.poll_s)

    def waiting_files(self) -> int:
        """Order files not yet taken or not yet filed: orders still on their way in."""
        try:
            return sum(
                1
                for folder in (self.folder, self.processing)
                for p in folder.iterdir()
                if _is_order(p)
            )
        except OSError:
            return 0  # the folder went away: run() says so

    def prepare(self) -> None:
        for folder in (self.folder, self.processing, self.accepted, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)

    async def recover(self) -> list[Outcome]:
        """Files a crash left in processing/: submit them again (idempotent)."""
        return [
            await self._process(path)
            for path in sorted(self.processing.iterdir())
            if _is_order(path)
        ]

    async def scan(self) -> list[Outcome]:
        """One look at the folder: take every complete file that stood still since the last."""
        for folder in (self.processing, self.accepted, self.rejected):
            folder.mkdir(exist_ok=True)  # again each time: the inbox may be a share remounted
        outcomes = []
        now: dict[str, tuple[int, int]] = {}
        for path in sorted(self.folder.iterdir()):
            if not _is_order(path):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            mark = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(path.name) != mark:
                now[path.name] = mark  # new or still growing: look again next time
                continue
            taken = self._take(path)
            if taken is not None:
                outcomes.append(await self._process(taken))
        self._seen = now
        return outcomes

    def _take(self, path: Path) -> Path | None:
        target = self.processing / path.name
        try:
            path.rename(target)
        except FileNotFoundError:
            return None  # someone else took it
        return target

    async def _process(self, path: Path) -> Outcome:
        name = path.name
        try:
            outcome = await self._submit(path)
        except Exception as exc:  # never let one file stop the inbox
            log.error("inbox_file_failed", file=name, error=str(exc), exc_info=exc)
            outcome = Outcome(name, False, None, f"internal error while reading the file: {exc}")
        try:
            self._file(path, outcome)
        except OSError as exc:
            log.error("inbox_move_failed", file=name, error=str(exc))
        return outcome

    async def _submit(self, path: Path) -> Outcome:
        name = path.name
        try:
            data = _read(path)
        except ValueError as exc:
            return Outcome(name, False, None, str(exc))
        order_id = data.get("id") if isinstance(data.get("id"), str) else None
        actor = audit.Actor(name, SOURCE)
        try:
            record = await self.commands.submit(data, source=SOURCE, actor=actor)
        except OrderInvalid as exc:
            if self._stored_already(data):
                log.info("inbox_order_stored_before", file=name, order=order_id)
                return Outcome(name, True, order_id, "stored before (taken again after a restart)")
            return Outcome(name, False, order_id, _problems(exc))
        except EdgeAgentError as exc:
            return Outcome(name, False, order_id, str(exc))
        log.info("inbox_order_accepted", file=name, order=record.id, state=record.state)
        return Outcome(name, True, record.id)

    def _stored_already(self, data: dict[str, Any]) -> bool:
        """The same order from the inbox is stored: a file taken again after a crash."""
        try:
            order = parse_order(data, SOURCE)
        except OrderInvalid:
            return False
        record = self.commands.store.find(order.id)
        return record is not None and record.source == SOURCE and record.order == order

    def _file(self, path: Path, outcome: Outcome) -> None:
        folder = self.accepted if outcome.accepted else self.rejected
        target = _free_name(folder, path.name)
        if not outcome.accepted:
            _write_text(
                folder / (target.name + ERROR_SUFFIX),
                f"{path.name}: order {outcome.order_id or '(no id)'} was refused at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n{outcome.why}\n",
            )
            self.commands.alarms.raise_(
                AlarmKind.ORDER_REJECTED,
                f"inbox file {path.name} was refused; {folder.name}/{target.name}{ERROR_SUFFIX} "
                "says why",
            )
            log.warning("inbox_order_rejected", file=path.name, why=outcome.why)
        path.rename(target)
        _prune(folder, self.keep)


def _is_order(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix in SUFFIXES and path.is_file()


def _read(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"the file is {size} bytes, more than {MAX_FILE_BYTES}: give the serials through "
            "L3 (serials.source = 'l3') instead of inline"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"the file is not UTF-8 text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("an order file holds one order: a JSON object")
    return data


def _problems(exc: OrderInvalid) -> str:
    return "\n".join(f"{key}: {message}" for key, message in exc.problems) or str(exc)


def _free_name(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, or ``<stem>.<n><suffix>`` when a file of that name is there."""
    target = folder / name
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while target.exists():
        target = folder / f"{stem}.{n}{suffix}"
        n += 1
    return target


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _prune(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` order files (with their error notes) in ``folder``."""
    # ctime: a rename into the folder sets it, so this is the order in which files were filed
    files = sorted(
        (p for p in folder.iterdir() if _is_order(p)), key=lambda p: p.stat().st_ctime_ns
    )
    for old in files[: max(len(files) - keep, 0)]:
        old.unlink(missing_ok=True)
        (folder / (old.name + ERROR_SUFFIX)).unlink(missing_ok=True)
