"""Load a TOML config, validate it, and report every problem with file, line and key path."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from edge_agent import redaction, registry
from edge_agent.config.models import AgentConfig, SecretRef
from edge_agent.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"']+)\s*=")


class ConfigInvalid(ConfigError):
    """Several problems at once; ``problems`` holds one ConfigError each."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(first.detail, file=first.file, key=first.key, line=first.line)
        self.args = ("\n".join(str(p) for p in problems),)


@dataclass(frozen=True)
class DeviceSpec:
    """A validated device section: the driver class and its validated config."""

    kind: registry.DeviceKind
    driver: Any
    config: BaseModel
    name: str = ""  # forwarders: the name their delivery state is kept under

    @property
    def type_name(self) -> str:
        return str(getattr(self.config, "type", "?"))


@dataclass(frozen=True)
class LoadedConfig:
    path: str
    model: AgentConfig
    printer: DeviceSpec
    camera: DeviceSpec
    plc: DeviceSpec
    forwarders: tuple[DeviceSpec, ...] = ()  # [[upstream.forwarders]], validated by their drivers
    warnings: tuple[str, ...] = ()  # valid, but a person should look (file:line: key: why)
    l3: DeviceSpec | None = None  # [l3], validated by the link driver its type selects


def load_config(path: str | PurePath) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file ({exc.strerror}); check the path", file=str(path)
        ) from exc
    return parse_config(text, str(path))


