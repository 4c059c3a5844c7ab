"""Config ``type`` -> driver, and the typed factories the core makes forwarders and L3 links with."""

from __future__ import annotations

from pathlib import Path

from edge_agent import registry
from edge_agent.contracts import Forwarder, L3Link, LineContext

LINE = LineContext(site="S7", line="L3")


def test_every_forwarder_is_made_with_the_line_context() -> None:
    configs = {
        "mqtt": {"type": "mqtt", "host": "127.0.0.1"},
        "epcis-http": {"type": "epcis-http", "url": "http://127.0.0.1:1/epcis"},
    }
    assert set(configs) == set(registry.BUILTIN["forwarder"]), "a forwarder without a case here"
    for type_name, table in configs.items():
        driver = registry.driver_class("forwarder", type_name)
        made = registry.make_forwarder(driver, "up", driver.Config(**table), LINE)
        assert isinstance(made, Forwarder) and made.name == "up"
    mqtt = registry.make_forwarder(
        registry.driver_class("forwarder", "mqtt"), "up", {"type": "mqtt", "host": "h"}, LINE
    )
    assert mqtt.client_id == "edge-agent-S7-L3"  # type: ignore[attr-defined]


def test_every_l3_link_is_made_with_the_line_context(tmp_path: Path) -> None:
    configs = {
        "http": {"type": "http", "url": "http://127.0.0.1:1/l3"},
        "mqtt": {"type": "mqtt", "host": "127.0.0.1"},
        "folder": {"type": "folder", "folder": str(tmp_path)},
    }
    assert set(configs) == set(registry.BUILTIN["l3"]), "an L3 link without a case here"
    for type_name, table in configs.items():
        driver = registry.driver_class("l3", type_name)
        link = registry.make_l3_link(driver, driver.Config(**table), LINE)
        assert isinstance(link, L3Link)
    mqtt = registry.make_l3_link(
        registry.driver_class("l3", "mqtt"),
        registry.driver_class("l3", "mqtt").Config(type="mqtt", host="h"),
        LINE,
    )
    assert mqtt.client_id == "edge-agent-S7-L3-l3"  # type: ignore[attr-defined]
    assert mqtt.prefix == "serialization/S7/L3/l3"  # type: ignore[attr-defined]
