"""A real Mosquitto broker on a free loopback port, for tests and integrators.

The broker runs as a subprocess with its own config and persistence directory, so it can be
stopped and restarted (``stop()`` / ``start()``) and keeps its sessions and queued messages
across the restart (persistence on, saved at SIGTERM, as in Debian's packaged config).

By default it runs with mosquitto's **stock limits**, the ones users have: Receive Maximum 20
(``max_inflight_messages``), 1,000 queued messages per client, autosave every 30 minutes. The
config holds only what a temporary broker needs (loopback listener, anonymous clients as in
mosquitto's local-only mode, a temporary persistence directory and log file). ``tuned=True``
adds :data:`TUNED_CONFIG` (no in-flight or queue limit, autosave every second) for benchmarks
and tests that say why they need it; it exists beside the stock broker, never instead of it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

TUNED_CONFIG = "autosave_interval 1\nmax_queued_messages 0\nmax_inflight_messages 0\n"
"""Limits lifted: nothing queued is dropped, every message is on disk within a second, and the
broker's Receive Maximum is unlimited (65,535)."""

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """``with Mosquitto(tmp_dir) as broker:`` → ``broker.port``; ``stop()``/``start()`` restart
    it on the same port with its persisted state."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
        tuned: bool = False,
    ) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_config = (TUNED_CONFIG if tuned else "") + extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "mosquitto.conf"
        self.log_file = workdir / "mosquitto.log"

    def _write_config(self) -> None:
        self.config_file.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # run as whoever started it: as root, mosquitto would switch to a user that cannot
            # read the temporary config, ACL and persistence directory
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"log_dest file {self.log_file}\n"
            "log_type error\nlog_type warning\n" + self.extra_config
        )

    def start(self, timeout: float = 10.0) -> None:
        self._write_config()
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.config_file)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_file.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on port {self.port}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker: SIGTERM saves its persistence file; ``kill`` loses what is unsaved."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
