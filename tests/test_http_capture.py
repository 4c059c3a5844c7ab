"""The EPCIS 2.0 capture forwarder against the simulated capture server, over real HTTP."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.upstream.http_capture import HttpCaptureForwarder, _retry_after
from edge_agent import epcis
from edge_agent.contracts import Delivery, Forwarder, OutboxEvent
from edge_agent.errors import ConfigError, DeliveryError
from simulators.upstream.capture_server import CaptureServerSim, check_document

pytestmark = pytest.mark.usefixtures("no_leaks")

HOST = "127.0.0.1"
READ_POINT = "urn:epc:id:sgln:0950600.01340.LINE01"
GTIN = "09506000134352"


def make_events(n: int, batch: str = "B1", start: int = 1) -> list[OutboxEvent]:
    events = []
    for seq in range(start, start + n):
        epc = epcis.sgtin_uri(GTIN, f"S{seq:06d}", 7)
        if seq % 5 == 0:
            body = epcis.decommissioning(epc, READ_POINT, "no-read")
        else:
            body = epcis.commissioning(epc, READ_POINT, "LOT1", "2027-01-31")
        events.append(OutboxEvent(seq, body["eventID"], batch, body["type"], json.dumps(body)))
    return events


def forwarder(sim: CaptureServerSim, **overrides: Any) -> HttpCaptureForwarder:
    settings = sim.driver_config(**{"poll_interval_s": 0.01, "request_timeout_s": 10, **overrides})
    return HttpCaptureForwarder("l3", HttpCaptureForwarder.Config.model_validate(settings))


def ids(events: list[OutboxEvent]) -> list[str]:
    return [e.event_id for e in events]


async def test_delivers_in_order_across_documents_with_payloads_intact(
    capture_sim: CaptureServerSim,
) -> None:
    events = make_events(23)
    async with forwarder(capture_sim, max_events_per_document=5) as fwd:
        assert isinstance(fwd, Forwarder)
        result = await fwd.deliver(events)
    assert result == Delivery(delivered=ids(events))
    assert len(capture_sim.documents) == 5  # 5+5+5+5+3
    assert [e["eventID"] for e in capture_sim.captured] == ids(events)
    # each event as stored, its context lifted into the document's (declared once, at the top)
    stored = [json.loads(e.payload) for e in events]
    assert capture_sim.captured == [{k: v for k, v in e.items() if k != "@context"} for e in stored]
    assert all(doc["@context"] == epcis.CONTEXT for doc in capture_sim.documents)
    assert capture_sim.duplicates == 0


async def test_nothing_to_deliver_sends_nothing(capture_sim: CaptureServerSim) -> None:
    async with forwarder(capture_sim) as fwd:
        assert await fwd.deliver([]) == Delivery()
    assert capture_sim.requests == []


async def test_delivered_only_after_the_job_succeeded(capture_sim: CaptureServerSim) -> None:
    capture_sim.faults.running_polls = 3  # the job says "running" three times first
    events = make_events(2)
    async with forwarder(capture_sim) as fwd:
        result = await fwd.deliver(events)
    assert result.delivered == ids(events)
    polls = [r for r in capture_sim.requests if r[0] == "GET"]
    assert len(polls) == 4


async def test_500s_raise_delivery_error_with_retry_after_then_recover(
    capture_sim: CaptureServerSim,
) -> None:
    capture_sim.faults.fail_captures = 2
    capture_sim.faults.retry_after_s = 7
    events = make_events(3)
    async with forwarder(capture_sim) as fwd:
        for _ in range(2):
            with pytest.raises(DeliveryError) as info:
                await fwd.deliver(events)
            assert info.value.retry_after_s == 7
            assert "500" in str(info.value)
        result = await fwd.deliver(events)
    assert result.delivered == ids(events)
    assert list(capture_sim.events) == ids(events)


async def test_progress_is_kept_when_a_later_document_fails(
    capture_sim: CaptureServerSim,
) -> None:
    events = make_events(6)
    capture_sim.faults.fail_captures, capture_sim.faults.fail_after = 1, 1
    async with forwarder(capture_sim, max_events_per_document=2) as fwd:
        partial = await fwd.deliver(events)
        assert partial == Delivery(delivered=ids(events[:2]))  # the rest stays pending
        rest = await fwd.deliver(events[2:])
    assert rest.delivered == ids(events[2:])
    assert [e["eventID"] for e in capture_sim.captured] == ids(events)


async def test_refused_document_is_split_and_only_the_bad_event_dead_lettered(
    capture_sim: CaptureServerSim,
) -> None:
    events = make_events(7)
    bad = events[4].event_id
    capture_sim.faults.fail_event_ids = {bad}
    async with forwarder(capture_sim) as fwd:
        result = await fwd.deliver(events)
    assert list(result.rejected) == [bad]
    assert "capture job failed" in result.rejected[bad] and bad in result.rejected[bad]
    assert result.delivered == [e for e in ids(events) if e != bad]
    # the good ones arrived in their order, the bad one never
    assert [e["eventID"] for e in capture_sim.captured] == result.delivered


async def test_capture_limit_is_learned_from_413(capture_sim: CaptureServerSim) -> None:
    capture_sim.faults.capture_limit = 6
    events = make_events(30)
    async with forwarder(capture_sim, max_events_per_document=25) as fwd:
        assert (await fwd.deliver(events[:20])).delivered == ids(events[:20])
        refused = [r for r in capture_sim.requests if r[2] == 413]
        assert len(refused) == 2  # 20 -> 10 -> 5: learned
        assert (await fwd.deliver(events[20:])).delivered == ids(events[20:])
    assert [r[2] for r in capture_sim.requests].count(413) == 2
    assert [e["eventID"] for e in capture_sim.captured] == ids(events)


async def test_4xx_on_capture_rejects_with_the_server_reason(
    capture_sim: CaptureServerSim,
) -> None:
    capture_sim.faults.refuse_captures = 1
    events = make_events(1)
    async with forwarder(capture_sim) as fwd:
        result = await fwd.deliver(events)
    assert result.delivered == []
    reason = result.rejected[events[0].event_id]
    assert "400" in reason and "simulated refusal" in reason


async def test_job_failure_rejects(capture_sim: CaptureServerSim) -> None:
    capture_sim.faults.fail_jobs = 1
    events = make_events(1)
    async with forwarder(capture_sim) as fwd:
        result = await fwd.deliver(events)
    assert result.rejected == {
        events[0].event_id: "capture job failed: Capture failed; simulated job failure"
    }
    assert capture_sim.captured == []


async def test_invalid_document_is_refused_by_the_simulator() -> None:
    # The simulator's own gate: an event without eventID is a 400, which dead-letters it.
    async with CaptureServerSim() as sim:
        body = epcis.commissioning(epcis.sgtin_uri(GTIN, "X1", 7), READ_POINT, "L", "2027-01-31")
        del body["eventTime"]
        event = OutboxEvent(1, body["eventID"], "B1", "ObjectEvent", json.dumps(body))
        async with forwarder(sim) as fwd:
            result = await fwd.deliver([event])
    assert "eventTime is missing" in result.rejected[event.event_id]


async def test_token_is_sent_and_a_wrong_one_is_retried_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("L3_TOKEN", "s3cret")
    events = make_events(2)
    async with CaptureServerSim(token="s3cret") as sim:
        async with forwarder(sim, token={"env": "L3_TOKEN"}) as fwd:
            assert (await fwd.deliver(events)).delivered == ids(events)
        assert set(sim.authorizations) == {"Bearer s3cret"}
        monkeypatch.setenv("L3_TOKEN", "wrong")
        async with forwarder(sim, token={"env": "L3_TOKEN"}) as fwd:
            with pytest.raises(DeliveryError, match=r"401.*check the token"):
                await fwd.deliver(make_events(1, start=10))


async def test_a_rotated_token_file_is_picked_up_after_a_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    async with CaptureServerSim(token="new") as sim:
        async with forwarder(sim, token={"file": str(token_file)}) as fwd:
            with pytest.raises(DeliveryError, match="check the token"):
                await fwd.deliver(make_events(1))
            token_file.write_text("new\n")
            with pytest.raises(DeliveryError, match="re-read"):
                await fwd.deliver(make_events(1))
            events = make_events(2)
            assert (await fwd.deliver(events)).delivered == ids(events)
        assert sim.authorizations[:2] == ["Bearer old", "Bearer old"]
        assert set(sim.authorizations[2:]) == {"Bearer new"}


async def test_missing_token_is_a_config_error(capture_sim: CaptureServerSim) -> None:
    fwd = forwarder(capture_sim, token={"env": "EDGE_AGENT_TEST_UNSET_TOKEN"})
    # at start (check-config, run): a config error naming the variable and its key
    with pytest.raises(
        ConfigError, match="token: environment variable EDGE_AGENT_TEST_UNSET_TOKEN"
    ):
        await fwd.preflight()
    # later (the variable went away): a delivery failure the forwarder loop logs once and retries
    with pytest.raises(DeliveryError, match="token: environment variable EDGE_AGENT_TEST_UNSET"):
        async with fwd:
            pass


async def test_unreachable_server_and_timeouts_are_transient() -> None:
    async with CaptureServerSim() as sim:
        sim.faults.delay_s = 2.0
        async with forwarder(sim, request_timeout_s=0.2) as fwd:
            with pytest.raises(DeliveryError, match="Timeout"):
                await fwd.deliver(make_events(1))
        url = sim.url
    config = HttpCaptureForwarder.Config(type="epcis-http", url=url)
    async with HttpCaptureForwarder("gone", config) as fwd:
        with pytest.raises(DeliveryError, match=r"gone: .*Connect"):
            await fwd.deliver(make_events(1))


async def test_transient_poll_failures_are_polled_through(capture_sim: CaptureServerSim) -> None:
    capture_sim.faults.fail_polls = 2
    events = make_events(3)
    async with forwarder(capture_sim) as fwd:
        assert (await fwd.deliver(events)).delivered == ids(events)


async def test_unreadable_job_answer_is_transient(capture_sim: CaptureServerSim) -> None:
    capture_sim.faults.garbage_polls = 1
    events = make_events(2)
    async with forwarder(capture_sim) as fwd:
        with pytest.raises(DeliveryError, match="unreadable"):
            await fwd.deliver(events)
        capture_sim.faults.odd_polls = 1  # a job answer of another shape is doubt, not failure
        with pytest.raises(DeliveryError, match="neither running nor a success flag"):
            await fwd.deliver(events)
        assert (await fwd.deliver(events)).delivered == ids(events)
        # the abandoned job still completed on the server: a duplicate, de-duplicated by eventID
        await asyncio.sleep(capture_sim.faults.job_s or 0)
    assert list(capture_sim.events) == ids(events) and capture_sim.duplicates == 4


async def test_job_still_running_at_the_timeout_is_transient(
    capture_sim: CaptureServerSim,
) -> None:
    capture_sim.faults.running_polls, capture_sim.faults.job_s = 10_000, None
    async with forwarder(capture_sim, job_timeout_s=0.3) as fwd:
        with pytest.raises(DeliveryError, match="still running"):
            await fwd.deliver(make_events(1))
    assert capture_sim.captured == []


@pytest.mark.parametrize(
    "document, problem",
    [
        ([], "not a JSON object"),
        ({"type": "EPCISDocument"}, "'@context' is missing"),
        (
            {
                "@context": [],
                "type": "EPCISDocument",
                "schemaVersion": "2.0",
                "creationDate": "x",
                "epcisBody": {"eventList": [{"type": "Nope"}]},
            },
            "is not an EPCIS event type",
        ),
    ],
)
def test_simulator_document_check(document: Any, problem: str) -> None:
    found = check_document(document)
    assert found is not None and problem in found
    assert check_document(epcis.document([])) is None


# --- TLS -----------------------------------------------------------------------------------


def _pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        name: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool, usage: Any = None
    ) -> Any:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
            )
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            if usage == ExtendedKeyUsageOID.SERVER_AUTH:
                san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))])
                builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def write(name: str, key: Any, certificate: Any) -> tuple[Path, Path]:
        key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("test CA", ca_key, None, None, ca=True)
    paths: dict[str, Path] = {}
    _, paths["ca"] = write("ca", ca_key, ca_cert)
    for name, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = cert(name, key, ca_cert.subject, ca_key, ca=False, usage=usage)
        paths[f"{name}_key"], paths[name] = write(name, key, certificate)
    return paths


async def test_mutual_tls(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    server_tls.load_cert_chain(pki["server"], pki["server_key"])
    server_tls.verify_mode = ssl.CERT_REQUIRED
    events = make_events(3)
    async with CaptureServerSim(ssl_context=server_tls) as sim:
        assert sim.url.startswith("https://")
        tls = {"ca_file": pki["ca"], "client_cert": pki["client"], "client_key": pki["client_key"]}
        async with forwarder(sim, **tls) as fwd:
            assert (await fwd.deliver(events)).delivered == ids(events)
        # without a client certificate the server refuses the handshake: transient, not rejected
        async with forwarder(sim, ca_file=pki["ca"], request_timeout_s=5) as fwd:
            with pytest.raises(DeliveryError):
                await fwd.deliver(make_events(1, start=10))
        # a server the CA does not vouch for is not talked to
        async with forwarder(sim) as fwd:
            with pytest.raises(DeliveryError, match="certificate"):
                await fwd.deliver(make_events(1, start=20))
    assert list(sim.events) == ids(events)


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    config = HttpCaptureForwarder.Config(
        type="epcis-http", url="https://127.0.0.1:1", ca_file=tmp_path / "missing.pem"
    )
    with pytest.raises(ConfigError, match="ca_file"):
        HttpCaptureForwarder("l3", config)._ssl_context()


# --- official examples, config, helpers ----------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "epcis-hash"


async def test_official_example_events_arrive_unchanged(capture_sim: CaptureServerSim) -> None:
    path = EXAMPLES / "examples" / "epcisDocWithVariousEventTypes.jsonld"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    originals = json.loads(path.read_text())["epcisBody"]["eventList"]
    events = [
        OutboxEvent(i, e.get("eventID") or f"urn:uuid:{i}", None, e["type"], json.dumps(e))
        for i, e in enumerate(originals)
    ]
    async with forwarder(capture_sim, max_events_per_document=4) as fwd:
        result = await fwd.deliver(events)
    assert result.delivered == ids(events)
    assert capture_sim.captured == originals


def test_config_is_strict() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra"):
        HttpCaptureForwarder.Config.model_validate(
            {"type": "epcis-http", "url": "http://x:1", "tokn": {"env": "T"}}
        )
    with pytest.raises(ValidationError, match="url"):
        HttpCaptureForwarder.Config.model_validate({"type": "epcis-http", "url": "ftp://x"})
    with pytest.raises(ValidationError, match="token"):
        HttpCaptureForwarder.Config.model_validate(
            {"type": "epcis-http", "url": "http://x:1", "token": "inline-secret"}
        )


def test_registry_selects_the_forwarder() -> None:
    from edge_agent.registry import driver_class

    assert driver_class("forwarder", "epcis-http") is HttpCaptureForwarder


def test_retry_after_forms() -> None:
    from email.utils import format_datetime

    assert _retry_after("120") == 120.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
    parsed = _retry_after(format_datetime(later, usegmt=True))
    assert parsed is not None and 50 < parsed <= 60
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_standalone_simulator_serves_captures() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.upstream.capture_server",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.split(" on ", 1)[1].strip().removesuffix("/capture")
        config = HttpCaptureForwarder.Config(type="epcis-http", url=url, poll_interval_s=0.01)
        events = make_events(2)
        async with HttpCaptureForwarder("l3", config) as fwd:
            assert (await fwd.deliver(events)).delivered == ids(events)
    finally:
        proc.terminate()
        await proc.wait()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(document=JSON)
def test_simulator_check_never_crashes(document: Any) -> None:
    found = check_document(document)
    assert found is None or isinstance(found, str)


@given(
    events=st.lists(
        st.dictionaries(
            st.sampled_from(["type", "eventTime", "action", "eventID", "eventTimeZoneOffset"]),
            JSON,
            max_size=5,
        ),
        max_size=3,
    )
)
def test_simulator_check_never_crashes_on_event_lists(events: list[Any]) -> None:
    document = {**epcis.document([]), "epcisBody": {"eventList": events}}
    found = check_document(document)
    assert found is None or isinstance(found, str)


async def test_simulator_lists_jobs_and_events(capture_sim: CaptureServerSim) -> None:
    import aiohttp

    events = make_events(3)
    capture_sim.faults.fail_jobs = 1
    async with forwarder(capture_sim) as fwd:
        await fwd.deliver(events[:1])
        await fwd.deliver(events)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{capture_sim.url}/capture") as response:
            jobs = await response.json()
        async with session.get(f"{capture_sim.url}/events") as response:
            query = await response.json()
    assert [job["success"] for job in jobs] == [False, True]
    listed = query["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert [e["eventID"] for e in listed] == ids(events)


async def test_simulator_answers_garbage_with_400(capture_sim: CaptureServerSim) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for body in (b"\xff\xfe not json", b"[1, 2", b"{}"):
            async with session.post(f"{capture_sim.url}/capture", data=body) as response:
                assert response.status == 400
                assert (await response.json(content_type=None))["status"] == 400
        async with session.get(f"{capture_sim.url}/capture/999") as response:
            assert response.status == 404
    assert capture_sim.documents == []
