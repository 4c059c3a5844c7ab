"""The L3 wire codec (no I/O), the ``[l3]`` section as the drivers validate it, and the L3
simulator started standalone and by the simulator runner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.l3 import wire
from edge_agent import registry
from edge_agent.config.loader import ConfigInvalid, _device, _key_lines
from edge_agent.config.models import SimulatorsSection
from edge_agent.contracts import L3Message, SerialPage
from simulators.runner import SimulatorSet
from tests.helpers.l3 import l3_order

text = st.text(min_size=1, max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(text, text, text, st.lists(text, max_size=20), st.booleans())
def test_a_page_survives_the_wire(
    request_id: str, order_id: str, gtin: str, serials: list[str], exhausted: bool
) -> None:
    page = SerialPage(request_id, order_id, gtin, tuple(serials), exhausted)
    assert wire.parse_page(wire.decode(wire.encode(wire.page_document(page)))) == page


@given(json_values)
def test_any_json_is_a_page_or_a_wire_error(document: Any) -> None:
    for parse in (wire.parse_page, wire.parse_serial_request, wire.parse_message):
        with contextlib.suppress(wire.WireError):
            parse(document)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_a_wire_error(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(data)


@given(text, st.sampled_from(wire.MESSAGE_KINDS), text, st.dictionaries(st.text(), st.text()))
def test_a_message_survives_the_wire(
    message_id: str, kind: str, order_id: str, payload: dict[str, str]
) -> None:
    message = L3Message(message_id, kind, order_id, payload, 12.5)
    document = wire.parse_message(wire.decode(wire.encode(wire.message_document(message))))
    assert document == wire.message_document(message)


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ({"request_id": "r", "order_id": "o", "gtin": "g", "serials": "A1"}, "list of strings"),
        ({"request_id": "r", "order_id": "o", "gtin": "g", "serials": [1]}, "list of strings"),
        ({"request_id": "", "order_id": "o", "gtin": "g", "serials": []}, "'request_id'"),
        ({"request_id": "r", "order_id": "o", "gtin": "g", "serials": [], "exhausted": 1}, "true"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
def test_a_malformed_page_says_what_is_wrong(document: Any, why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        wire.parse_page(document)


def test_message_file_names_are_safe_on_any_file_system() -> None:
    assert wire.message_file_name("ORD-1:return") == "ORD-1.return.json"
    assert wire.message_file_name("ORD-1:refused:ab12") == "ORD-1.refused.ab12.json"


# --- the [l3] section -------------------------------------------------------------------------


def l3_section(file_text: str) -> Any:
    import tomllib

    section = tomllib.loads(file_text)["l3"]
    return _device("l3", section, "line.toml", _key_lines(file_text))


def test_the_l3_section_is_validated_by_the_driver_its_type_selects() -> None:
    spec = l3_section(
        '[l3]\ntype = "http"\nurl = "https://l3.example.com/lines/L1"\n'
        'token = { env = "L3_TOKEN" }\npage_size = 1000\nlow_water = 300\n'
    )
    assert spec.config.page_size == 1000 and spec.config.low_water == 300
    assert spec.driver is registry.driver_class("l3", "http")


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('type = "htp"', "l3.type", "did you mean 'http'"),
        ('type = "http"\nurl = "https://x.example"\npage_sise = 5', "l3.page_sise", "page_size"),
        ('type = "mqtt"\nhost = "b"\nurl = "https://x.example"', "l3.url", "unknown key"),
        ('type = "http"\nurl = "https://x.example"\ntoken = "abc"', "l3.token", "never written"),
        ('type = "folder"\nfolder = "/x"\nlow_water = 0', "l3.low_water", "greater than"),
        ('type = "http"', "l3.url", "required"),
    ],
)
def test_a_wrong_l3_section_names_the_key_and_the_fix(body: str, key: str, message: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        l3_section(f"[l3]\n{body}\n")
    problem = next(p for p in caught.value.problems if p.key == key)
    assert message in str(problem) and problem.line is not None and problem.file == "line.toml"
    assert "abc" not in str(caught.value)  # an inline secret is never echoed


# --- the simulator, standalone and from the runner --------------------------------------------


async def test_the_simulator_runner_starts_the_l3_simulator(tmp_path: Path) -> None:
    orders = tmp_path / "orders.json"
    orders.write_text(json.dumps([l3_order("ORD-1"), l3_order("ORD-2")]))
    section = SimulatorsSection(l3={"type": "http", "orders_file": str(orders), "pool_size": 3})
    async with SimulatorSet(section) as sims, aiohttp.ClientSession() as http:
        config = sims.device_configs()["l3"]
        assert config == {"type": "http", "url": f"http://127.0.0.1:{sims.ports()['l3']}"}
        async with http.get(config["url"] + "/orders") as answer:
            assert [o["id"] for o in (await answer.json())["orders"]] == ["ORD-1", "ORD-2"]
        truth = sims.ground_truth()["l3"]
    assert truth["pages_handed_out"] == 0 and truth["duplicates"] == 0


async def test_the_l3_simulator_runs_standalone() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.l3", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        config = json.loads(line)["l3"]
        async with aiohttp.ClientSession() as http:
            body = {"request_id": "r1", "order_id": "O", "gtin": "09506000134352", "count": 4}
            async with http.post(config["url"] + "/serials/requests", json=body) as answer:
                page = wire.parse_page(await answer.json())
        assert len(page.serials) == 4 and page.request_id == "r1"
    finally:
        proc.terminate()
        await proc.wait()
