"""Pydantic models of the agent's TOML configuration.

Every model forbids unknown keys (a typo must not be silently ignored) and every field says what
it is and its bounds. Device sections (``printer``, ``camera``, ``plc``) are kept as raw tables
here and validated by the driver that the section's ``type`` selects (see ``registry``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge_agent.errors import ConfigError
from edge_agent.orders.audit import Role


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
        """The secret's value. ConfigError naming the variable or file (never a value) when it
        is not there; the error has no key: the caller knows where the reference sits."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(
                    f"environment variable {self.env} is not set; set it in the agent's "
                    "environment (under systemd: in /etc/edge-agent/secrets.env)"
                )
            where = f"environment variable {self.env}"
        else:
            assert self.file is not None
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"secret file {self.file} is not UTF-8 text") from None
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the secret file {self.file} ({exc.strerror}); check the path "
                    "and that the agent's user may read it"
                ) from None
            where = f"secret file {self.file}"
        if not value:
            raise ConfigError(f"{where} is empty")
        return SecretStr(value)

    def resolve_for(self, key: str) -> str:
        """The value, or ConfigError with ``key`` (the reference's key path in its section)."""
        try:
            return self.resolve().get_secret_value()
        except ConfigError as exc:
            raise ConfigError(exc.detail, key=key) from None

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
    log_file: Path | None = Field(
        None,
        description="Write the log to this file, rotated by size (outside systemd; under "
        "systemd leave it unset: the journal keeps the log)",
    )
    log_file_max_mb: float = Field(
        50.0, gt=0, le=10_000, allow_inf_nan=False, description="log_file: rotate at this size"
    )
    log_file_backups: int = Field(
        5, ge=1, le=100, description="log_file: rotated files kept (log_file.1 the newest)"
    )
    disk_free_alarm_mb: float = Field(
        512.0,
        ge=0,
        le=1_000_000,
        description="Free space on the state directory's filesystem below which an alarm is "
        "raised (0 = no alarm)",
    )
    disk_free_stop_mb: float = Field(
        128.0,
        ge=0,
        le=1_000_000,
        description="Free space on the state directory's filesystem below which the line stops "
        "(storage_error) before the database fails; 0 = no stop level (a failed write still "
        "stops the line)",
    )
    integrity_check_interval_h: float = Field(
        24.0,
        ge=0,
        le=8760,
        allow_inf_nan=False,
        description="Hours between two integrity checks of the state database while the daemon "
        "runs (in the background, at low priority; 0 = none, only the check at start after an "
        "unclean stop)",
    )

    @model_validator(mode="after")
    def _disk_levels_in_order(self) -> AgentSection:
        if self.disk_free_alarm_mb and self.disk_free_alarm_mb <= self.disk_free_stop_mb:
            raise ValueError("disk_free_alarm_mb must be above disk_free_stop_mb (or 0 = off)")
        return self


