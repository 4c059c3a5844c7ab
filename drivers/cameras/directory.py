"""FrameSource for cameras that write one image file per trigger into a folder.

The camera may still be writing a file when a poll sees it, so a file is used only when it is
provably complete: a PNG that ends with its IEND chunk, a JPEG that ends with its EOI marker, a
BMP as long as its header says, or any other file whose size and mtime did not change between two
polls at least ``settle_s`` apart. A complete file that still does not decode is given
``bad_after_s`` of quiet (a stalled writer may yet finish it) and then moved to ``<path>/bad/``.
Hidden and temporary names (leading ``.`` or ``~``) are never touched: cameras and copy tools
write under such a name and rename when done.

Bounded: a burst is taken ``max_per_poll`` files at a time, lowest trigger first, and the
``done/`` and ``bad/`` folders keep at most ``keep_files`` files each (oldest deleted first).

All file system work and image decoding run in worker threads: folders are often network shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import cv2
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.contracts import Frame, GrayImage
from edge_agent.errors import DeviceConnectionError

log = structlog.get_logger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_TEMP_PREFIXES = (".", "~")
DONE_DIR = "done"
BAD_DIR = "bad"

Signature = tuple[int, int, int]  # inode, size, mtime_ns: a changed file is a new file


class DirectoryFrameSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["directory"] = Field(description="Driver selector: camera writing image files.")
    path: Path = Field(description="Folder the camera writes its images into.")
    pattern: str = Field(
        "*.png",
        min_length=1,
        max_length=200,
        description="Glob for image file names in that folder (no sub-folders).",
    )
    trigger_regex: str = Field(
        r"(\d+)",
        min_length=3,
        max_length=200,
        description="Regex searched in the file name; its first group is the trigger count.",
    )
    poll_interval_s: float = Field(
        0.02, gt=0, le=10, description="Seconds between two looks at the folder."
    )
    after_read: Literal["delete", "move", "keep"] = Field(
        "delete", description="What to do with a file once read; 'move' puts it in <path>/done/."
    )
    bad_after_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="A complete file that has not decoded for this long is moved to <path>/bad/.",
    )
    settle_s: float = Field(
        0.0,
        ge=0,
        le=60,
        description="A file of a format that cannot prove it is complete (not PNG, JPEG or BMP) "
        "is read once unchanged for this long; raise it for slow writers and network shares.",
    )
    max_per_poll: int = Field(
        64, ge=1, le=100_000, description="Files taken per look at the folder (burst bound)."
    )
    keep_files: int = Field(
        1000, ge=1, le=1_000_000, description="Files kept in done/ and in bad/; oldest go first."
    )

    @field_validator("pattern")
    @classmethod
    def _flat_pattern(cls, value: str) -> str:
        if "/" in value or "\\" in value:
            raise ValueError("the pattern matches file names in the folder itself, no '/'")
        return value

    @field_validator("trigger_regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        if groups < 1:
            raise ValueError("needs a capturing group for the trigger count, e.g. (\\d+)")
        return value


@dataclass
class _Seen:
    signature: Signature
    changed_at: float  # monotonic time the signature was last seen to change


class _NotReady:
    """Marker: the file may still be being written."""


class _Undecodable:
    """Marker: the file is complete but is not an image."""


_NOT_READY = _NotReady()
_UNDECODABLE = _Undecodable()


class DirectoryFrameSource:
    Config = DirectoryFrameSourceConfig

    def __init__(self, name: str, config: DirectoryFrameSourceConfig) -> None:
        self.name = name
        self.config = config
        self.malformed_count = 0
        self.frames_received = 0
        self.polls = 0
        self._trigger_re = re.compile(config.trigger_regex)
        self._seen: dict[str, _Seen] = {}
        self._finished: dict[str, Signature] = {}  # yielded or quarantined, still in the folder
        self._kept: dict[Path, deque[str]] = {}  # done/ and bad/ contents, oldest first
        self._open = False  # inside 'async with': files are only taken (and moved) then

    async def __aenter__(self) -> Self:
        if not await asyncio.to_thread(self.config.path.is_dir):
            raise DeviceConnectionError(self.name, f"image folder {self.config.path} not found")
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False

    async def frames(self) -> AsyncIterator[Frame]:
        while True:
            if not self._open:
                raise DeviceConnectionError(self.name, "not open (use 'async with')")
            listing = await asyncio.to_thread(self._scan)
            self.polls += 1
            for file_name, trigger, settled in self._candidates(listing)[
                : self.config.max_per_poll
            ]:
                frame = await self._take(file_name, trigger, settled)
                if frame is not None:
                    yield frame
            await asyncio.sleep(self.config.poll_interval_s)

    # --- one poll ---------------------------------------------------------------------------

    def _scan(self) -> dict[str, Signature]:
        """Worker thread: matching files and their signatures."""
        found: dict[str, Signature] = {}
        try:
            with os.scandir(self.config.path) as entries:
                for entry in entries:
                    if entry.name.startswith(_TEMP_PREFIXES):
                        continue  # still being written under a temporary name
                    if not fnmatch.fnmatch(entry.name, self.config.pattern):
                        continue
                    try:
                        if not entry.is_file():
                            continue
                        st = entry.stat()
                    except FileNotFoundError:
                        continue  # gone between listing and stat
                    found[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            raise DeviceConnectionError(
                self.name, f"cannot list {self.config.path}: {exc}"
            ) from exc
        return found

    def _candidates(self, listing: dict[str, Signature]) -> list[tuple[str, int, bool]]:
        """Files worth a look this poll, in trigger order, with whether they have settled."""
        now = time.monotonic()
        self._forget_missing(listing)
        out: list[tuple[str, int, bool]] = []
        for file_name, signature in listing.items():
            if self._finished.get(file_name) == signature:
                continue
            seen = self._seen.get(file_name)
            unchanged = seen is not None and seen.signature == signature
            if not unchanged:
                self._seen[file_name] = _Seen(signature, now)
            settled = (
                seen is not None and unchanged and now - seen.changed_at >= self.config.settle_s
            )
            out.append((file_name, self._trigger_of(file_name), settled))
        out.sort(key=lambda c: (c[1], c[0]))
        return out

    def _forget_missing(self, listing: dict[str, Signature]) -> None:
        # A finished name whose signature changed was written anew: it is a new file.
        for file_name in [n for n, sig in self._finished.items() if listing.get(n) != sig]:
            del self._finished[file_name]
        for file_name in [n for n in self._seen if n not in listing]:
            del self._seen[file_name]

    def _trigger_of(self, file_name: str) -> int:
        """Trigger count from the name; -1 when there is none (the file will go to bad/)."""
        match = self._trigger_re.search(file_name)
        try:
            return int(match.group(1)) if match else -1
        except (TypeError, ValueError):
            return -1

    async def _take(self, file_name: str, trigger: int, settled: bool) -> Frame | None:
        if trigger < 0:
            if settled:
                await self._quarantine(file_name, "no trigger count in the file name")
            return None
        result = await asyncio.to_thread(self._load, file_name, settled)
        if isinstance(result, _NotReady):
            return None
        if isinstance(result, _Undecodable):
            seen = self._seen.get(file_name)
            if seen is None or time.monotonic() - seen.changed_at >= self.config.bad_after_s:
                await self._quarantine(file_name, "file does not decode as an image")
            return None
        await self._finish(file_name)
        self.frames_received += 1
        return Frame(trigger, result, received_at=time.monotonic(), source=self.name)

    def _load(self, file_name: str, settled: bool) -> GrayImage | _NotReady | _Undecodable:
        """Worker thread: read and decode, if the file is complete."""
        try:
            data = (self.config.path / file_name).read_bytes()
        except FileNotFoundError:
            return _NOT_READY  # renamed or removed meanwhile; the next poll will tell
        except OSError as exc:
            raise DeviceConnectionError(self.name, f"cannot read {file_name}: {exc}") from exc
        complete = _complete(data)
        if complete is False:
            return _UNDECODABLE if settled else _NOT_READY
        if complete is None and not settled:
            return _NOT_READY
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
        except cv2.error:
            image = None
        if image is None or image.ndim != 2:
            return _UNDECODABLE
        return np.asarray(image, dtype=np.uint8)

    # --- after reading ----------------------------------------------------------------------

    async def _finish(self, file_name: str) -> None:
        self._remember_finished(file_name)
        mode = self.config.after_read
        if mode == "keep":
            return
        target = self.config.path / DONE_DIR if mode == "move" else None
        await asyncio.to_thread(self._dispose, file_name, target)

    async def _quarantine(self, file_name: str, reason: str) -> None:
        self.malformed_count += 1
        log.warning("malformed camera image", device=self.name, file=file_name, reason=reason)
        self._remember_finished(file_name)
        await asyncio.to_thread(self._dispose, file_name, self.config.path / BAD_DIR)

    def _remember_finished(self, file_name: str) -> None:
        # Never yield a file twice: even if it cannot be removed, it is skipped while unchanged.
        seen = self._seen.pop(file_name, None)
        if seen is not None:
            self._finished[file_name] = seen.signature

    def _dispose(self, file_name: str, target_dir: Path | None) -> None:
        """Worker thread: delete the file, or move it into ``target_dir``."""
        source = self.config.path / file_name
        try:
            if target_dir is None:
                source.unlink(missing_ok=True)
            else:
                target_dir.mkdir(exist_ok=True)
                os.replace(source, target_dir / file_name)
                self._rotate(target_dir, file_name)
        except OSError as exc:
            log.warning("cannot dispose of image", device=self.name, file=file_name, error=str(exc))

    def _rotate(self, folder: Path, added: str) -> None:
        """Worker thread: keep at most ``keep_files`` in ``folder``, deleting the oldest."""
        kept = self._kept.get(folder)
        if kept is None:
            entries = [p for p in folder.iterdir() if p.is_file() and p.name != added]
            entries.sort(key=lambda p: p.stat().st_mtime_ns)
            kept = self._kept[folder] = deque(p.name for p in entries)
        with contextlib.suppress(ValueError):
            kept.remove(added)  # the same name again: it is now the newest
        kept.append(added)
        while len(kept) > self.config.keep_files:
            (folder / kept.popleft()).unlink(missing_ok=True)


def _complete(data: bytes) -> bool | None:
    """Whether an image file is whole, for formats that can tell; None for the others."""
    if data.startswith(_PNG_SIGNATURE):
        return data.endswith(_PNG_TRAILER)
    if data.startswith(_JPEG_SOI):
        # some encoders pad after the end marker
        return data.rstrip(b"\x00").endswith(_JPEG_EOI)
    if data.startswith(b"BM") and len(data) >= 6:
        return int.from_bytes(data[2:6], "little") == len(data)
    return None
