"""Everything ``run`` needs before the first unit, checked without touching a device.

``check-config`` reports these findings and ``run`` checks the same at start (exit 2 with the
same messages, before any device is opened), so a config that checks OK does not die at start:

- the state directory exists and is writable, or can be created; its state database is
  provably this directory's own (``db_identity``) and its files are writable;
- the serial list file of ``source = "list"`` is readable UTF-8 and every serial valid;
- the failed-frame archive folder is writable or can be created;
- the operator screen's users file (``[hmi] users_file``) is readable and a users file, or absent;
- every secret reference (``{ env = ... }`` / ``{ file = ... }``) anywhere resolves, non-empty;
- every OPC UA security section in use has a readable certificate, private key and trust list;
- every driver implementing ``contracts.Preflight`` reads its own files and secrets (TLS CA,
  client certificates, tokens) as it does when it connects.

Each problem is a ConfigError with the config file, line and key path, what is wrong and the fix.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_agent import db, proclocks
from edge_agent.config.loader import ConfigInvalid, LoadedConfig, _key_lines
from edge_agent.config.models import OpcUaSecurity, SecretRef
from edge_agent.contracts import Preflight
from edge_agent.db import user_name, writable
from edge_agent.db_identity import StateFiles
from edge_agent.errors import ConfigError, LedgerError
from edge_agent.tls import readable

LOCK_NAME = "agent.lock"


@dataclass
class Findings:
    problems: list[ConfigError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found, for the OK report


class _Report:
    """Collects problems with file, line and key path, as the loader reports config errors."""

    def __init__(self, config: LoadedConfig) -> None:
        self.file = config.path
        try:
            self.lines = _key_lines(Path(config.path).read_text(encoding="utf-8"))
        except OSError:
            self.lines = {}
        self.findings = Findings()

    def problem(self, key: str, message: str) -> None:
        parts = key.replace("[", ".[").split(".")
        line = None
        for depth in range(len(parts), 0, -1):
            line = self.lines.get(".".join(parts[:depth]).replace(".[", "["))
            if line is not None:
                break
        if not any(p.key == key and p.detail == message for p in self.findings.problems):
            error = ConfigError(message, file=self.file, key=key, line=line)
            self.findings.problems.append(error)

    def note(self, text: str) -> None:
        self.findings.notes.append(text)


def check(config: LoadedConfig) -> Findings:
    """Every check; never writes a file. Call outside a running event loop."""
    report = _Report(config)
    model = config.model
    _state_dir(report, model.agent.state_dir)
    if model.orders.inbox is not None:
        _output_dir(report, "orders.inbox", model.orders.inbox, "order inbox")
    if model.vision.archive_dir is not None:
        _output_dir(report, "vision.archive_dir", model.vision.archive_dir, "failed-frame archive")
    if model.hmi is not None:
        _users_file(report, model.hmi.users_file)
    sections = list(_sections(config))
    for prefix, section in sections:
        for key, ref in _secret_refs(section, prefix):
            try:
                ref.resolve()
            except ConfigError as exc:
                report.problem(key, exc.detail)
    asyncio.run(_async_checks(report, config, sections))
    return report.findings


def require(config: LoadedConfig) -> None:
    """For ``run``: the checks of ``check``, and this process becomes the one agent on its
    state directory. ConfigInvalid (exit 2) with every problem."""
    findings = check(config)
    if not findings.problems:
        problem = hold_state_dir(config.model.agent.state_dir)
        if problem is not None:
            findings.problems.append(ConfigError(problem, file=config.path, key="agent.state_dir"))
    if findings.problems:
        raise ConfigInvalid(findings.problems)


_held: list[int] = []  # the lock file stays open (and locked) until the process exits


def hold_state_dir(state_dir: Path) -> str | None:
    """Take ``agent.lock`` in the state directory for the life of this process; the problem
    if another agent holds it. An exclusive flock: the kernel releases it when the process
    ends, however it ends, and it never meets SQLite's POSIX locks on the database files."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        return f"cannot open {path} ({exc.strerror}); make it writable for user {user_name()}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        who = "another process"
        if holder.isdigit():
            who = f"process {holder} ({proclocks.command_line(int(holder))})"
        return (
            f"another agent is running on this state directory: {who} holds {path}; stop it "
            "first (`systemctl stop edge-agent`), or give this agent its own agent.state_dir"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held.append(fd)
    return None


def _state_dir(report: _Report, path: Path) -> None:
    key = "agent.state_dir"
    if not path.exists():
        _creatable(report, key, path, "state directory")
        report.note(f"state directory {path} does not exist yet: the first run creates it")
        return
    if not path.is_dir():
        report.problem(key, f"{path} is not a folder")
        return
    files = StateFiles(path)
    own = (path, *files.sqlite_files(), files.identity, path / LOCK_NAME)
    denied = [p for p in own if p.exists() and not writable(p)]
    if denied:
        report.problem(
            key,
            f"not writable by user {user_name()}: {', '.join(map(str, denied))}; give that user "
            f"write access (`chown -R {user_name()}: {path}`) or set agent.state_dir",
        )
        return
    try:
        seen = db.verify(path)
    except LedgerError as exc:
        report.problem(key, str(exc))
        return
    if seen.header is None:
        report.note(f"state database {files.db} does not exist yet: the first run creates it")
    elif seen.legacy:
        report.note(f"state database {files.db} has no identity yet: the next run adopts it")
    else:
        wal = ""
        if seen.wal_transactions:
            wal = f", {seen.wal_transactions} transaction(s) in its WAL proven its own"
        users = proclocks.describe(seen.open_by)
        report.note(
            f"state database {files.db}: database {seen.database_id}{wal}"
            + (f"; open in {users}" if users else "")
        )
    lock = path / LOCK_NAME
    holders = proclocks.holders([lock]) or {}
    others = proclocks.describe(holders)
    if others:
        report.note(f"an agent is running on this state directory: {others}")


def _output_dir(report: _Report, key: str, path: Path, what: str) -> None:
    if not path.exists():
        _creatable(report, key, path, what)
    elif not path.is_dir():
        report.problem(key, f"{path} is not a folder")
    elif not writable(path):
        report.problem(key, f"{path} is not writable by user {user_name()}")


def _creatable(report: _Report, key: str, path: Path, what: str) -> None:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not writable(parent):
        report.problem(
            key,
            f"the {what} {path} does not exist and user {user_name()} cannot create it ({parent} "
            "is not writable); create it for that user",
        )


def _users_file(report: _Report, path: Path) -> None:
    from edge_agent.hmi.users import UserFile

    try:
        users = UserFile(path).users()
    except ConfigError as exc:
        report.problem("hmi.users_file", exc.detail)
        return
    if users:
        report.note(f"operator screen: {len(users)} users in {path}")
    else:
        report.note(
            f"operator screen: nobody can log in yet ({path} has no users): "
            "`edge-agent user add NAME --role supervisor`"
        )


def _sections(config: LoadedConfig) -> Iterator[tuple[str, BaseModel]]:
    """Every validated model with the key path of its section."""
    model = config.model
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield name, value
    for kind in ("printer", "camera", "plc"):
        yield kind, getattr(config, kind).config
    for index, spec in enumerate(config.forwarders):
        yield f"upstream.forwarders[{index}]", spec.config


def _in_use(section: BaseModel) -> bool:
    return getattr(section, "enabled", True) is not False


def _secret_refs(value: Any, key: str) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(value, SecretRef):
        yield key, value
    elif isinstance(value, BaseModel):
        if _in_use(value):
            for name in type(value).model_fields:
                yield from _secret_refs(getattr(value, name), f"{key}.{name}")
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _secret_refs(item, f"{key}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secret_refs(item, f"{key}[{index}]")


async def _async_checks(
    report: _Report, config: LoadedConfig, sections: list[tuple[str, BaseModel]]
) -> None:
    for prefix, section in sections:
        if isinstance(section, OpcUaSecurity) and section.secure and _in_use(section):
            await _opcua_security(report, prefix, section)
    specs = [(kind, kind, getattr(config, kind)) for kind in ("printer", "camera", "plc")]
    specs += [(f"upstream.forwarders[{i}]", s.name, s) for i, s in enumerate(config.forwarders)]
    for prefix, name, spec in specs:
        if _checks_itself(spec.driver):
            try:
                await spec.driver(name, spec.config).preflight()
            except ConfigError as exc:
                report.problem(f"{prefix}.{exc.key}" if exc.key else prefix, exc.detail)


def _checks_itself(driver: Any) -> bool:
    """The driver class implements ``contracts.Preflight``."""
    return isinstance(driver, type) and issubclass(driver, Preflight)


async def _opcua_security(report: _Report, prefix: str, settings: OpcUaSecurity) -> None:
    """The channel's certificate, private key and trust list, loaded as a connect loads them."""
    from asyncua.crypto import uacrypto

    from edge_agent.opcua_server.security import trust_store

    certificate, private_key = settings.certificate, settings.private_key
    for key, path in (("certificate", certificate), ("private_key", private_key)):
        if path is None:
            continue
        try:
            readable(path, key)
            if key == "certificate":
                await uacrypto.load_certificate(path)
            else:
                await uacrypto.load_private_key(path, settings.key_password())
        except ConfigError as exc:
            report.problem(f"{prefix}.{exc.key}", exc.detail)
        except (ValueError, TypeError) as exc:
            what = "an X.509 certificate" if key == "certificate" else "a private key"
            report.problem(
                f"{prefix}.{key}",
                f"{path} is not {what} (PEM or DER), or not for this password: {exc}",
            )
    if settings.trust_dir is not None:
        try:
            await trust_store(settings.trust_dir)
        except ConfigError as exc:
            report.problem(f"{prefix}.trust_dir", exc.detail)
