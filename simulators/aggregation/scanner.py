"""Simulated barcode scanner delivering one code per line, over a pty (serial) or as a TCP
socket server, as industrial scanners do (see ``drivers/scanners/lines.py``).

``scan(data)`` is a code passing the scanner: it sends ``]C1`` (when ``aim`` is on) + the data +
the suffix to whoever listens. Over TCP, codes scanned while no client is connected are lost,
as with a real scanner in server mode.

Standalone: ``python -m simulators.aggregation.scanner --port 9300`` scans what is typed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from typing import Any

from drivers.transport import PtyPair
from simulators.standalone import run_until_signal


class ScannerSim:
    def __init__(self, *, transport: str = "tcp", suffix: str = "\r\n", aim: bool = True) -> None:
        if transport not in ("tcp", "serial"):
            raise ValueError(f"transport {transport!r} is not tcp or serial")
        self.transport = transport
        self.suffix = suffix
        self.aim = aim
        self.host, self.port, self.device = "127.0.0.1", 0, ""
        self.scanned: list[str] = []  # every code scanned, delivered or not
        self.lost = 0  # scanned while nobody listened (TCP)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._pty: PtyPair | None = None
        self._pty_writer: asyncio.StreamWriter | None = None

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        link: dict[str, Any] = {"kind": "tcp", "host": self.host, "port": self.port}
        if self.transport == "serial":
            link = {"kind": "serial", "device": self.device, "baudrate": 115200}
        return {"type": "lines", "link": link, "suffix": self.suffix} | overrides

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self.transport == "serial":
            self._pty = PtyPair()
            self.device = self._pty.slave_path
            _, self._pty_writer = await self._pty.open()
            return
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.host, self.port = host, int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for writer in list(self._clients):
            writer.close()
        self._clients.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._pty is not None:
            self._pty.close()
            self._pty, self._pty_writer = None, None

    @property
    def clients(self) -> int:
        return len(self._clients) if self.transport == "tcp" else 1

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while await reader.read(1024):
                pass  # scanners ignore what the host sends in this mode
        except OSError:
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def scan(self, data: str, *, symbology: str = "]C1") -> None:
        """A code passes the scanner (``data`` as encoded, GS = 0x1D)."""
        self.scanned.append(data)
        line = ((symbology if self.aim else "") + data + self.suffix).encode("ascii")
        if self._pty_writer is not None:
            self._pty_writer.write(line)
            return
        if not self._clients:
            self.lost += 1
        for writer in list(self._clients):
            with contextlib.suppress(OSError):
                writer.write(line)

    def send_raw(self, data: bytes) -> None:
        """Fault injection: bytes that are not a code line."""
        if self._pty_writer is not None:
            self._pty_writer.write(data)
        for writer in list(self._clients):
            writer.write(data)


async def _main(args: argparse.Namespace) -> None:
    sim = ScannerSim(transport=args.transport, aim=not args.no_aim)
    await sim.start(args.host, args.port)
    where = sim.device if args.transport == "serial" else f"tcp://{sim.host}:{sim.port}"
    print(f"scanner simulator on {where}; type a code and Enter to scan it", flush=True)
    loop = asyncio.get_running_loop()

    def typed() -> None:  # a daemon thread: a blocked read never holds up the exit
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(sim.scan, line.strip())

    threading.Thread(target=typed, daemon=True).start()
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.aggregation.scanner")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument("--transport", choices=("tcp", "serial"), default="tcp")
    parser.add_argument("--no-aim", action="store_true", help="no ]C1 symbology prefix")
    run_until_signal(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
