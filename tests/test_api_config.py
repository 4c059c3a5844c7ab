"""The [api] and [orders] config sections: checked like every other section, secrets resolved at
start with the key that holds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.api.auth import MIN_TOKEN_LENGTH
from edge_agent.api.service import api_server, bearer_tokens
from edge_agent.config import parse_config
from edge_agent.config.loader import ConfigInvalid
from edge_agent.config.models import ApiSection
from edge_agent.errors import ConfigError
from tests.helpers.api import make_rig, services

DEMO = (Path(__file__).parent.parent / "config" / "demo.toml").read_text()


def problems(extra: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as raised:
        parse_config(DEMO + extra, "line.toml")
    return [str(p) for p in raised.value.problems]


def test_api_and_orders_sections_with_their_defaults() -> None:
    config = parse_config(
        DEMO
        + '\n[orders]\ninbox = "/srv/orders"\n'
        + '\n[api]\n[[api.tokens]]\nname = "mes"\ntoken = { env = "MES_TOKEN" }\n'
    )
    api, orders = config.model.api, config.model.orders
    assert api is not None and (api.host, api.port) == ("127.0.0.1", 8470)
    assert api.tokens[0].name == "mes" and api.tls_cert is None
    assert str(orders.inbox) == "/srv/orders"
    assert (orders.auto_start, orders.auto_close, orders.expiry_warn_days) == (True, True, 30)
    assert parse_config(DEMO).model.api is None  # no [api]: no API


@pytest.mark.parametrize(
    "extra",
    [
        '\n[api]\n[[api.tokens]]\nname = "mes"\ntoken = "s3cr3t-inline"\n',
        '\n[opcua_server]\nsecurity_policy = "None"\n[opcua_server.users]\nalice = "s3cr3t-pw"\n',
    ],
)
def test_an_inline_secret_in_a_list_or_table_is_refused_without_echoing_it(extra: str) -> None:
    found = problems(extra)
    assert any("never written inline" in p for p in found), found
    assert not any("s3cr3t" in p for p in found)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("\n[api]\ntokens = []\n", "api.tokens: found an array of 0"),
        (
            '\n[api]\n[[api.tokens]]\nname = "a"\ntoken = { env = "X" }\n'
            '[[api.tokens]]\nname = "a"\ntoken = { env = "Y" }\n',
            "token names must be unique",
        ),
        (
            '\n[api]\ntls_cert = "/etc/c.pem"\n[[api.tokens]]\nname = "a"\ntoken = { env = "X" }\n',
            "give both tls_cert and tls_key",
        ),
        (
            '\n[api]\nprot = 1\n[[api.tokens]]\nname = "a"\ntoken = { env = "X" }\n',
            "did you mean 'port'",
        ),
        ("\n[orders]\ninbox_keep = 0\n", "orders.inbox_keep"),
    ],
)
def test_section_mistakes_name_the_key(extra: str, expected: str) -> None:
    assert any(expected in p for p in problems(extra)), problems(extra)


def test_tokens_are_resolved_at_start_with_the_key_that_holds_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def section(token: dict[str, str]) -> ApiSection:
        return ApiSection.model_validate({"tokens": [{"name": "mes", "token": token}]})

    monkeypatch.delenv("EDGE_AGENT_TEST_TOKEN", raising=False)
    with pytest.raises(
        ConfigError, match=r"api.tokens\[0\].token: environment variable EDGE_AGENT_TEST_TOKEN"
    ):
        bearer_tokens(section({"env": "EDGE_AGENT_TEST_TOKEN"}))
    monkeypatch.setenv("EDGE_AGENT_TEST_TOKEN", "short")
    with pytest.raises(ConfigError, match=rf"shorter than {MIN_TOKEN_LENGTH} characters"):
        bearer_tokens(section({"env": "EDGE_AGENT_TEST_TOKEN"}))
    with pytest.raises(ConfigError, match=r"api.tokens\[0\].token: cannot read the secret file"):
        bearer_tokens(section({"file": str(tmp_path / "missing")}))
    monkeypatch.setenv("EDGE_AGENT_TEST_TOKEN", "long-enough-token-0123456789")
    assert bearer_tokens(section({"env": "EDGE_AGENT_TEST_TOKEN"}))


async def test_a_bad_certificate_is_a_config_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    section = ApiSection.model_validate(
        {
            "port": 0,
            "tls_cert": str(tmp_path / "c.pem"),
            "tls_key": str(tmp_path / "k.pem"),
            "tokens": [{"name": "mes", "token": {"file": str(tmp_path / "c.pem")}}],
        }
    )
    with pytest.raises(ConfigError, match="cannot load the TLS certificate or key"):
        async with api_server(section, services(make_rig(tmp_path / "state"))):
            pass


def test_the_readme_order_examples_are_valid(tmp_path: Path) -> None:
    import json
    import re
    import sqlite3
    import tomllib

    from edge_agent.db import open_db
    from edge_agent.orders.validation import OrderRules, check_order, parse_order

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Work orders") : readme.index("## REST API")]
    examples_json = re.findall(r"```json\n(.*?)```", section, re.S)
    examples_toml = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert examples_json and examples_toml
    whole = [json.loads(e) for e in examples_json if e.lstrip().startswith("{")]
    # a fragment (one key of an order, e.g. its aggregation plan) goes into the first example
    parts = [json.loads("{" + e + "}") for e in examples_json if not e.lstrip().startswith("{")]
    documents = [*whole, *({**whole[0], **part} for part in parts)]
    documents += [tomllib.loads(e) for e in examples_toml]
    conn: sqlite3.Connection = open_db(tmp_path)
    for data in documents:
        order = parse_order(data, "readme")
        assert check_order(order, conn, "readme", OrderRules()) == []


def test_the_readme_api_section_is_valid() -> None:
    import re
    import tomllib

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## REST API") : readme.index("## Audit trail")]
    (example,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    api = ApiSection.model_validate(tomllib.loads(example)["api"])
    assert [t.name for t in api.tokens] == ["mes", "operator-cli"]
