"""`journeys collect` against the real broker: documented payloads in, records on the raw topics.

The app runs in-process on aiohttp's test server; what it sends is read back
from Kafka. Provider secrets and signatures are made the way each provider
documents them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hostile import bodies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.collector import (
    SEGMENT_CALL_LIMIT,
    CollectorConfig,
    KafkaSender,
    create_collector,
    twilio_signature,
)
from ingest.context import IngestContext
from ingest.kafka import ensure_topics
from ingest.pii import PiiHasher
from ingest.topics import Topics
from processors.stream.broker import tansu_process

FIXTURES = Path(__file__).parents[1] / "fixtures"
WRITE_KEY = "wk_test_0123456789"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
META_SECRET = "meta-app-secret"
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_KEY = base64.b64encode(
    PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_fuzz_runs = itertools.count()
SEGMENT_CALLS = ("track", "page", "screen", "identify", "alias", "group")


def basic(user: str) -> dict[str, str]:
    """HTTP Basic with `user` and an empty password, as Segment's libraries send the write key."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def sendgrid_signed(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """SendGrid's headers: ECDSA P-256/SHA-256 over the timestamp followed by the raw body, base64."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = PRIVATE_KEY.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        **JSON,
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def meta_signed(body: bytes) -> dict[str, str]:
    return {
        **JSON,
        "X-Hub-Signature-256": "sha256=" + hmac.new(META_SECRET.encode(), body, "sha256").hexdigest(),
    }


