"""Load a TOML config, validate it, and report every problem with file, line and key path."""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edge_agent import registry
from edge_agent.config.models import AgentConfig, SecretRef
from edge_agent.errors import ConfigError

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


def load_config(path: str | Path) -> LoadedConfig:
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
    """Validate config text; ``overrides`` merge into it, ``sections`` replace whole sections."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_error_line(str(exc))
        raise ConfigError(f"not valid TOML: {exc}", file=file, line=line) from exc
    if overrides:
        data = _merge(data, overrides)
    if sections:
        data |= sections
    lines = _key_lines(text)
    problems: list[ConfigError] = []
    model = None
    try:
        model = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(exc, AgentConfig, (), file, lines))
    devices: dict[str, DeviceSpec] = {}
    for kind in ("printer", "camera", "plc"):
        section = data.get(kind)
        if not isinstance(section, dict):
            continue  # reported above as missing or of the wrong type
        try:
            devices[kind] = _device(kind, section, file, lines)
        except ConfigInvalid as exc:
            problems.extend(exc.problems)
    forwarders = _forwarders(data, file, lines, problems)
    if problems or model is None:
        raise ConfigInvalid(problems)
    return LoadedConfig(
        file, model, devices["printer"], devices["camera"], devices["plc"], forwarders
    )


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
        config = driver.Config.model_validate(section)
    except ValidationError as exc:
        raise ConfigInvalid(_problems(exc, driver.Config, (kind,), file, lines)) from exc
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
    field = _field_info(model, loc)
    expects_secret = (err.get("ctx") or {}).get("class_name") == SecretRef.__name__
    if expects_secret or (field is not None and _model_type(field.annotation) is SecretRef):
        # Never echo what was written there: it may be the secret itself (also in a list or
        # table of secrets, where the key path holds an index or a name).
        return 'a secret is never written inline; use { env = "NAME" } or { file = "/path" }'
    message = err["msg"].removeprefix("Value error, ")
    return f"found {err['input']!r}; expected: {message}"


def _model_at(model: type[BaseModel], loc: tuple[str, ...]) -> Any:
    """The model the key path ``loc`` leads to, or None if it leaves the models."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return None
        current = _model_type(fields[part].annotation)
    return current


def _field_info(model: type[BaseModel], loc: tuple[str, ...]) -> Any:
    if not loc:
        return None
    return getattr(_model_at(model, loc[:-1]), "model_fields", {}).get(loc[-1])


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    return list(getattr(_model_at(model, loc), "model_fields", {}))


def _model_type(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


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
