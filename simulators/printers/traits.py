"""What a test can expect of a simulated printer, and how to break it, the same for every one.

Every printer simulator in ``simulators.catalog`` declares its ``traits`` (a ``PrinterSimTraits``)
and has a ``faults`` object with the uniform fault API below (``PrinterSimFaults``). The driver
contract suite and the fault matrix in the tests are built from these alone, so a new printer
protocol is covered by them as soon as its simulator is in the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FaultKind = Literal["ink_out", "head_fault", "buffer_underrun"]
FAULT_KINDS: tuple[FaultKind, ...] = ("ink_out", "head_fault", "buffer_underrun")


class PrinterSimFaults(Protocol):
    """Fault injection, in the terms every printer shares."""

    def inject(self, kind: FaultKind) -> None:
        """Raise a fault of this kind: printing stops and the printer reports it."""

    def fault_code(self, kind: FaultKind) -> str:
        """The code the printer (and so the driver, and the agent's alarm) names this kind by."""

    def clear_fault(self) -> None: ...

    def lose_confirmations(self, n: int) -> None:
        """The next ``n`` units print, but what would confirm them to the host is lost."""

    def delay_replies(self, seconds: float) -> None:
        """Answer each command (or status question) only after this long."""

    def silence(self) -> None:
        """Stop answering altogether; the link stays up."""

    def drop_connection(self) -> None:
        """Cut the link (a pulled cable, a reboot); a serial line goes deaf for a while."""

    def send_garbage(self, data: bytes) -> None:
        """Write raw bytes to the host, between whole messages."""


@dataclass(frozen=True)
class PrinterSimTraits:
    """How this simulated printer behaves where printers differ."""

    garbage: bytes  # noise on its wire the driver must count and survive
    silence_alarm: str  # what the driver's error says when the printer stopped answering
    fast: dict[str, Any] = field(default_factory=dict)  # driver settings with short timeouts
    # True: a lost print notice is gone; False: the printer's next status answer has it
    lost_confirmations_rejected: bool = True
    refuses_when_full: bool = True  # a record beyond its buffer is refused (PrinterBusy)
    # Whether a driver that reconnects (or an agent that restarts) learns which records the
    # printer's queue held: its clear names them. A protocol that only counts cannot.
    names_queue_after_restart: bool = True
    # Printer to camera. A polled printer confirms a missed poll late: the unit must still be
    # on its way to the camera then (a print-and-apply label printer sits well upstream).
    transit_s: float = 0.0
    # A serial link cannot be dropped, only silenced: the lost-link scenarios run over this
    lost_link_transport: str | None = None