class LineSection(Strict):
    id: str = Field("LINE-01", min_length=1, max_length=40, description="Line identifier")
    site: str = Field("SITE-01", min_length=1, max_length=40, description="Site identifier")
    read_point: str = Field(
        "urn:epc:id:sgln:0950600.01340.LINE01",
        pattern=r"^urn:epc:id:sgln:\d+\.\d*\.[!-~]+$",
        description="EPCIS readPoint of this line (SGLN URI)",
    )
    biz_location: str | None = Field(
        None,
        pattern=r"^urn:epc:id:sgln:\d+\.\d*\.[!-~]+$",
        description="EPCIS bizLocation of the line's events (SGLN URI); omit when L3 derives it",
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
    serial_wait_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="An order whose serials come from L3 and has none left to print waits this "
        "long for the next page, then the line stops (serials_exhausted) and the order is held",
    )
    no_frame_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Printed units not seen by the camera this long after the last frame: "
        "at batch end they are rejected; while the line runs, an alarm at half of it and a line "
        "stop naming the camera at it. Must exceed the printer-to-camera travel time",
    )
    print_confirm_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Records waiting in the printer and no print confirmation this long while "
        "the line runs: an alarm at half of it, a line stop naming the printer at it. Must "
        "exceed the longest gap between two units on a running line",
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
    printer_max_reconnects_per_hour: int = Field(
        6,
        ge=0,
        le=1000,
        description="auto: one more lost printer link within an hour stops the line for good "
        "(a flapping link needs a person); 0 = never reconnect in-process",
    )

    @model_validator(mode="after")
    def _timings_fit_together(self) -> LineSection:
        # The agent samples the PLC heartbeat once per heartbeat interval: a timeout under two
        # intervals sees a healthy PLC's heartbeat "stand still" between two samples.
        if self.plc_heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms:g}) must be at most half of "
                f"plc_heartbeat_timeout_ms ({self.plc_heartbeat_timeout_ms:g}): the PLC heartbeat "
                "is read once per interval, so a shorter timeout stops the line on a healthy PLC; "
                f"lower heartbeat_interval_ms to {self.plc_heartbeat_timeout_ms / 2:g} or less, "
                f"or raise plc_heartbeat_timeout_ms to {2 * self.heartbeat_interval_ms:g} or more"
            )
        # A reject is confirmed when its unit reaches the gate, and the gate comes after the
        # verdict deadline (the PLC's gate delay must exceed it): a shorter wait always alarms.
        if self.reject_confirm_timeout_ms <= self.verdict_deadline_ms:
            raise ValueError(
                f"reject_confirm_timeout_ms ({self.reject_confirm_timeout_ms:g}) must be longer "
                f"than verdict_deadline_ms ({self.verdict_deadline_ms:g}): the PLC confirms a "
                "reject only when the unit reaches the gate, after the verdict deadline; raise "
                "reject_confirm_timeout_ms above the PLC's gate delay"
            )
        return self


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
    reject_log_size: int = Field(
        32, ge=1, le=1024, description="Reject log slots the PLC keeps (Modbus IR 12)"
    )
    device_id: int = Field(1, ge=1, le=247, description="modbus-rtu: slave address on the bus")
    baudrate: int = Field(19200, ge=1200, le=921600, description="modbus-rtu: bits per second")
    parity: Literal["N", "E", "O"] = Field(
        "N", description="modbus-rtu: parity; Linux ptys only carry N (the simulator uses 8N2)"
    )
    stopbits: Literal[1, 2] = Field(2, description="modbus-rtu: stop bits")


class SimulatorsSection(Strict):
    host: str = Field("127.0.0.1", description="Address the simulators listen on")
    units_per_min: float | None = Field(300.0, gt=0, description="Line speed; omit for 'fast'")
    transit_s: float = Field(0.0, ge=0, le=60, description="Printer to camera travel time")
    printer: PrinterSim | None = None
    camera: CameraSim | None = None
    plc: PlcSim | None = None
    l3: dict[str, Any] | None = Field(
        None, description="L3 site-server simulator, validated by simulators.l3.L3SimConfig"
    )


class UpstreamSection(Strict):
    @model_validator(mode="before")
    @classmethod
    def _endpoint_belongs_to_a_forwarder(cls, data: Any) -> Any:
        # An endpoint here would configure nothing; say where it goes instead of ignoring it.
        if isinstance(data, dict):
            misplaced = [key for key in ("url", "token", "host") if key in data]
            if misplaced:
                raise ValueError(
                    f"{', '.join(misplaced)} belong to a forwarder: declare one as "
                    '[[upstream.forwarders]] with type = "epcis-http" (url, token) or '
                    'type = "mqtt" (host, port, topic); see config/line-example.toml'
                )
        return data

    # Each forwarder table is validated by the driver its `type` selects (registry kind
    # "forwarder"); several may run at once, each with its own delivery state.
    forwarders: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=8,
        description="[[upstream.forwarders]] tables: name, type ('mqtt', 'epcis-http', ...) and "
        "the driver's settings; every event goes to every forwarder",
    )
    batch_size: int = Field(
        200, ge=1, le=10_000, description="Events handed to a forwarder per delivery call"
    )
    quota_alarm_mb: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="State database size that raises an alarm and prunes delivered events "
        "early; unset: when the disk's free space falls below [agent] disk_free_alarm_mb (half "
        "of quota_stop_mb when only that is set)",
    )
    quota_stop_mb: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="State database size that stops the line (nothing is dropped: the line "
        "waits until upstream drains the outbox and retention frees space); unset: the "
        "database may use the disk down to [agent] disk_free_stop_mb",
    )
    retention_days: float = Field(
        30.0, ge=0, le=3650, description="Keep delivered events this many days, then prune"
    )
    backoff_initial_s: float = Field(
        0.5, gt=0, le=60, description="First retry delay after a failed delivery"
    )
    backoff_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest retry delay (full jitter below it)"
    )
    drain_on_exit_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="After the batch ends, keep forwarding this long for the outbox to empty",
    )

    @model_validator(mode="after")
    def _quota_order(self) -> UpstreamSection:
        if (
            self.quota_alarm_mb is not None
            and self.quota_stop_mb is not None
            and self.quota_alarm_mb >= self.quota_stop_mb
        ):
            raise ValueError("quota_alarm_mb must be below quota_stop_mb")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_initial_s ({self.backoff_initial_s:g}) must not exceed backoff_max_s "
                f"({self.backoff_max_s:g}): the retry delay grows from the first to the longest"
            )
        names = [f.get("name", f.get("type")) for f in self.forwarders]
        if len(set(names)) != len(names):
            raise ValueError("forwarder names must be unique (give each a 'name')")
        return self