def parse_config(
    text: str,
    file: str = "<config>",
    overrides: dict[str, Any] | None = None,
    *,
    sections: dict[str, Any] | None = None,
) -> LoadedConfig:
    """Validate config text; ``overrides`` merge into it, ``sections`` replace whole sections.

    Values are checked strictly, with the types TOML has: a number is never taken from a string
    (``port = "29100"``), a boolean never from ``"yes"``; a path or an array may be given where a
    path or a fixed-size list is expected. No message ever shows a secret (``edge_agent.redaction``).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_error_line(str(exc))
        raise ConfigError(f"not valid TOML: {exc}", file=file, line=line) from None
    if overrides:
        data = _merge(data, overrides)
    if sections:
        data |= sections
    lines = _key_lines(text)
    problems = [*_inline_secrets(data, file, lines), *_toml_datetimes(data, file, lines)]
    if "batch" in data:
        problems.append(_batch_moved(file, lines))
        data = {k: v for k, v in data.items() if k != "batch"}  # the rest is still checked
    data = _plain(data)
    model = None
    try:
        model = _strict(AgentConfig, data)
    except ValidationError as exc:
        problems.extend(_problems(exc, AgentConfig, (), file, lines))
    devices: dict[str, DeviceSpec] = {}
    for kind in ("printer", "camera", "plc", "l3"):
        section = data.get(kind)
        if not isinstance(section, dict):
            continue  # reported above as missing or of the wrong type (l3: optional)
        try:
            devices[kind] = _device(kind, section, file, lines)
        except ConfigInvalid as exc:
            problems.extend(exc.problems)
    forwarders = _forwarders(data, file, lines, problems)
    _station_devices(data, file, lines, problems)
    if problems or model is None:
        raise _invalid(problems, redaction.secret_values(data))
    warnings = tuple(str(w) for w in _warnings(model, file, lines))
    return LoadedConfig(
        file,
        model,
        devices["printer"],
        devices["camera"],
        devices["plc"],
        forwarders,
        warnings,
        devices.get("l3"),
    )


def validate_table(model: type[M], table: Mapping[str, Any], *, key: str = "") -> M:
    """Validate one config table (a driver's section given in code) exactly as the loader does:
    strict types, and errors (``ConfigInvalid``) that name the key and never show a secret."""
    raw = dict(table)
    problems = [*_inline_secrets(raw, "<config>", {}, key), *_toml_datetimes(raw, "", {}, key)]
    data = _plain(raw)
    try:
        config = _strict(model, data)
    except ValidationError as exc:
        prefix = tuple(key.split(".")) if key else ()
        problems.extend(_problems(exc, model, prefix, "<config>", {}))
    if problems:
        raise _invalid(problems, redaction.secret_values(data))
    return config


def _strict(model: type[M], data: Any) -> M:
    # Strict validation of JSON-shaped data: TOML's own types are exactly JSON's (plus dates,
    # refused before), so a path or tuple is taken from a string or array and nothing else is
    # coerced. Python-mode strict would refuse a path given as a string.
    return model.model_validate_json(json.dumps(data, allow_nan=True), strict=True)


def _invalid(problems: list[ConfigError], secret_values: set[str]) -> ConfigInvalid:
    """One problem per key (the first found), every message scrubbed of known secret values."""
    seen: set[str | None] = set()
    kept = []
    for p in problems:
        if p.key in seen and p.key is not None:
            continue
        seen.add(p.key)
        detail = redaction.scrub(p.detail, secret_values)
        kept.append(ConfigError(detail, file=p.file, key=p.key, line=p.line))
    return ConfigInvalid(kept)


def _inline_secrets(
    data: dict[str, Any], file: str, lines: dict[str, int], prefix: str = ""
) -> list[ConfigError]:
    found = redaction.inline_secrets(data, prefix)
    return [_error_at(file, lines, where, redaction.INLINE_SECRET) for where in found]


def _toml_datetimes(
    data: Any, file: str, lines: dict[str, int], where: str = ""
) -> list[ConfigError]:
    """TOML dates and times: no key takes one (dates are strings in GS1 form, e.g. YYMMDD)."""
    if isinstance(data, dict):
        return [
            p
            for k, v in data.items()
            for p in _toml_datetimes(v, file, lines, f"{where}.{k}" if where else str(k))
        ]
    if isinstance(data, list):
        return [
            p for i, v in enumerate(data) for p in _toml_datetimes(v, file, lines, f"{where}[{i}]")
        ]
    if isinstance(data, dt.date | dt.time):
        message = (
            f"found the TOML date/time {data.isoformat()}; no key takes one: write the value as "
            'a quoted string in the form the key expects (an expiry is "YYMMDD")'
        )
        return [_error_at(file, lines, where, message)]
    return []


def _plain(value: Any) -> Any:
    """TOML or Python config values as plain JSON types (paths as strings, tuples as arrays)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()  # refused by _toml_datetimes, with its key
    return value


def _forwarders(
    data: dict[str, Any], file: str, lines: dict[str, int], problems: list[ConfigError]
) -> tuple[DeviceSpec, ...]:
    upstream = data.get("upstream")
    tables = upstream.get("forwarders") if isinstance(upstream, dict) else None
    if not isinstance(tables, list):
        return ()  # absent, or reported by the model as the wrong type
    specs = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            continue
        section = {k: v for k, v in table.items() if k != "name"}
        try:
            spec = _device("forwarder", section, file, lines)
        except ConfigInvalid as exc:
            for p in exc.problems:  # the driver names keys from its own table
                key = f"upstream.forwarders[{index}]" + (p.key or "").removeprefix("forwarder")
                problems.append(ConfigError(p.detail, file=p.file, key=key, line=p.line))
            continue
        name = str(table.get("name") or spec.type_name)
        specs.append(DeviceSpec("forwarder", spec.driver, spec.config, name))
    return tuple(specs)


# The devices of the aggregation stations: (station, key in its table, driver kind).
STATION_DEVICES: tuple[tuple[str, str, registry.DeviceKind], ...] = (
    ("bundle_station", "camera", "camera"),
    ("bundle_station", "plc", "plc"),
    ("bundle_station", "label_printer", "label_printer"),
    ("bundle_station", "label_camera", "camera"),
    ("case_station", "camera", "camera"),
    ("case_station", "plc", "plc"),
    ("case_station", "label_printer", "label_printer"),
    ("case_station", "label_camera", "camera"),
    ("pallet_station", "scanner", "scanner"),
    ("pallet_station", "label_printer", "label_printer"),
    ("pallet_station", "label_camera", "camera"),
)


def _station_devices(
    data: dict[str, Any], file: str, lines: dict[str, int], problems: list[ConfigError]
) -> None:
    """Check every station device table with the driver its type selects, as for the line's
    own devices, so a wrong key is found by check-config and not first at the station's start."""
    aggregation = data.get("aggregation")
    if not isinstance(aggregation, dict):
        return
    for station, name, kind in STATION_DEVICES:
        tables = aggregation.get(station)
        table = tables.get(name) if isinstance(tables, dict) else None
        if not isinstance(table, dict):
            continue  # absent, or reported by the model
        try:
            _device(kind, table, file, lines)
        except ConfigInvalid as exc:
            for p in exc.problems:  # the driver names keys from its own table
                key = f"aggregation.{station}.{name}" + (p.key or "").removeprefix(kind)
                problems.append(ConfigError(p.detail, file=p.file, key=key, line=p.line))


def _device(
    kind: registry.DeviceKind, section: dict[str, Any], file: str, lines: dict[str, int]
) -> DeviceSpec:
    type_name = section.get("type")
    if not isinstance(type_name, str):
        known = ", ".join(sorted(registry.known_types(kind)))
        raise ConfigInvalid(
            [
                _error(
                    file,
                    lines,
                    (kind, "type"),
                    f"missing or not a string; expected one of: {known}",
                )
            ]
        )
    try:
        driver = registry.driver_class(kind, type_name)
    except registry.UnknownDriver as exc:
        raise ConfigInvalid([_error(file, lines, (kind, "type"), str(exc))]) from None
    try:
        config = _strict(driver.Config, section)
    except ValidationError as exc:
        # from None: the ValidationError's own text shows the input, secrets included
        raise ConfigInvalid(_problems(exc, driver.Config, (kind,), file, lines)) from None
    return DeviceSpec(kind, driver, config)


def _problems(
    exc: ValidationError,
    model: type[BaseModel],
    prefix: tuple[str, ...],
    file: str,
    lines: dict[str, int],
) -> list[ConfigError]:
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(str(part) for part in err["loc"])
        problems.append(_error(file, lines, loc, _describe(err, model, loc[len(prefix) :])))
    return problems


def _describe(err: Any, model: type[BaseModel], loc: tuple[str, ...]) -> str:
    """What was wrong at ``loc``: never the value of a secret, never a whole table."""
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {loc[-1]!r}{hint} (valid keys: {', '.join(sorted(known))})"
    if kind == "missing":
        field = _field_info(model, loc)
        what = f": {field.description}" if field is not None and field.description else ""
        return f"required key is missing{what}"
    found, message = err["input"], str(err["msg"]).removeprefix("Value error, ")
    typed_secret = any(_is_secret_type(a) for a in _annotations_along(model, loc))
    # a reference expected (in a list or table of secrets the key path holds an index or name)
    typed_secret = typed_secret or (err.get("ctx") or {}).get("class_name") == "SecretRef"
    if typed_secret or any(redaction.is_secret_key(part) for part in loc):
        if not isinstance(found, dict) and (
            typed_secret or redaction.holds_inline_secret(loc[-1], found)
        ):  # a value where a { env | file } reference belongs
            return redaction.INLINE_SECRET
        return f"expected: {message} (what is written there is not shown: it may be a secret)"
    if isinstance(found, dict) and kind in ("value_error", "assertion_error"):
        return message  # a rule about the table as a whole: its message says what to change
    return f"found {_shown(found)}; expected: {message}"


def _shown(value: Any) -> str:
    """A value for a message: scalars as written (URL passwords masked), tables by their keys."""
    if isinstance(value, dict):
        return f"a table (keys: {', '.join(map(str, value))})" if value else "an empty table"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, str):
        return repr(redaction.redact_url(value))
    return repr(value)


