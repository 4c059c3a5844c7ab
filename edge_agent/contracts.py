"""What the core needs from devices, as small async Protocols in the domain's words.

Drivers (in the top-level ``drivers`` package) implement these; the core only ever sees these
types. Every device object is an async context manager: ``async with`` connects, exit closes.
Drivers raise only ``edge_agent.errors`` exceptions.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

GrayImage = npt.NDArray[np.uint8]
"""A grayscale frame: 2-D uint8 array, row-major (height, width)."""


# --- printer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrintJob:
    """The static part of what is printed on every unit of a batch."""

    name: str
    gtin: str
    lot: str
    expiry: str  # YYMMDD as printed (AI 17)


@dataclass(frozen=True)
class PrintRecord:
    """One variable-data record: the serial for one unit. ``seq`` is the agent's record number."""

    seq: int
    serial: str


@dataclass(frozen=True)
class PrintConfirmation:
    """The printer says it has printed this record on a unit."""

    seq: int
    serial: str


@dataclass(frozen=True)
class ClearResult:
    """What ``Printer.clear()`` discarded, by identity as far as the printer can tell.

    ``named`` are discarded records the printer identified (record seq and serial, as sent), in
    its queue order; ``unnamed`` counts discarded records it could not identify (a protocol that
    only counts, or records queued before the driver knew the printer). Unnamed records are always
    ahead of the named ones in the queue, so the named ones are the newest records discarded. A
    driver never guesses: a record it cannot prove it discarded is not named.
    """

    named: tuple[PrintRecord, ...] = ()
    unnamed: int = 0

    @property
    def discarded(self) -> int:
        return len(self.named) + self.unnamed


@dataclass(frozen=True)
class PrinterStatus:
    state: str  # e.g. "ready", "printing", "fault"
    buffered: int  # records waiting in the printer's buffer
    printed: int  # printer's own print counter
    fault: str | None = None  # the printer's own fault code, if any


@runtime_checkable
class Printer(Protocol):
    """A print head the agent feeds one record per unit. ``async with`` connects; a printer
    object may be entered again after it was left (a reconnect)."""

    name: str
    buffer_depth: int
    """How many sent-but-unprinted records the agent keeps in the printer (its config)."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def select_job(self, job: PrintJob) -> None:
        """Select the job template and set its static fields."""

    async def send(self, record: PrintRecord) -> None:
        """Load one record into the printer's buffer; returns once the printer acknowledged it.
        Raises ``PrinterBusy`` when the printer refused it for a full buffer (not taken: the
        same record may be sent again), ``DeviceFault`` when it refused it in a fault,
        ``DeviceTimeout`` when no acknowledgement came (taken or not: unknown)."""

    def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        """Print-complete notifications, in print order. Raises DeviceFault / DeviceConnectionError."""
        ...

    async def status(self) -> PrinterStatus: ...

    async def clear(self) -> ClearResult:
        """Discard every buffered, unprinted record; returns which ones (see ``ClearResult``)."""


# --- label printer (case and pallet labels) --------------------------------------------------


@dataclass(frozen=True)
class LogisticLabel:
    """What one case or pallet label carries. A GS1 logistic label: the SSCC (AI 00) and the
    content, the GTIN of the trade items inside (AI 02) with their count (AI 37), lot (10) and
    expiry (17). With ``serial`` (``sscc`` empty) it is the label of a serialised trade item, a
    homogeneous case: the case's own GTIN (AI 01) and serial (21) with lot and expiry; no count,
    which the case GTIN fixes (AI 37 goes with an SSCC only; AI 30 only with a variable-measure
    GTIN, indicator digit 9). ``seq`` is the agent's label number: its confirmation names it."""

    seq: int
    sscc: str
    gtin: str
    count: int
    lot: str
    expiry: str  # YYMMDD
    serial: str | None = None

    @property
    def code(self) -> str:
        """The container's code as the ledger holds it: the SSCC, or ``01<gtin>21<serial>``."""
        return self.sscc if self.serial is None else f"01{self.gtin}21{self.serial}"

    @property
    def ais(self) -> dict[str, str]:
        """The label's GS1 content, AI -> value: what its barcodes must read back as."""
        if self.serial is None:
            return {"00": self.sscc, "02": self.gtin, "37": str(self.count),
                    "10": self.lot, "17": self.expiry}  # fmt: skip
        content = {"01": self.gtin, "21": self.serial, "10": self.lot, "17": self.expiry}
        if self.gtin.startswith("9"):  # a variable-measure case GTIN: its count is data
            content["30"] = str(self.count)
        return content