def fixture(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def headers_of(message: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in message.headers}


def closed_port() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


Call = Callable[[TestClient], Awaitable[None]]


def serve(bootstrap: str, topics: Topics, pii_key: str, call: Call, **config: Any) -> None:
    """Run `call` against a collector sending to `bootstrap`."""
    settings = CollectorConfig(
        bootstrap=bootstrap,
        topics=topics,
        segment_write_key=WRITE_KEY,
        sendgrid_verification_key=PUBLIC_KEY,
        twilio_auth_token=TWILIO_TOKEN,
        meta_verify_token="verify-me",
        meta_app_secret=META_SECRET,
        send_timeout=2.0,
    )
    settings = CollectorConfig(**{**settings.__dict__, **config})
    sender = KafkaSender(settings.bootstrap, settings.send_timeout, topics.raw("web"))

    async def main() -> None:
        app = create_collector(settings, IngestContext(hasher=PiiHasher(pii_key)), sender)
        async with TestClient(TestServer(app)) as client:
            await call(client)

    try:
        asyncio.run(main())
    finally:
        sender.close()


@pytest.fixture
def topics(kafka_bootstrap: str, topic_prefix: str) -> Topics:
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    return topics


def test_each_endpoint_accepts_its_documented_payload(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any
) -> None:
    sendgrid = fixture("sendgrid/events.json")
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
    social = fixture("social/export.jsonl").splitlines()[0]
    social_array = b"[" + b",".join(fixture("social/export.jsonl").splitlines()[:3]) + b"]"
    meta = [fixture(f"meta/{name}.json") for name in ("messenger", "page_feed", "instagram_comments")]
    singles = {call: orjson.loads(fixture(f"segment/{call}.json")) for call in SEGMENT_CALLS[1:]}
    track = orjson.loads(fixture("segment/track_order_completed.json"))
    track.pop("type")  # a single call takes its type from the path

    async def call(client: TestClient) -> None:
        auth = {**JSON, **basic(WRITE_KEY)}
        response = await client.post("/v1/track", data=orjson.dumps(track), headers=auth)
        assert response.status == 200, await response.text()
        assert await response.json() == {"accepted": 1, "rejected": []}
        for name, body in singles.items():
            response = await client.post(f"/v1/{name}", data=orjson.dumps(body), headers=auth)
            assert response.status == 200, (name, await response.text())
        response = await client.post("/v1/batch", data=fixture("segment/batch.json"), headers=auth)
        assert response.status == 200 and (await response.json())["accepted"] >= 2
        response = await client.post("/sendgrid/events", data=sendgrid, headers=sendgrid_signed(sendgrid))
        assert response.status == 200, await response.text()
        assert (await response.json())["accepted"] == len(orjson.loads(sendgrid))
        url = str(client.make_url("/twilio/voice/status"))
        signed = {**FORM, "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, twilio)}
        response = await client.post("/twilio/voice/status", data=twilio, headers=signed)
        assert response.status == 200, await response.text()
        for body in (social, social_array):
            response = await client.post("/social", data=body, headers=JSON)
            assert response.status == 200, await response.text()
        for body in meta:
            response = await client.post("/meta/webhook", data=body, headers=meta_signed(body))
            assert response.status == 200, await response.text()

    serve(kafka_bootstrap, topics, pii_key, call)

    web = read_back(kafka_bootstrap, topics.raw("web"), count=len(SEGMENT_CALLS) + 1)
    assert [headers_of(m)["origin"] for m in web] == [
        f"POST /v1/{name}" for name in (*SEGMENT_CALLS, "batch")
    ]
    assert {headers_of(m)["format"] for m in web} == {"segment"}
    assert orjson.loads(web[0].value)["type"] == "track"  # re-serialised with the type from the path
    assert [m.value for m in web[1:]] == [orjson.dumps(b) for b in singles.values()] + [
        fixture("segment/batch.json")  # a body with its own type is forwarded byte for byte
    ]
    (email,) = read_back(kafka_bootstrap, topics.raw("email"), count=1)
    assert email.value == sendgrid
    assert (
        headers_of(email)["format"] == "sendgrid" and headers_of(email)["origin"] == "POST /sendgrid/events"
    )
    (phone,) = read_back(kafka_bootstrap, topics.raw("phone"), count=1)
    assert phone.value == twilio  # the raw form body: the pipeline parses form bodies
    assert (
        headers_of(phone)["format"] == "twilio" and headers_of(phone)["origin"] == "POST /twilio/voice/status"
    )
    social_messages = read_back(kafka_bootstrap, topics.raw("social"), count=5)
    assert [(headers_of(m)["format"], headers_of(m)["origin"]) for m in social_messages] == [
        ("social", "POST /social"),
        ("social", "POST /social"),
        ("meta", "POST /meta/webhook"),
        ("meta", "POST /meta/webhook"),
        ("meta", "POST /meta/webhook"),
    ]
    everything = [*web, email, phone, *social_messages]
    assert all("received_at" in headers_of(m) for m in everything)
    # Keys are keyed hashes of the source identity: no address, number or handle in a key.
    assert all(m.key is not None and b"@" not in m.key and b"+31" not in m.key for m in everything)
    assert read_back(kafka_bootstrap, topics.dead_letters) == []


def test_failed_authentication_is_refused(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any
) -> None:
    body = fixture("sendgrid/events.json")
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
    track = fixture("segment/track_order_completed.json")

    async def call(client: TestClient) -> None:
        missing = await client.post("/v1/track", data=track, headers=JSON)
        assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Basic")
        wrong = await client.post("/v1/track", data=track, headers={**JSON, **basic("other-key")})
        assert wrong.status == 401 and "write key" in (await wrong.json())["error"]
        password = {"Authorization": "Basic " + base64.b64encode(b"x:" + WRITE_KEY.encode()).decode()}
        assert (await client.post("/v1/track", data=track, headers={**JSON, **password})).status == 401

        unsigned = await client.post("/sendgrid/events", data=body, headers=JSON)
        assert unsigned.status == 403 and "missing" in (await unsigned.json())["error"]
        forged = {**sendgrid_signed(b"[]"), **JSON}  # a valid signature of another body
        response = await client.post("/sendgrid/events", data=body, headers=forged)
        assert response.status == 403 and "does not verify" in (await response.json())["error"]
        stale = sendgrid_signed(body, timestamp=int(time.time()) - 3600)
        response = await client.post("/sendgrid/events", data=body, headers=stale)
        assert response.status == 403 and "old" in (await response.json())["error"]

        other_url = twilio_signature(TWILIO_TOKEN, "https://elsewhere.example/twilio/voice/status", twilio)
        for signature in ("bm9wZQ==", other_url):
            signed = {**FORM, "X-Twilio-Signature": signature}
            response = await client.post("/twilio/voice/status", data=twilio, headers=signed)
            assert response.status == 403 and "X-Twilio-Signature" in (await response.json())["error"]

        meta = fixture("meta/messenger.json")
        bad = {**JSON, "X-Hub-Signature-256": "sha256=00"}
        assert (await client.post("/meta/webhook", data=meta, headers=bad)).status == 403
        assert (await client.post("/meta/webhook", data=meta, headers=JSON)).status == 403
        challenge = await client.get(
            "/meta/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"},
        )
        assert challenge.status == 200 and await challenge.text() == "1158201444"
        refused = await client.get(
            "/meta/webhook", params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"}
        )
        assert refused.status == 403

    serve(kafka_bootstrap, topics, pii_key, call)
    assert read_back(kafka_bootstrap, *topics.all_raw, topics.dead_letters) == []


def test_twilio_behind_a_proxy_signs_the_public_url(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any
) -> None:
    twilio = fixture("twilio/inbound_call.txt").splitlines()[1]
    public = "https://hooks.example.nl"

    async def call(client: TestClient) -> None:
        local = twilio_signature(TWILIO_TOKEN, str(client.make_url("/twilio/voice/status")), twilio)
        response = await client.post(
            "/twilio/voice/status", data=twilio, headers={**FORM, "X-Twilio-Signature": local}
        )
        assert response.status == 403
        signature = twilio_signature(TWILIO_TOKEN, public + "/twilio/voice/status", twilio)
        response = await client.post(
            "/twilio/voice/status", data=twilio, headers={**FORM, "X-Twilio-Signature": signature}
        )
        assert response.status == 200, await response.text()

    serve(kafka_bootstrap, topics, pii_key, call, public_url=public + "/")
    assert [m.value for m in read_back(kafka_bootstrap, topics.raw("phone"), count=1)] == [twilio]


def test_unconfigured_providers_are_unavailable_not_open(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any
) -> None:
    async def call(client: TestClient) -> None:
        track = fixture("segment/track_order_completed.json")
        response = await client.post("/v1/track", data=track, headers={**JSON, **basic("anything")})
        assert response.status == 503 and "not configured" in (await response.json())["error"]
        verify = await client.get("/meta/webhook", params={"hub.mode": "subscribe", "hub.verify_token": ""})
        assert verify.status == 503
        # Without the optional secrets, SendGrid, Twilio and Meta bodies are taken unsigned.
        sendgrid = fixture("sendgrid/events.json")
        assert (await client.post("/sendgrid/events", data=sendgrid, headers=JSON)).status == 200
        twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
        assert (await client.post("/twilio/voice/status", data=twilio, headers=FORM)).status == 200
        meta = fixture("meta/messenger.json")
        assert (await client.post("/meta/webhook", data=meta, headers=JSON)).status == 200

    serve(
        kafka_bootstrap,
        topics,
        pii_key,
        call,
        segment_write_key=None,
        sendgrid_verification_key=None,
        twilio_auth_token=None,
        meta_verify_token=None,
        meta_app_secret=None,
    )
    assert read_back(kafka_bootstrap, topics.raw("web")) == []
    unsigned = read_back(
        kafka_bootstrap, topics.raw("email"), topics.raw("phone"), topics.raw("social"), count=3
    )
    assert [headers_of(m)["format"] for m in unsigned] == ["sendgrid", "twilio", "meta"]


def test_bad_payloads_get_reasons_and_dead_letters(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def call(client: TestClient) -> None:
        auth = basic(WRITE_KEY)
        malformed = await client.post("/social", data=b"{not json, call 06 12345678", headers=JSON)
        assert malformed.status == 400
        answer = await malformed.json()
        assert answer["error"] == "no valid record in the request"
        assert answer["rejected"][0]["origin"] == "POST /social"
        assert answer["rejected"][0]["reason"].startswith("malformed JSON")
        response = await client.post("/v1/identify", data=b'{"traits": {}}', headers={**JSON, **auth})
        assert response.status == 400 and (await response.json())["rejected"]
        big = b'{"type": "track", "event": "' + b"x" * SEGMENT_CALL_LIMIT + b'"}'
        too_large = await client.post("/v1/track", data=big, headers={**JSON, **auth})
        assert too_large.status == 413 and "limit" in (await too_large.json())["error"]
        wrong_type = await client.post("/social", data=b"{}", headers={"Content-Type": "text/plain"})
        assert wrong_type.status == 415 and "application/json" in (await wrong_type.json())["error"]
        twilio_json = await client.post("/twilio/voice/status", data=b'{"CallSid": "CA1"}', headers=JSON)
        assert twilio_json.status == 415

    with caplog.at_level(logging.INFO, logger="journeys.collector"):
        serve(kafka_bootstrap, topics, pii_key, call, twilio_auth_token=None)

    letters = read_back(kafka_bootstrap, topics.dead_letters, count=2)
    assert len(letters) == 2
    reasons = [headers_of(m)["reason"] for m in letters]
    assert reasons[0].startswith("malformed JSON")
    assert [headers_of(m)["origin"] for m in letters] == ["POST /social", "POST /v1/identify"]
    assert all(headers_of(m)["stage"] == "collect" for m in letters)
    assert b"06 12345678" not in letters[0].value  # dead letters are redacted
    assert read_back(kafka_bootstrap, *topics.all_raw) == []

    # One access-log line per request, with the status and the reason, and nothing from the body.
    access = [r for r in caplog.records if r.name == "journeys.collector.access"]
    assert [(r.path, r.status) for r in access] == [  # type: ignore[attr-defined]
        ("/social", 400),
        ("/v1/identify", 400),
        ("/v1/track", 413),
        ("/social", 415),
        ("/twilio/voice/status", 415),
    ]
    assert access[0].rejected == 1 and access[0].reason == "no valid record in the request"  # type: ignore[attr-defined]
    logged = " ".join(r.getMessage() + repr(vars(r)) for r in caplog.records)
    assert "12345678" not in logged and "xxxx" not in logged


def test_a_partly_valid_batch_is_accepted_and_the_rest_left_to_the_worker(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any
) -> None:
    events = orjson.loads(fixture("sendgrid/events.json"))
    body = orjson.dumps([events[0], {"event": "delivered"}])  # the second names nobody

    async def call(client: TestClient) -> None:
        response = await client.post("/sendgrid/events", data=body, headers=sendgrid_signed(body))
        answer = await response.json()
        assert response.status == 200 and answer["accepted"] == 1
        assert [r["origin"] for r in answer["rejected"]] == ["POST /sendgrid/events#[1]"]
        assert answer["rejected"][0]["reason"]

    serve(kafka_bootstrap, topics, pii_key, call)
    assert [m.value for m in read_back(kafka_bootstrap, topics.raw("email"), count=1)] == [body]
    assert read_back(kafka_bootstrap, topics.dead_letters) == []  # the normalise stage letters it, once


def test_health_and_a_kafka_outage(kafka_bootstrap: str, topics: Topics, pii_key: str) -> None:
    async def healthy(client: TestClient) -> None:
        assert (await client.get("/health/live")).status == 200
        assert (await client.get("/health/ready")).status == 200

    serve(kafka_bootstrap, topics, pii_key, healthy)

    async def outage(client: TestClient) -> None:
        assert (await client.get("/health/live")).status == 200
        assert (await client.get("/health/ready")).status == 503
        response = await client.post(
            "/social", data=fixture("social/export.jsonl").splitlines()[0], headers=JSON
        )
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert "retry" in (await response.json())["error"]

    serve(closed_port(), topics, pii_key, outage, send_timeout=0.5)


@contextlib.contextmanager
def crashable_broker() -> Iterator[tuple[str, Callable[[], None]]]:
    """A Tansu broker of this test's own and a function that kills it (a crash: no graceful goodbye)."""
    with tansu_process() as (address, broker):

        def crash() -> None:
            broker.kill()
            broker.wait(timeout=10)

        yield address, crash


def test_readiness_and_sends_follow_a_broker_that_goes_away(topic_prefix: str, pii_key: str) -> None:
    topics = Topics(topic_prefix)
    social = fixture("social/export.jsonl").splitlines()[0]
    with crashable_broker() as (bootstrap, crash):
        ensure_topics(bootstrap, topics, partitions=1)

        async def call(client: TestClient) -> None:
            assert (await client.get("/health/ready")).status == 200
            assert (await client.post("/social", data=social, headers=JSON)).status == 200
            crash()
            # Not the producer's cached metadata: a fresh request that now finds nobody.
            assert (await client.get("/health/ready")).status == 503
            response = await client.post("/social", data=social, headers=JSON)
            assert response.status == 503 and response.headers["Retry-After"] == "5"
            assert (await client.get("/health/live")).status == 200

        serve(bootstrap, topics, pii_key, call, send_timeout=0.5)


def test_journeys_collect_serves_until_sigterm(
    kafka_bootstrap: str, topic_prefix: str, pii_key: str, read_back: Any
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    port = int(closed_port().rsplit(":", 1)[1])
    env = dict(
        os.environ,
        JOURNEYS_TOPIC_PREFIX=topic_prefix,
        JOURNEYS_SEGMENT_WRITE_KEY=WRITE_KEY,
        JOURNEYS_PII_KEY=pii_key,
        JOURNEYS_COLLECTOR_PORT=str(port),
    )
    journeys = str(Path(sys.executable).with_name("journeys"))
    process = subprocess.Popen(
        [journeys, "collect", "--kafka", kafka_bootstrap, "--host", "127.0.0.1", "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    track = fixture("segment/track_order_completed.json")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert process.poll() is None, process.communicate()[0].decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the collector never became ready"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/track", data=track, headers={**JSON, **basic(WRITE_KEY)}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert orjson.loads(response.read())["accepted"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    (line,) = [x for x in lines if x["logger"] == "journeys.collector.access" and x["path"] == "/v1/track"]
    assert line["status"] == 200 and line["accepted"] == 1 and line["rejected"] == 0
    assert b"gibbons" not in output.lower() and b"12345678" not in output  # no body or PII in the logs
    assert len(read_back(kafka_bootstrap, Topics(topic_prefix).raw("web"), count=1)) == 1


# -- hostile input at every endpoint ----------------------------------------------

SAMPLE_RECORDS = {
    "segment": orjson.loads(fixture("segment/track_order_completed.json")),
    "sendgrid": orjson.loads(fixture("sendgrid/events.json"))[0],
    "social": orjson.loads(fixture("social/export.jsonl").splitlines()[0]),
    "meta": orjson.loads(fixture("meta/page_feed_comment.json")),
}
FORM_BODIES = bodies({}) | st.lists(
    st.tuples(
        st.sampled_from(["CallSid", "CallStatus", "From", "To", "Direction", "Timestamp", "Caller", "x"]),
        st.text(max_size=30),
    ),
    max_size=8,
).map(lambda pairs: urlencode(pairs).encode())


@settings(
    max_examples=4,
    deadline=None,
    # each example makes topics of its own; the broker and the key are the same for all
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    json_bodies=st.lists(bodies(SAMPLE_RECORDS), min_size=12, max_size=12),
    form_bodies=st.lists(FORM_BODIES, min_size=12, max_size=12),
)
def test_hostile_bodies_at_every_endpoint_are_answered_and_accounted_for(
    kafka_bootstrap: str,
    topic_prefix: str,
    pii_key: str,
    read_back: Any,
    json_bodies: list,
    form_bodies: list,
) -> None:
    """No 5xx; a 200 put its record on a raw topic, a 400 one dead letter per reason, and nothing else."""
    topics = Topics(f"{topic_prefix}-{next(_fuzz_runs)}")
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    raw_expected = letters_expected = 0

    async def call(client: TestClient) -> None:
        nonlocal raw_expected, letters_expected
        twilio_url = str(client.make_url("/twilio/voice/status"))
        # The documented payloads among the hostile ones, so that both answers are accounted for.
        valid = [
            ("/v1/track", fixture("segment/track_order_completed.json"), {**JSON, **basic(WRITE_KEY)}),
            (
                "/sendgrid/events",
                fixture("sendgrid/events.json"),
                sendgrid_signed(fixture("sendgrid/events.json")),
            ),
        ]
        requests = (
            valid
            + [
                (path, body, headers(body))
                for body in json_bodies
                for path, headers in (
                    ("/v1/track", lambda _: {**JSON, **basic(WRITE_KEY)}),
                    ("/v1/batch", lambda _: {**JSON, **basic(WRITE_KEY)}),
                    ("/sendgrid/events", sendgrid_signed),
                    ("/social", lambda _: JSON),
                    ("/meta/webhook", meta_signed),
                )
            ]
            + [
                (
                    "/twilio/voice/status",
                    body,
                    {**FORM, "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, twilio_url, body)},
                )
                for body in form_bodies
            ]
        )
        for path, body, headers in requests:
            response = await client.post(path, data=body, headers=headers)
            answer = await response.json()
            assert response.status in (200, 400, 413), (path, body[:80], response.status, answer)
            if response.status == 200:
                raw_expected += 1
                assert answer["accepted"] >= 1
            elif response.status == 400:
                assert answer["rejected"] and all(r["reason"] for r in answer["rejected"])
                letters_expected += len(answer["rejected"])

    serve(kafka_bootstrap, topics, pii_key, call)
    assert raw_expected >= 2
    raw = read_back(kafka_bootstrap, *topics.all_raw, count=raw_expected)
    letters = read_back(kafka_bootstrap, topics.dead_letters, count=letters_expected)
    assert (len(raw), len(letters)) == (raw_expected, letters_expected)
    assert all(headers_of(letter)["reason"] for letter in letters)
