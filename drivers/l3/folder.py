"""L3 link through a folder, for air-gapped lines (files carried by hand or a one-way transfer).

Below ``folder``:

- ``orders/<name>.json``: L3 drops order documents (write ``*.tmp`` and rename, so the agent
  never reads half a file). Once the agent has stored an order or queued its refusal, the file
  moves to ``orders/done/``;
- ``requests/<request_id>.json``: the agent asks for serials
  (``{"request_id", "order_id", "gtin", "count"}``); L3 answers with
  ``serials/<request_id>.json`` (the page). The same request id always names the same page;
- ``outbox/<message_id>.json``: returns, close reports and refusals (the message envelope),
  written atomically and fsynced: a message is delivered once its file is durably written.
  In file names ``:`` is written ``.`` (the file holds the exact id).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Self

import structlog
from pydantic import Field

from drivers.l3 import wire
from edge_agent.config.models import L3Section
from edge_agent.contracts import L3Message, LineContext, SerialPage
from edge_agent.errors import DeliveryError

log = structlog.get_logger("drivers.l3.folder")

SUBFOLDERS = ("orders", "orders/done", "requests", "serials", "outbox")


class FolderL3Config(L3Section):
    """``[l3]`` with ``type = "folder"``."""

    type: Literal["folder"] = Field(description="L3 link through files in a folder")
    folder: Path = Field(description="Exchange folder (orders/, requests/, serials/, outbox/)")


class FolderL3Link:
    Config = FolderL3Config

    def __init__(
        self,
        config: FolderL3Config,
        *,
        context: LineContext | None = None,  # contracts.L3LinkFactory; a folder names nothing
        site: str = "",
        line: str = "",
    ) -> None:
        self.config = config
        self.name = config.name
        self.root = config.folder

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._make_folders)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _make_folders(self) -> None:
        for sub in SUBFOLDERS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- the contract -------------------------------------------------------------------------

    async def orders(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            files = await self._io(self._order_files, "orders/")
            for path in files:
                document = await self._io(lambda p=path: _read_order(p), f"orders/{path.name}")
                if document is None:
                    continue  # vanished meanwhile
                yield document
                # The agent asks for the next one only after it handled this one.
                await self._io(lambda p=path: self._done(p), f"orders/{path.name}")
            if not files:
                await asyncio.sleep(self.config.poll_interval_s)

    async def request_serials(
        self, order_id: str, gtin: str, count: int, request_id: str
    ) -> SerialPage:
        request = self.root / "requests" / f"{request_id}.json"
        answer = self.root / "serials" / f"{request_id}.json"
        body = wire.serial_request(order_id, gtin, count, request_id)
        await self._io(lambda: _write_once(request, body), f"requests/{request.name}")
        deadline = time.monotonic() + self.config.request_timeout_s
        while True:
            text = await self._io(lambda: _read_if_there(answer), f"serials/{answer.name}")
            if text is not None:
                try:
                    return wire.parse_page(wire.decode(text))
                except wire.WireError as exc:
                    raise self._error(f"serials/{answer.name}: {exc}") from exc
            if time.monotonic() >= deadline:
                raise self._error(f"no page yet in serials/{answer.name} (L3 has the request)")
            await asyncio.sleep(min(self.config.poll_interval_s, 0.2))

    async def deliver(self, message: L3Message) -> None:
        path = self.root / "outbox" / wire.message_file_name(message.id)
        document = wire.message_document(message)
        await self._io(lambda: _write_durably(path, document), f"outbox/{path.name}")

    # --- files --------------------------------------------------------------------------------

    def _order_files(self) -> list[Path]:
        return sorted((self.root / "orders").glob("*.json"))

    def _done(self, path: Path) -> None:
        target = self.root / "orders" / "done" / path.name
        if target.exists():
            target = target.with_name(f"{path.stem}.{time.time_ns()}.json")
        try:
            path.replace(target)
        except FileNotFoundError:
            return

    async def _io(self, work: Any, where: str) -> Any:
        try:
            return await asyncio.to_thread(work)
        except OSError as exc:
            raise self._error(f"{self.root}/{where}: {exc.strerror or exc}") from exc

    def _error(self, message: str) -> DeliveryError:
        return DeliveryError(message, upstream=self.name)


def _read_order(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return wire.decode(data)
    except wire.WireError:
        # Handed on as text: the service refuses it and tells L3 why.
        return data.decode("utf-8", "replace")


def _read_if_there(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_once(path: Path, document: dict[str, Any]) -> None:
    if not path.exists():
        _write_durably(path, document)


def _write_durably(path: Path, document: dict[str, Any]) -> None:
    """Write, fsync, rename into place, fsync the folder: the file exists whole or not at all,
    and survives a power cut once this returns."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
