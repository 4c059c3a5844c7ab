"""Pydantic models of the agent's TOML configuration.

Every model forbids unknown keys (a typo must not be silently ignored) and every field says what
it is and its bounds. Device sections (``printer``, ``camera``, ``plc``) are kept as raw tables
here and validated by the driver that the section's ``type`` selects (see ``registry``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge_agent import gs1

DEFAULT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def _gs1_check(check: Callable[[], object]) -> None:
    """pydantic reports only ValueError as a validation problem; GS1 errors become one."""
    try:
        check()
    except gs1.Gs1Error as exc:
        raise ValueError(str(exc)) from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """A secret given by reference, never inline: an environment variable or a file."""

    env: str | None = Field(None, description="Name of the environment variable holding the secret")
    file: Path | None = Field(None, description="Path of a file whose content is the secret")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError(
                "give exactly one of 'env' or 'file' (secrets are never written inline)"
            )
        return self

    def resolve(self) -> SecretStr:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        return SecretStr(self.file.read_text().strip())

    def __repr__(self) -> str:  # the reference is safe to show, the value never is
        return f"SecretRef(env={self.env!r}, file={self.file!r})"


class AgentSection(Strict):
    state_dir: Path = Field(
        Path("/var/lib/edge-agent"), description="Directory of the state database (ledger + outbox)"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = readable on a terminal, JSON otherwise (service mode)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class LineSection(Strict):
    id: str = Field("LINE-01", min_length=1, max_length=40, description="Line identifier")
    site: str = Field("SITE-01", min_length=1, max_length=40, description="Site identifier")
    read_point: str = Field(
        "urn:epc:id:sgln:0950600.01340.LINE01",
        pattern=r"^urn:epc:id:sgln:\d+\.\d*\.[!-~]+$",
        description="EPCIS readPoint of this line (SGLN URI)",
    )
    company_prefix_length: int = Field(
        7, ge=6, le=12, description="GS1 company prefix length, for EPC URIs (SGTIN)"
    )
    verdict_deadline_ms: float = Field(
        250.0,
        gt=0,
        le=10_000,
        description="A unit whose verdict is not ready this long after its frame arrived is "
        "rejected; must be shorter than the PLC's gate delay",
    )
    min_symbol_contrast: float = Field(
        0.40, ge=0.0, le=1.0, description="Reject below this symbol contrast (0.40 = ISO grade C)"
    )
    require_symbology: str | None = Field(
        "]d2", description="Required AIM symbology identifier; ']d2' = GS1 DataMatrix; empty = any"
    )
    max_consecutive_rejects: int = Field(
        5, ge=1, le=1000, description="Repeated doubt: this many rejects in a row stop the line"
    )
    heartbeat_interval_ms: float = Field(
        200.0, ge=10, le=5_000, description="Agent heartbeat to the PLC"
    )
    plc_heartbeat_timeout_ms: float = Field(
        2_000.0, ge=50, le=60_000, description="PLC heartbeat not moving this long = link lost"
    )
    reject_confirm_timeout_ms: float = Field(
        3_000.0,
        ge=50,
        le=60_000,
        description="A reject not confirmed by the PLC this long = missing",
    )
    max_missing_confirms: int = Field(
        3, ge=1, le=100, description="This many missing reject confirms in a row stop the line"
    )
    no_frame_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="At batch end, printed units not seen by the camera this "
        "long after the last frame are rejected",
    )
    max_units_in_flight: int = Field(
        16,
        ge=1,
        le=10_000,
        description="Units printed but not yet decided; must exceed the units between print head "
        "and camera. Bounds the line (and verdict latency) when it runs faster than the agent",
    )
    decode_threads: int = Field(2, ge=1, le=32, description="Threads decoding frames in parallel")
    printer_reconnect: Literal["auto", "stop"] = Field(
        "auto",
        description="On a lost printer link: auto = halt the line (PLC stop), reconnect, settle "
        "the printer's queue, resume; stop = the line stops until the agent is restarted",
    )
    printer_max_outage_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="auto: a printer link down longer than this stops the line for good",
    )


class SerialSource(Strict):
    source: Literal["generate", "list"] = Field(
        "generate", description="generate = random local serials; list = a file provided by L3"
    )
    length: int = Field(12, ge=4, le=20, description="Generated serial length (AI 21 max 20)")
    alphabet: str = Field(
        DEFAULT_ALPHABET, min_length=10, description="Characters of generated serials (CSET 82)"
    )
    file: Path | None = Field(None, description="For source = 'list': one serial per line")

    @field_validator("alphabet")
    @classmethod
    def _alphabet_in_cset82(cls, value: str) -> str:
        bad = sorted(set(value) - gs1.CSET82)
        if bad:
            raise ValueError(f"characters {bad!r} are not in GS1 character set 82")
        if len(set(value)) != len(value):
            raise ValueError("alphabet repeats characters")
        return value

    @model_validator(mode="after")
    def _file_for_list(self) -> SerialSource:
        if self.source == "list" and self.file is None:
            raise ValueError("source = 'list' needs 'file' (path of the serial list from L3)")
        return self


class BatchSection(Strict):
    id: str = Field(..., min_length=1, max_length=40, description="Batch (work order) identifier")
    gtin: str = Field(..., description="GTIN-14 of the product")
    lot: str = Field(..., min_length=1, max_length=20, description="Lot / batch number, AI 10")
    expiry: str = Field(..., description="Expiry date YYMMDD, AI 17 (DD = 00 allowed)")
    target_quantity: int = Field(..., ge=1, le=10_000_000, description="Units to print")
    serials: SerialSource = Field(default_factory=lambda: SerialSource())

    @field_validator("gtin")
    @classmethod
    def _gtin(cls, value: str) -> str:
        if not re.fullmatch(r"\d{14}", value):
            raise ValueError("a GTIN-14 is 14 digits (pad GTIN-8/12/13 with leading zeros)")
        _gs1_check(lambda: gs1.validate_gtin(value))
        return value

    @field_validator("lot")
    @classmethod
    def _lot(cls, value: str) -> str:
        _gs1_check(lambda: gs1.build([("10", value)]))
        return value

    @field_validator("expiry")
    @classmethod
    def _expiry(cls, value: str) -> str:
        _gs1_check(lambda: gs1.build([("17", value)]))
        return value


class PrinterSim(Strict):
    type: str = Field("ascii", description="Printer protocol to simulate (see simulators.runner)")
    port: int = Field(0, ge=0, le=65535, description="TCP port (0 = any free port)")
    buffer_size: int = Field(16, ge=1, le=1024, description="Records the printer buffers")
    transport: Literal["tcp", "serial"] | None = Field(
        None,
        description='Link of simulators that offer both: "serial" serves a pty (the agent opens'
        " its slave as the serial device); omit for the protocol's usual link",
    )


class CameraSim(Strict):
    type: str = Field("tcp-frames", description="Camera input to simulate")
    port: int = Field(0, ge=0, le=65535, description="TCP port (0 = any free port)")
    defect_rate: float = Field(0.02, ge=0.0, le=1.0, description="Share of units with a defect")
    seed: int = Field(1, description="Random seed of defects and rendering")
    width: int = Field(480, ge=64, le=8192)
    height: int = Field(360, ge=64, le=8192)


class PlcSim(Strict):
    type: str = Field("modbus-tcp", description="PLC transport to simulate")
    port: int = Field(0, ge=0, le=65535, description="TCP port (0 = any free port)")
    gate_delay_s: float = Field(0.4, gt=0, le=60, description="Trigger to reject gate")
    heartbeat_timeout_s: float = Field(1.0, gt=0, le=60, description="Stop without agent heartbeat")
    ring_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Verdict slots; must exceed the units between camera and gate",
    )


class SimulatorsSection(Strict):
    host: str = Field("127.0.0.1", description="Address the simulators listen on")
    units_per_min: float | None = Field(300.0, gt=0, description="Line speed; omit for 'fast'")
    transit_s: float = Field(0.0, ge=0, le=60, description="Printer to camera travel time")
    printer: PrinterSim | None = None
    camera: CameraSim | None = None
    plc: PlcSim | None = None


class UpstreamSection(Strict):
    url: str | None = Field(None, description="Level 3 endpoint (used by the forwarders)")
    token: SecretRef | None = Field(None, description="Bearer token, by reference")


class AgentConfig(Strict):
    agent: AgentSection = Field(default_factory=lambda: AgentSection())
    line: LineSection = Field(default_factory=lambda: LineSection())
    batch: BatchSection
    printer: dict[str, Any]
    camera: dict[str, Any]
    plc: dict[str, Any]
    simulators: SimulatorsSection | None = None
    upstream: UpstreamSection | None = None