def _is_secret_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SecretRef | SecretStr):
        return True
    return any(_is_secret_type(arg) for arg in typing.get_args(annotation))


def _annotations_along(model: type[BaseModel], loc: tuple[str, ...]) -> list[Any]:
    """The annotations the key path passes through: model fields, table values, array items.

    A part that matches nothing is a union member's tag in pydantic's error location (e.g.
    ``link.tcp.port``) and is stepped over.
    """
    along: list[Any] = []
    current: list[Any] = [model]
    for part in loc:
        following = [a for c in current for a in _step(c, part)]
        if following:
            along.extend(following)
            current = following
    return along


def _step(annotation: Any, part: str) -> list[Any]:
    results: list[Any] = []
    for member in _members(annotation):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get(part)
            if field is not None:
                results.append(field.annotation)
        elif origin in (dict, Mapping) and len(args) == 2:
            results.append(args[1])
        elif origin in (list, tuple, set, frozenset) and part.isdigit():
            results.extend(a for a in args if a is not Ellipsis)
    return results


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (``X | None``, ``Annotated[A | B, ...]``), else itself."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _models_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[type[BaseModel]]:
    """The models the key path ``loc`` leads to (several for a union of tables)."""
    current: list[Any] = [model]
    for part in loc:
        following = [a for c in current for a in _step(c, part)]
        if following:
            current = following
    return [
        m for c in current for m in _members(c) if isinstance(m, type) and issubclass(m, BaseModel)
    ]