Fallback = Literal["denoise", "global-binarizer", "clahe", "upscale", "grid", "dmtx"]


class VisionSection(Strict):
    """How frames are decoded (issue 3). Defaults keep the demo line fast and correct."""

    backend: Literal["zxing", "dmtx"] = Field(
        "zxing",
        description="Decoder: zxing = zxing-cpp (fast, default); dmtx = libdmtx in a "
        "subprocess pool (slower, reads some low-contrast codes zxing misses)",
    )
    roi: tuple[int, int, int, int] | None = Field(
        None, description="Region of interest [x, y, width, height] in pixels; omit = whole frame"
    )

    @field_validator("roi")
    @classmethod
    def _roi(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None:
            x, y, width, height = value
            if x < 0 or y < 0 or width < 16 or height < 16:
                raise ValueError("roi is [x, y, width, height] with x, y >= 0 and sides >= 16 px")
        return value

    frame_budget_ms: float = Field(
        30.0,
        gt=0,
        le=10_000,
        description="Time one frame may take across all strategies; fallbacks run only while "
        "budget remains",
    )
    fallbacks: list[Fallback] = Field(
        default_factory=lambda: list[Fallback](
            ["denoise", "global-binarizer", "upscale", "grid", "clahe"]
        ),
        max_length=8,
        description="Strategies tried in order after the fast pass found nothing",
    )
    locate: Literal["auto", "off"] = Field(
        "auto",
        description="auto = frames larger than VGA are searched on a copy shrunk to about 640 px "
        "wide and each candidate decoded at full resolution; off = always decode the whole frame",
    )
    dmtx_timeout_ms: float = Field(
        50.0, gt=0, le=10_000, description="Hard time budget of one libdmtx search"
    )
    dmtx_workers: int = Field(1, ge=1, le=16, description="Subprocesses running libdmtx")
    max_codes: int = Field(
        1, ge=1, le=1000, description="Codes expected per frame (>1 = case / multi-code reading)"
    )
    min_grade: float | None = Field(
        None,
        ge=0.0,
        le=4.0,
        description="Reject ('print_quality') below this print-quality grade, 0-4 (ISO 15415 "
        "scale, process control; pharma usually asks for 1.5 = C). Omit = not graded",
    )
    serial_pattern: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Regex the whole serial (AI 21) must match, else 'bad_serial'; 'generated' = "
        "the alphabet and length of [batch.serials]. Omit = no format check (a serial the agent "
        "did not print is rejected anyway, as serial_mismatch)",
    )
    archive_dir: Path | None = Field(
        None, description="Keep frames of rejected units here (PNG + JSON verdict); omit = off"
    )
    archive_max_files: int = Field(
        200, ge=1, le=100_000, description="Frames kept in archive_dir; the oldest go first"
    )

    @field_validator("serial_pattern")
    @classmethod
    def _serial_regex(cls, value: str | None) -> str | None:
        if value is not None and value != "generated":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class OpcUaSecurity(Strict):
    """OPC UA channel security (PLC link and the agent's own server). Never None by default."""

    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep"] = Field(
        "Basic256Sha256",
        description="Basic256Sha256 or Aes128_Sha256_RsaOaep; 'None' only if written explicitly",
    )
    security_mode: Literal["Sign", "SignAndEncrypt"] = Field(
        "SignAndEncrypt", description="Sign or SignAndEncrypt"
    )
    certificate: Path | None = Field(None, description="Own instance certificate (DER or PEM)")
    private_key: Path | None = Field(None, description="Private key of the certificate (PEM)")
    private_key_password: SecretRef | None = Field(
        None, description="Password of an encrypted private key, by reference (env or file)"
    )
    trust_dir: Path | None = Field(
        None,
        description="Folder of trusted peer certificates (or their CAs), PEM or DER; peers "
        "whose certificate is not trusted are refused",
    )

    @model_validator(mode="after")
    def _secure_needs_files(self) -> OpcUaSecurity:
        if self.security_policy == "None" or not getattr(self, "enabled", True):
            return self  # a server section that is switched off needs no files
        needed = ("certificate", "private_key", "trust_dir")
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"security_policy {self.security_policy!r} needs {', '.join(missing)}; or set "
                "security_policy = 'None' explicitly (unencrypted, not for production)"
            )
        return self

    @property
    def secure(self) -> bool:
        return self.security_policy != "None"

    def key_password(self) -> str | None:
        pw = self.private_key_password
        return None if pw is None else pw.resolve_for("private_key_password")


