"""A simulated L3 site server: one site (orders, serial pools, what the line sent back) served
over HTTP, and over MQTT and an exchange folder when attached. Faults are an API
(``sim.faults``, ``go_away()`` / ``come_back()``). Standalone: ``python -m simulators.l3``;
in pytest: the ``l3_sim`` fixture; in ``edge-agent simulate``: ``[simulators.l3]``."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from simulators.l3.folder import L3FolderResponder
from simulators.l3.http import L3HttpServer
from simulators.l3.mqtt import DEFAULT_PREFIX, L3MqttResponder
from simulators.l3.site import L3Faults, L3Site


class L3SimConfig(BaseModel):
    """``[simulators.l3]``: the L3 site-server simulator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["http", "mqtt", "folder"] = Field("http", description="Transport it serves")
    port: int = Field(0, ge=0, le=65535, description="http: TCP port (0 = any free port)")
    pool_size: int | None = Field(None, ge=0, description="Serials per GTIN; omit = unlimited")
    seed: int = Field(1, description="Random seed of the serials it hands out")
    token_env: str | None = Field(None, description="http: variable holding the bearer token")
    broker_host: str = Field("127.0.0.1", description="mqtt: broker host")
    broker_port: int = Field(1883, ge=1, le=65535, description="mqtt: broker port")
    topic_prefix: str = Field(DEFAULT_PREFIX, description="mqtt: topic prefix")
    folder: Path | None = Field(None, description="folder: the exchange folder")
    orders_file: Path | None = Field(
        None, description="JSON file holding a list of orders to hand out at start"
    )


class L3Sim:
    def __init__(
        self,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        pool_size: int | None = None,
        seed: int = 1,
        serial_length: int = 12,
    ) -> None:
        self.site = L3Site(pool_size=pool_size, seed=seed, serial_length=serial_length)
        self.http = L3HttpServer(self.site, token=token, ssl_context=ssl_context)
        self.mqtt: L3MqttResponder | None = None
        self.folder: L3FolderResponder | None = None
        self.serve: str = "http"  # the transport driver_config() names
        self._config: L3SimConfig | None = None
        self._away: list[Any] = []

    # --- runner interface (simulators/runner.py) ----------------------------------------------

    @classmethod
    def from_section(cls, line: Any, section: Mapping[str, Any] | L3SimConfig) -> L3Sim:
        config = L3SimConfig.model_validate(section)
        token = os.environ.get(config.token_env) if config.token_env else None
        sim = cls(token=token, pool_size=config.pool_size, seed=config.seed)
        sim.serve = config.type
        sim._config = config
        return sim

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        config = self._config
        await self.http.start(host, port or (config.port if config else 0))
        if config is None:
            return
        if config.type == "mqtt":
            await self.attach_mqtt(
                config.broker_host, config.broker_port, prefix=config.topic_prefix
            )
        if config.type == "folder":
            if config.folder is None:
                raise ValueError("[simulators.l3] type = 'folder' needs 'folder'")
            await self.attach_folder(config.folder)
        if config.orders_file is not None:
            import json

            for document in json.loads(config.orders_file.read_text(encoding="utf-8")):
                self.add_order(document)

    async def stop(self) -> None:
        if self.folder is not None:
            await self.folder.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        await self.http.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """The agent's ``[l3]`` section that talks to this simulator (the token is given by
        reference, e.g. ``token = {"env": "L3_TOKEN"}``)."""
        if self.serve == "mqtt" and self.mqtt is not None:
            return self.mqtt.driver_config(**overrides)
        if self.serve == "folder" and self.folder is not None:
            return self.folder.driver_config(**overrides)
        return {"type": "http", "url": self.url, **overrides}

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        return self.http.url

    def ground_truth(self) -> dict[str, Any]:
        return {
            "orders_acknowledged": list(self.site.orders_acknowledged),
            "pages_handed_out": self.site.pages_handed_out,
            "serials_handed_out": sum(len(v) for v in self.site.handed_out.values()),
            "returns": len(self.site.returns),
            "serials_returned": len(self.site.returned_serials()),
            "reports": len(self.site.reports),
            "refusals": len(self.site.refusals),
            "duplicates": self.site.duplicates,
        }

    # --- orders and what came back ------------------------------------------------------------

    @property
    def faults(self) -> L3Faults:
        return self.site.faults

    def add_order(self, document: dict[str, Any]) -> None:
        """Hand this order to the line (downloaded over HTTP, published on MQTT, dropped into
        the folder, whichever is attached)."""
        self.site.add_order(document)
        if self.mqtt is not None:
            self.mqtt.offer(document)
        if self.folder is not None:
            self.folder.offer(document)

    @property
    def returns(self) -> dict[str, dict[str, Any]]:
        return self.site.returns

    @property
    def reports(self) -> dict[str, dict[str, Any]]:
        return self.site.reports

    @property
    def refusals(self) -> dict[str, dict[str, Any]]:
        return self.site.refusals

    @property
    def duplicates(self) -> int:
        return self.site.duplicates

    # --- transports ---------------------------------------------------------------------------

    async def attach_mqtt(self, host: str, port: int, **options: Any) -> L3MqttResponder:
        """Also serve through an MQTT broker (the sim is a client of it)."""
        self.mqtt = L3MqttResponder(self.site, host, port, **options)
        await self.mqtt.start()
        self.serve = "mqtt"
        return self.mqtt

    async def attach_folder(self, folder: Path, **options: Any) -> L3FolderResponder:
        self.folder = L3FolderResponder(self.site, folder, **options)
        await self.folder.start()
        self.serve = "folder"
        return self.folder

    async def go_away(self) -> None:
        """L3 is gone: the HTTP port closes, the MQTT client disconnects, the folder is not
        looked at. Everything it holds is kept for ``come_back()``."""
        self._away = [t for t in (self.http, self.mqtt, self.folder) if t and t.running]
        for transport in self._away:
            await transport.stop()

    async def come_back(self) -> None:
        for transport in self._away:
            if transport is self.http:
                await self.http.start(self.http.host, self.http.port)
            else:
                await transport.start()
        self._away = []
