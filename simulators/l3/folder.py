"""The L3 site server on the other side of an exchange folder (the protocol of
``drivers/l3/folder.py``): it drops orders into ``orders/``, answers each
``requests/<id>.json`` with ``serials/<id>.json``, and reads what the line wrote to
``outbox/`` (a file written again counts as a duplicate)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import structlog

from drivers.l3 import wire
from drivers.l3.folder import SUBFOLDERS
from simulators.l3.site import L3Site

log = structlog.get_logger("simulators.l3.folder")


class L3FolderResponder:
    def __init__(self, site: L3Site, folder: Path, *, poll_s: float = 0.05) -> None:
        self.site = site
        self.folder = folder
        self.poll_s = poll_s
        self._seen: dict[str, int] = {}  # outbox file name -> mtime_ns read
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        return {"type": "folder", "folder": str(self.folder), **overrides}

    def offer(self, document: dict[str, Any]) -> None:
        """Drop this order into ``orders/`` (written aside, then renamed: never half a file)."""
        name = f"{document.get('id', 'order')}.json"
        _write(self.folder / "orders" / name, wire.encode(document))
        self.site.acknowledge_order(str(document.get("id")))

    async def start(self) -> None:
        for sub in SUBFOLDERS:
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="l3-sim-folder")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._answer_requests()
            self._read_outbox()
            await asyncio.sleep(self.poll_s)

    def _answer_requests(self) -> None:
        for path in sorted((self.folder / "requests").glob("*.json")):
            answer = self.folder / "serials" / path.name
            if answer.exists():
                continue
            if self.site.take_fault("fail_requests"):
                continue  # not answered this round
            try:
                request = wire.parse_serial_request(wire.decode(path.read_bytes()))
            except (OSError, wire.WireError) as exc:
                log.warning("l3_sim_bad_request_file", file=path.name, error=str(exc))
                continue
            page = self.site.serve(request)
            _write(answer, wire.encode(wire.page_document(page)))

    def _read_outbox(self) -> None:
        for path in sorted((self.folder / "outbox").glob("*.json")):
            try:
                mtime = path.stat().st_mtime_ns
                if self._seen.get(path.name) == mtime:
                    continue
                document = wire.parse_message(json.loads(path.read_bytes()))
            except (OSError, ValueError) as exc:
                log.warning("l3_sim_bad_outbox_file", file=path.name, error=str(exc))
                continue
            self._seen[path.name] = mtime
            self.site.receive(document)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