class OpcUaServerSection(OpcUaSecurity):
    """``[opcua_server]``: the agent's PackML-style OPC UA server for SCADA and MES."""

    enabled: bool = Field(False, description="Start the server (off unless set)")
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on")
    port: int = Field(4840, ge=1, le=65535, description="TCP port (4840 is OPC UA's)")
    namespace_uri: str = Field(
        "urn:edge-agent:packml", min_length=1, description="Namespace URI of the line's nodes"
    )
    users: dict[str, SecretRef] = Field(
        default_factory=dict, description="User name -> password (by reference) allowed to log in"
    )
    allow_anonymous: bool = Field(
        False, description="Let clients in without user name or user certificate"
    )
    update_interval_ms: float = Field(
        250.0, ge=20, le=10_000, description="How often counters and state are refreshed"
    )
    wait_for_start: bool = Field(
        False,
        description="Orders start only when a client calls Start (or through the REST API): "
        "turns [orders] auto_start off",
    )
    linger_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="Not used by the resident daemon: the server lives as long as the daemon "
        "(kept so existing configs load)",
    )

    @model_validator(mode="after")
    def _someone_can_log_in(self) -> OpcUaServerSection:
        if self.enabled and not (self.users or self.allow_anonymous or self.secure):
            raise ValueError(
                "nobody could log in: add [opcua_server.users], a secure policy with user "
                "certificates in trust_dir, or allow_anonymous = true"
            )
        return self


class L3Section(Strict):
    """``[l3]``: the link to the site server (orders in, serial pages in, returns and close
    reports out). The keys here are the service's; each driver's ``Config`` extends this class
    with its own (``type`` selects the driver, registry kind "l3")."""

    type: str = Field(..., min_length=1, description="L3 link: http, mqtt or folder")
    name: str = Field(
        "l3",
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name of the link: the audit trail records L3's orders under it",
    )
    page_size: int = Field(
        500, ge=1, le=100_000, description="Serials asked for in one page (capped at the need)"
    )
    low_water: int = Field(
        200,
        ge=1,
        le=1_000_000,
        description="Ask for the next page when an order has fewer serials in hand (allocated, "
        "not yet sent to the printer) than this",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=600, allow_inf_nan=False, description="Longest wait for one L3 answer"
    )
    poll_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="How often new orders (http, folder) and serial pages (folder) are looked for",
    )
    check_interval_s: float = Field(
        1.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="How often the serials in hand of each order are compared to low_water",
    )
    backoff_initial_s: float = Field(
        1.0, gt=0, le=600, allow_inf_nan=False, description="First retry delay after a failure"
    )
    backoff_max_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Longest retry delay (full jitter below it)",
    )


