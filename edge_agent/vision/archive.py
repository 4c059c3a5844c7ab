"""Failed-frame archive: the frames of rejected units, kept for technicians, bounded.

Each rejected unit leaves ``<UTC time>_t<trigger>_<reason>.png`` (the frame as the agent saw it;
none for a smart reader, which keeps its own images) and a ``.json`` sidecar with the verdict:
batch, serial, trigger, reason, detail, what was read, time. At most ``max_files`` units are
kept; the oldest are deleted first (names sort by time, so the folder listing is the history).

Saving never holds up a verdict: frames are written by one background thread, and when it falls
more than ``max_pending`` frames behind, further frames are skipped and counted (``dropped``).
A write error (full disk, folder gone) is logged and counted, never raised: the archive is a
diagnostic aid, not a record the line depends on (that is the ledger).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import structlog

from edge_agent.contracts import Frame
from edge_agent.errors import ConfigError

log = structlog.get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # big frames: speed over size


class FailedFrameArchive:
    def __init__(self, directory: Path, max_files: int, *, max_pending: int = 8) -> None:
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.directory = directory
        self.max_files = max_files
        self.max_pending = max_pending
        self.saved = 0
        self.dropped = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None
        self._seq = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._kept: deque[str] = deque(sorted(p.stem for p in directory.glob("*.json")))
        except OSError as exc:
            raise ConfigError(
                f"cannot use {directory} for failed frames: {exc}; give a writable folder",
                key="vision.archive_dir",
            ) from exc

    # --- called from the event loop ---------------------------------------------------------

    def submit(self, frame: Frame, **verdict: Any) -> Future[Path | None] | None:
        """Queue one rejected unit; returns at once. None if skipped (archive behind)."""
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return None
            self._pending += 1
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="frame-archive")
        return self._executor.submit(self._save_counted, frame, verdict)

    def close(self) -> None:
        """Wait for queued frames to be written (a handful at most), then stop the thread."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # --- worker thread ----------------------------------------------------------------------

    def _save_counted(self, frame: Frame, verdict: dict[str, Any]) -> Path | None:
        try:
            return self.save(frame, **verdict)
        finally:
            with self._lock:
                self._pending -= 1

    def save(self, frame: Frame, **verdict: Any) -> Path | None:
        """Write one unit now (synchronously); returns the sidecar path, None on a write error."""
        now = dt.datetime.now(dt.UTC)
        self._seq += 1
        reason = _UNSAFE.sub("_", str(verdict.get("reason", "reject")))[:40]
        stem = f"{now:%Y%m%dT%H%M%S.%f}Z_{self._seq % 1000:03d}_t{frame.trigger}_{reason}"
        sidecar = self.directory / f"{stem}.json"
        record = {
            "time": now.isoformat(),
            "trigger": frame.trigger,
            "source": frame.source,
            **{k: v for k, v in verdict.items() if v is not None},
            "image": None,
        }
        try:
            if frame.image.size:
                image_path = self.directory / f"{stem}.png"
                if not cv2.imwrite(str(image_path), frame.image, _PNG_FAST):
                    raise OSError(f"cannot write {image_path}")
                record["image"] = image_path.name
            sidecar.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        except (OSError, cv2.error) as exc:
            self.errors += 1
            log.warning("frame_archive_failed", trigger=frame.trigger, error=str(exc))
            return None
        self.saved += 1
        self._kept.append(stem)
        self._rotate()
        return sidecar

    def _rotate(self) -> None:
        while len(self._kept) > self.max_files:
            stem = self._kept.popleft()
            for suffix in (".json", ".png"):
                try:
                    (self.directory / f"{stem}{suffix}").unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("frame_archive_rotate_failed", file=stem, error=str(exc))