@runtime_checkable
class LabelPrinter(Protocol):
    """A printer of case and pallet labels. ``async with`` connects."""

    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def print_label(self, label: LogisticLabel) -> None:
        """Send one label; returns once it is on the wire. Its print is confirmed through
        ``confirmations()`` as (label seq, ``label.code``). Raises ``DeviceFault`` when the printer is in
        a fault (not sent), ``ProtocolError`` for content it cannot print."""

    def confirmations(self) -> AsyncIterator[PrintConfirmation]:
        """Print-complete notifications (seq, label code), in print order."""
        ...


# --- scanner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScannedCode:
    """One code as an industrial scanner delivered it: its data, suffix removed."""

    data: str  # what the scanner sent, e.g. "]C100095060001000000018" (AIM prefix if enabled)
    received_at: float  # time.monotonic()


@runtime_checkable
class Scanner(Protocol):
    """A handheld or fixed barcode scanner on a serial line or a TCP socket. ``async with``
    connects."""

    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def codes(self) -> AsyncIterator[ScannedCode]:
        """Codes in the order scanned. Raises ``DeviceConnectionError`` when the link drops."""
        ...


# --- camera --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One camera image of one unit. ``trigger`` is the unit's trigger count (shared with the PLC)."""

    trigger: int
    image: GrayImage
    received_at: float  # time.monotonic() when the agent had the whole frame
    source: str = ""
    # Decoded on the device (smart reader): the runtime uses these and skips decoding.
    reads: tuple[CodeRead, ...] | None = None


@runtime_checkable
class FrameSource(Protocol):
    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def frames(self) -> AsyncIterator[Frame]:
        """Frames in arrival order. Malformed input is logged and counted, never raised mid-stream."""
        ...


@dataclass(frozen=True)
class CodeRead:
    """One symbol found in a frame."""

    text: str  # human-readable GS1 form "(01)...(21)..." for GS1 symbols, else the decoded text
    raw: str  # element string as encoded, GS (\x1d) separators, no symbology prefix
    symbology: str  # AIM symbology identifier, e.g. "]d2" for GS1 DataMatrix
    corners: tuple[tuple[int, int], ...]  # four (x, y) corners, top-left first, clockwise
    contrast: float | None = None  # symbol contrast 0..1 measured from the image, if computed
    ms: float = 0.0  # time spent decoding
    module_size: float | None = None  # pixels per module along the top edge, if known
    strategy: str = ""  # the decode stage that read it, e.g. "zxing", "clahe", "dmtx"
    timings: tuple[tuple[str, float], ...] = ()  # (stage, ms) of every stage the frame went through
    size: tuple[int, int] | None = None  # symbol rows x columns, if the decoder reports it
    unused_ec: float | None = None  # share of error correction left unused (0..1), if reported
    grade: float | None = None  # overall print-quality grade 0..4 (ISO 15415 scale), if graded


class CodeReader(Protocol):
    """Decodes codes from a frame. Synchronous and thread-safe: the core runs it off the event loop."""

    def read(self, image: GrayImage) -> Sequence[CodeRead]: ...


# --- PLC -----------------------------------------------------------------------------------


class Verdict(enum.IntEnum):
    """Wire values of a verdict in the PLC contract. 0 means no verdict: the PLC rejects."""

    PASS = 1
    REJECT = 2


@dataclass(frozen=True)
class PlcState:
    heartbeat: int  # the PLC's own counter; the agent watches it move
    running: bool
    trigger_count: int  # last unit triggered at the camera
    passed: int  # units the gate let through
    rejected: int  # units the gate rejected
    reject_confirms: int  # rejects the reject sensor saw leave the line
    stop_cause: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class AgentLineState(enum.IntEnum):
    """What the agent is doing, published to the PLC (wire values of the PLC contract)."""

    IDLE = 0  # connected, no batch running
    RUNNING = 1  # running a batch, deciding units
    STOPPED = 2  # the agent stopped the line (its reason code is in the line-stop request)
    COMPLETE = 3  # the batch reached its quantity


@dataclass(frozen=True)
class LineStatus:
    """The agent's line state and counters, which the PLC (and its HMI) can read."""

    state: AgentLineState
    units: int  # units decided in this run
    passed: int
    rejected: int
    last_trigger: int  # trigger count of the last verdict written
    missing_confirms: int = 0  # reject confirms missing in a row


@runtime_checkable
class PlcLink(Protocol):
    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def write_verdict(self, trigger: int, verdict: Verdict) -> None:
        """Write the verdict into the ring slot of this trigger count (one atomic write)."""

    async def beat(self) -> None:
        """Advance the agent heartbeat counter the PLC watches."""

    async def read_state(self) -> PlcState: ...

    async def recent_rejects(self) -> Sequence[int]:
        """Trigger counts the PLC recently rejected and confirmed (its reject log), oldest first."""

    async def request_line_stop(self, reason_code: int) -> None: ...

    async def clear_line_stop(self) -> None: ...