class ApiToken(Strict):
    """One bearer token of the REST API; its name is the actor in the audit trail."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Who uses this token (mes, operator-cli ...); recorded as the audit actor",
    )
    token: SecretRef = Field(..., description="The token, by reference (env or file)")
    role: Role = Field(
        Role.OPERATOR,
        description="operator (default): runs orders and manual aggregation; supervisor: also "
        "abort, close with exceptions, rework (reopen, remove, replace, relabel, disaggregate, "
        "scrap) and sample/destroy units",
    )


class ApiSection(Strict):
    """``[api]``: the local REST API (OpenAPI document at /openapi.json) the CLI talks to."""

    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on; loopback unless set"
    )
    port: int = Field(8470, ge=0, le=65535, description="TCP port (0 = any free port)")
    tokens: list[ApiToken] = Field(
        ..., min_length=1, max_length=32, description="[[api.tokens]]: name and token each"
    )
    tls_cert: Path | None = Field(None, description="Certificate (PEM) to serve HTTPS with")
    tls_key: Path | None = Field(None, description="Private key (PEM) of tls_cert")
    tls_key_password: SecretRef | None = Field(
        None, description="Password of an encrypted tls_key, by reference"
    )
    metrics_public: bool = Field(
        True,
        description="/metrics answers without a token (counts and states only, never a secret "
        "or a serial); false: a scraper sends one of the tokens",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ApiSection:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique: the name is who the audit trail names")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key for HTTPS, or neither")
        return self


class HmiSection(Strict):
    """``[hmi]``: the operator screen at /hmi of the API server (needs ``[api]``)."""

    users_file: Path = Field(
        Path("/etc/edge-agent/hmi-users.json"),
        description="Users, roles and password hashes; `edge-agent user add` writes it",
    )
    session_minutes: int = Field(
        480, ge=1, le=7 * 24 * 60, description="A login ends after this long (default a shift)"
    )


class OrdersSection(Strict):
    """``[orders]``: how work orders arrive and end on this line."""

    inbox: Path | None = Field(
        None,
        description="Folder watched for order files (*.json, *.toml); accepted/, rejected/ "
        "and processing/ are made inside it",
    )
    inbox_poll_s: float = Field(1.0, gt=0, le=60, description="How often the inbox is looked at")
    inbox_keep: int = Field(
        1000, ge=1, le=100_000, description="Files kept in accepted/ and rejected/ each"
    )
    auto_start: bool = Field(True, description="Start the next Ready order when the line is free")
    auto_close: bool = Field(True, description="Close a completed order when it balances")
    line_end_wait_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="Auto-close of an aggregated order waits this long for the line end (last "
        "partial case and pallet) before an alarm; it still closes once it balances",
    )
    expiry_warn_days: int = Field(
        30, ge=0, le=3650, description="Alarm for an order whose expiry is closer than this"
    )


ClockSourceName = Literal["chrony", "timesyncd", "kernel"]
CLOCK_SOURCES: tuple[ClockSourceName, ...] = ("chrony", "timesyncd", "kernel")


class ClockSection(Strict):
    """[clock]: the system clock's synchronisation, checked at start and periodically."""

    check: bool = Field(True, description="Check the clock's synchronisation (false = never)")
    on_unsynchronised: Literal["alarm", "refuse"] = Field(
        "alarm",
        description="alarm = raise an alarm while the clock is not synchronised; refuse = also "
        "refuse to start an order until it is",
    )
    sources: list[ClockSourceName] = Field(
        default_factory=lambda: list(CLOCK_SOURCES),
        min_length=1,
        description="Where to ask, in order; the first that answers decides (chrony: chronyc "
        "tracking; timesyncd: timedatectl; kernel: adjtimex)",
    )
    interval_s: float = Field(
        60.0, ge=1, le=86_400, allow_inf_nan=False, description="Seconds between two checks"
    )
    max_offset_ms: float = Field(
        1000.0,
        gt=0,
        le=3_600_000,
        allow_inf_nan=False,
        description="A synchronised clock further than this from its reference counts as not "
        "synchronised (where the source reports the offset)",
    )
    jump_threshold_ms: float = Field(
        1000.0,
        ge=10,
        le=3_600_000,
        allow_inf_nan=False,
        description="A wall-clock step larger than this against the monotonic clock raises an "
        "alarm",
    )
    jump_check_interval_s: float = Field(
        1.0, ge=0.05, le=60, allow_inf_nan=False, description="How often steps are looked for"
    )
    probe_timeout_s: float = Field(
        3.0, gt=0, le=30, allow_inf_nan=False, description="Longest wait for chronyc/timedatectl"
    )