def _field_info(model: type[BaseModel], loc: tuple[str, ...]) -> Any:
    if not loc:
        return None
    for parent in _models_at(model, loc[:-1]):
        if loc[-1] in parent.model_fields:
            return parent.model_fields[loc[-1]]
    return None


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(f for m in _models_at(model, loc) for f in m.model_fields))


def _warnings(model: AgentConfig, file: str, lines: dict[str, int]) -> list[ConfigError]:
    """Valid settings a person should look at before the line runs (none known today; an
    order's near expiry is an alarm of the order, orders/commands.py)."""
    return []


BATCH_MOVED = (
    "the line config no longer holds the work order: the agent is a resident daemon and takes "
    "its orders from the REST API (`edge-agent order submit FILE`), the inbox folder ([orders] "
    'inbox = "/var/lib/edge-agent/inbox") or the L3 link ([l3]). Remove [batch] (and '
    "[batch.serials]) from this file and submit the order as an order file instead: README "
    '"Running the line" shows the same fields as an order'
)


def _batch_moved(file: str, lines: dict[str, int]) -> ConfigError:
    return ConfigError(BATCH_MOVED, file=file, key="batch", line=lines.get("batch"))


def _error_at(file: str, lines: dict[str, int], where: str, message: str) -> ConfigError:
    """A problem at a key path written ``a.b[0].c`` (array items by index)."""
    plain = tuple(re.sub(r"\[\d+\]", "", where).split("."))
    error = _error(file, lines, plain, message)
    return ConfigError(message, file=file, key=where, line=error.line)


def _error(file: str, lines: dict[str, int], loc: tuple[str, ...], message: str) -> ConfigError:
    key = ".".join(loc)
    line = None
    for depth in range(len(loc), 0, -1):
        line = lines.get(".".join(loc[:depth]))
        if line is not None:
            break
    return ConfigError(message, file=file, key=key, line=line)


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key path → line number, for the tables and keys the text defines."""
    found: dict[str, int] = {}
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0] if not raw.lstrip().startswith("[") else raw
        if match := _TABLE.match(line):
            table = [p.strip().strip("\"'") for p in match.group(1).split(".")]
            found.setdefault(".".join(table), number)
        elif match := _KEY.match(line):
            key = [p.strip().strip("\"'") for p in match.group(1).split(".")]
            found.setdefault(".".join(table + key), number)
    return found


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"at line (\d+)", message)
    return int(match.group(1)) if match else None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