@runtime_checkable
class PlcVerdictsLink(Protocol):
    """Optional for a PlcLink: several verdicts in as few requests as the link allows, in the
    order given; each slot still lands whole, in one request."""

    async def write_verdicts(self, verdicts: Sequence[tuple[int, Verdict]]) -> None: ...


@runtime_checkable
class PlcStatusLink(Protocol):
    """Optional for a PlcLink: publish the agent's line state and counters to the PLC."""

    async def write_status(self, status: LineStatus) -> None: ...


# --- upstream delivery -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEvent:
    """One event as stored in the outbox; ``payload`` is the EPCIS 2.0 JSON-LD event as text."""

    seq: int  # outbox order; per batch, events are delivered in this order
    event_id: str  # stable across retries: the receiver de-duplicates on it
    batch_id: str | None
    event_type: str  # ObjectEvent, AggregationEvent, ...
    payload: str


@dataclass
class Delivery:
    """What one ``deliver`` call achieved. Events in neither list stay pending and are re-sent."""

    delivered: list[str] = field(default_factory=list)  # event IDs done at the configured level
    rejected: dict[str, str] = field(default_factory=dict)  # event ID -> why (dead letter)


@dataclass(frozen=True)
class LineContext:
    """Where the agent runs, for the drivers that name things after it (an MQTT client id, a
    topic, a document's source): the site and line ids of ``[line]``."""

    site: str = "SITE-01"
    line: str = "LINE-01"


@runtime_checkable
class Forwarder(Protocol):
    """Delivers outbox events to one upstream (MQTT broker, EPCIS capture interface, ...)."""

    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def deliver(self, events: Sequence[OutboxEvent]) -> Delivery:
        """Send ``events`` in order and report which are done; raise ``DeliveryError`` when the
        upstream cannot be reached or answers with a transient failure (the caller backs off)."""


class ForwarderFactory(Protocol):
    """How the core makes a forwarder: every forwarder driver class is one. ``name`` is the
    forwarder's name (its delivery state is kept under it), ``config`` its validated section."""

    def __call__(self, name: str, config: Any, *, context: LineContext) -> Forwarder: ...


# --- Level 3 (site server) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SerialPage:
    """Serials L3 handed out for an order in answer to one request."""

    request_id: str  # the agent's request token: asking again with it yields this same page
    order_id: str
    gtin: str
    serials: tuple[str, ...]
    exhausted: bool = False  # L3 has no more serials for this order


@dataclass(frozen=True)
class L3Message:
    """Something the line owes L3, with a stable id L3 de-duplicates on."""

    id: str  # "<order>:return", "<order>:report", "<order>:refused"
    kind: str  # "serial_return" | "close_report" | "order_refused"
    order_id: str
    payload: dict[str, Any]
    created_at: float
    attempts: int = 0
    delivered_at: float | None = None


@runtime_checkable
class L3Link(Protocol):
    """The site server: sends work orders, hands out serial pages, takes back unused serials and
    close reports. Implementations: HTTP, MQTT 5 request/response, a folder (air-gapped)."""

    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def orders(self) -> AsyncIterator[dict[str, Any]]:
        """Order documents as L3 sends them (pushed or polled), unvalidated: the core validates
        each one and tells L3 when it refuses one. Ends only when the link closes."""
        ...

    async def request_serials(
        self, order_id: str, gtin: str, count: int, request_id: str
    ) -> SerialPage:
        """Ask for up to ``count`` new serials. The same ``request_id`` always yields the same
        page, so a request retried after a crash or a lost answer never gets a second one.
        Raises ``DeliveryError`` when L3 cannot answer now (the caller retries, same id)."""

    async def deliver(self, message: L3Message) -> None:
        """Hand over a return, a close report or a refusal; returns once L3 acknowledged it.
        Raises ``DeliveryError`` to be retried later with the same message id."""


class L3LinkFactory(Protocol):
    """How the core makes its L3 link: every L3 link driver class is one (``config`` is the
    validated ``[l3]`` section, which names the link)."""

    def __call__(self, config: Any, *, context: LineContext) -> L3Link: ...


# --- start-up checks (any driver) ------------------------------------------------------------


@runtime_checkable
class Preflight(Protocol):
    """Optional for every driver: read every file and secret the driver will need, as it reads
    them when it connects, without touching the device or the network. ``check-config`` and the
    start of ``run`` call it, so a missing CA file or unset token variable is found before the
    line starts. Raise ``ConfigError(message, key=<key in the driver's own section>)`` naming
    the file or variable and the fix; the caller adds the section's path."""

    async def preflight(self) -> None: ...