class BackupSection(Strict):
    """[backup]: scheduled online backups of the state database (see `edge-agent backup`)."""

    dir: Path | None = Field(
        None, description="Folder the backups go to (best on another disk); unset = no schedule"
    )
    interval_h: float = Field(
        24.0, gt=0, le=720, allow_inf_nan=False, description="Hours between two backups"
    )
    keep: int = Field(
        7, ge=1, le=1000, description="Backups of this database kept in dir (older are deleted)"
    )


class CaseStationSection(Strict):
    """[aggregation.case_station]: the automatic case station's devices (each table validated
    by the driver its ``type`` selects) and how long it waits for each step."""

    camera: dict[str, Any] = Field(
        description="Case camera (a camera type, e.g. tcp-frames): the read and closing read"
    )
    plc: dict[str, Any] = Field(
        description="The case station's PLC (a PLC type): the PLC contract with the case count "
        "as trigger; PASS lets a case through, anything else diverts it"
    )
    label_printer: dict[str, Any] = Field(description="Case label printer (a label_printer type)")
    label_camera: dict[str, Any] = Field(description="Camera reading the printed case label back")
    closing_read_s: float = Field(3.0, gt=0, le=60, description="Wait for the closing read")
    label_confirm_s: float = Field(5.0, gt=0, le=60, description="Wait for a label's print")
    label_read_s: float = Field(3.0, gt=0, le=60, description="Wait for the label camera's read")


class BundleStationSection(CaseStationSection):
    """[aggregation.bundle_station]: the bundler's station (units shrink-wrapped into bundles
    before the case packer), the case station's devices one level down: bundle camera (read and
    closing read of every unit code), bundle PLC (the bundle count as trigger), bundle label
    printer and the camera reading the bundle label back."""


class PalletStationSection(Strict):
    """[aggregation.pallet_station]: cases scanned onto pallets, pallet labels verified."""

    scanner: dict[str, Any] = Field(description="Pallet scanner (a scanner type, e.g. lines)")
    label_printer: dict[str, Any] = Field(description="Pallet label printer")
    label_camera: dict[str, Any] = Field(description="Camera reading the pallet label back")
    label_confirm_s: float = Field(5.0, gt=0, le=60, description="Wait for a label's print")
    label_read_s: float = Field(3.0, gt=0, le=60, description="Wait for the label camera's read")
    label_attempts: int = Field(
        3, ge=1, le=10, description="Pallet labels tried (each with a new SSCC) before holding"
    )


class AggregationSection(Strict):
    """[aggregation]: the bundle, case and pallet stations of the line end."""

    order: str | None = Field(
        None, description="Order whose cases and pallets are built; omit = the active order"
    )
    bundle_station: BundleStationSection | None = None
    case_station: CaseStationSection | None = None
    pallet_station: PalletStationSection | None = None


class AgentConfig(Strict):
    agent: AgentSection = Field(default_factory=lambda: AgentSection())
    line: LineSection = Field(default_factory=lambda: LineSection())
    printer: dict[str, Any]
    camera: dict[str, Any]
    plc: dict[str, Any]
    simulators: SimulatorsSection | None = None
    upstream: UpstreamSection | None = None
    vision: VisionSection = Field(default_factory=lambda: VisionSection())
    opcua_server: OpcUaServerSection | None = None
    l3: dict[str, Any] | None = Field(
        None, description="[l3] link to the site server, validated by the driver its type selects"
    )
    api: ApiSection | None = None
    hmi: HmiSection | None = None
    orders: OrdersSection = Field(default_factory=lambda: OrdersSection())
    clock: ClockSection = Field(default_factory=lambda: ClockSection())
    backup: BackupSection = Field(default_factory=lambda: BackupSection())
    aggregation: AggregationSection | None = None

    @model_validator(mode="after")
    def _hmi_needs_api(self) -> AgentConfig:
        if self.hmi is not None and self.api is None:
            raise ValueError("[hmi] is served by the API server: add an [api] section")
        return self
