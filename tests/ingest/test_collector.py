"""`journeys collect` against the real broker: documented payloads in, records on the raw topics.

The app runs in-process on aiohttp's test server; what it sends is read back
from Kafka. Provider secrets and signatures are made the way each provider
documents them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kafka import KafkaConsumer

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


def basic(user: str) -> dict[str, str]:
    """HTTP Basic with `user` and an empty password, as Segment's libraries send the write key."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def fixture(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def consume(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    messages = list(consumer)
    consumer.close()
    return messages


def headers_of(message: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in message.headers}


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
    sender = KafkaSender(bootstrap, settings.send_timeout, topics.raw("web"))

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
    kafka_bootstrap: str, topics: Topics, pii_key: str
) -> None:
    sendgrid = fixture("sendgrid/events.json")
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
    social = fixture("social/export.jsonl").splitlines()[0]
    meta = fixture("meta/messenger.json")
    track = orjson.loads(fixture("segment/track_order_completed.json"))
    track.pop("type")  # a single call takes its type from the path

    async def call(client: TestClient) -> None:
        auth = basic(WRITE_KEY)
        response = await client.post("/v1/track", json=track, headers=auth)
        assert response.status == 200, await response.text()
        response = await client.post(
            "/v1/batch",
            data=fixture("segment/batch.json"),
            headers={**auth, "Content-Type": "application/json"},
        )
        assert (await response.json())["accepted"] >= 2
        timestamp = str(int(time.time()))
        signature = base64.b64encode(
            PRIVATE_KEY.sign(timestamp.encode() + sendgrid, ec.ECDSA(hashes.SHA256()))
        )
        response = await client.post(
            "/sendgrid/events",
            data=sendgrid,
            headers={
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": signature.decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            },
        )
        assert response.status == 200, await response.text()
        url = str(client.make_url("/twilio/voice/status"))
        response = await client.post(
            "/twilio/voice/status",
            data=twilio,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, twilio),
            },
        )
        assert response.status == 200, await response.text()
        response = await client.post("/social", data=social, headers={"Content-Type": "application/json"})
        assert response.status == 200, await response.text()
        signature = "sha256=" + hmac.new(META_SECRET.encode(), meta, hashlib.sha256).hexdigest()
        response = await client.post(
            "/meta/webhook",
            data=meta,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        )
        assert response.status == 200, await response.text()

    serve(kafka_bootstrap, topics, pii_key, call)
    web = consume(kafka_bootstrap, topics.raw("web"))
    assert [headers_of(m)["origin"] for m in web] == ["POST /v1/track", "POST /v1/batch"]
    assert orjson.loads(web[0].value)["type"] == "track"
    assert [m.value for m in consume(kafka_bootstrap, topics.raw("email"))] == [sendgrid]
    assert [m.value for m in consume(kafka_bootstrap, topics.raw("phone"))] == [twilio]
    social_messages = consume(kafka_bootstrap, topics.raw("social"))
    assert [headers_of(m)["format"] for m in social_messages] == ["social", "meta"]
    assert all(m.key is not None and b"@" not in m.key for m in web + social_messages)


def test_failed_authentication_is_refused(kafka_bootstrap: str, topics: Topics, pii_key: str) -> None:
    body = fixture("sendgrid/events.json")
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
    track = fixture("segment/track_order_completed.json")

    async def call(client: TestClient) -> None:
        json = {"Content-Type": "application/json"}
        assert (await client.post("/v1/track", data=track, headers=json)).status == 401
        wrong = await client.post("/v1/track", data=track, headers={**json, **basic("other-key")})
        assert wrong.status == 401 and "write key" in (await wrong.json())["error"]
        unsigned = await client.post("/sendgrid/events", data=body, headers=json)
        assert unsigned.status == 403 and "missing" in (await unsigned.json())["error"]
        stamp = str(int(time.time()))
        forged = base64.b64encode(
            PRIVATE_KEY.sign(stamp.encode() + b"[]", ec.ECDSA(hashes.SHA256()))
        ).decode()
        response = await client.post(
            "/sendgrid/events",
            data=body,
            headers={
                **json,
                "X-Twilio-Email-Event-Webhook-Signature": forged,
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            },
        )
        assert response.status == 403 and "does not verify" in (await response.json())["error"]
        form = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "bm9wZQ=="}
        assert (await client.post("/twilio/voice/status", data=twilio, headers=form)).status == 403
        meta = {**json, "X-Hub-Signature-256": "sha256=00"}
        assert (await client.post("/meta/webhook", data=b"{}", headers=meta)).status == 403
        challenge = await client.get(
            "/meta/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "42"},
        )
        assert challenge.status == 200 and await challenge.text() == "42"
        refused = await client.get("/meta/webhook", params={"hub.mode": "subscribe", "hub.verify_token": "x"})
        assert refused.status == 403

    serve(kafka_bootstrap, topics, pii_key, call)
    for topic in (*topics.all_raw, topics.dead_letters):
        assert consume(kafka_bootstrap, topic) == [], topic


def test_bad_payloads_get_reasons_and_dead_letters(
    kafka_bootstrap: str, topics: Topics, pii_key: str
) -> None:
    events = orjson.loads(fixture("sendgrid/events.json"))
    partly_valid = orjson.dumps([events[0], {"event": "delivered", "email": "piet@ziggo.nl"}])

    async def call(client: TestClient) -> None:
        json = {"Content-Type": "application/json"}
        auth = basic(WRITE_KEY)
        malformed = await client.post("/social", data=b"{not json, call 06 12345678", headers=json)
        assert malformed.status == 400
        assert (await malformed.json())["rejected"][0]["reason"].startswith("malformed JSON")
        response = await client.post("/sendgrid/events", data=partly_valid, headers=json)
        assert response.status == 403  # the signature is checked before anything else
        response = await client.post("/v1/identify", data=b'{"traits": {}}', headers={**json, **auth})
        assert response.status == 400 and (await response.json())["rejected"]
        big = b'{"type": "track", "event": "' + b"x" * SEGMENT_CALL_LIMIT + b'"}'
        too_large = await client.post("/v1/track", data=big, headers={**json, **auth})
        assert too_large.status == 413 and "limit" in (await too_large.json())["error"]
        wrong_type = await client.post("/social", data=b"{}", headers={"Content-Type": "text/plain"})
        assert wrong_type.status == 415

    serve(kafka_bootstrap, topics, pii_key, call)
    letters = consume(kafka_bootstrap, topics.dead_letters)
    assert len(letters) == 2
    reasons = [headers_of(m)["reason"] for m in letters]
    assert reasons[0].startswith("malformed JSON")
    assert all(headers_of(m)["stage"] == "collect" for m in letters)
    assert b"06 12345678" not in letters[0].value  # dead letters are redacted


def test_a_partly_valid_batch_is_accepted_and_the_rest_left_to_the_worker(
    kafka_bootstrap: str, topics: Topics, pii_key: str
) -> None:
    events = orjson.loads(fixture("sendgrid/events.json"))
    body = orjson.dumps([events[0], {"event": "delivered"}])  # the second names nobody

    async def call(client: TestClient) -> None:
        response = await client.post(
            "/sendgrid/events", data=body, headers={"Content-Type": "application/json"}
        )
        answer = await response.json()
        assert response.status == 200 and answer["accepted"] == 1
        assert [r["origin"] for r in answer["rejected"]] == ["POST /sendgrid/events#[1]"]

    serve(kafka_bootstrap, topics, pii_key, call, sendgrid_verification_key=None)
    assert [m.value for m in consume(kafka_bootstrap, topics.raw("email"))] == [body]
    assert consume(kafka_bootstrap, topics.dead_letters) == []  # the normalise stage letters it, once


def test_health_and_a_kafka_outage(kafka_bootstrap: str, topics: Topics, pii_key: str) -> None:
    async def healthy(client: TestClient) -> None:
        assert (await client.get("/health/live")).status == 200
        assert (await client.get("/health/ready")).status == 200

    serve(kafka_bootstrap, topics, pii_key, healthy)

    async def outage(client: TestClient) -> None:
        assert (await client.get("/health/live")).status == 200
        assert (await client.get("/health/ready")).status == 503
        response = await client.post(
            "/social",
            data=fixture("social/export.jsonl").splitlines()[0],
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 503 and response.headers["Retry-After"] == "5"

    serve("127.0.0.1:9", topics, pii_key, outage, send_timeout=1.0)


def test_journeys_collect_serves_until_sigterm(kafka_bootstrap: str, topic_prefix: str, pii_key: str) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(
        os.environ,
        JOURNEYS_TOPIC_PREFIX=topic_prefix,
        JOURNEYS_SEGMENT_WRITE_KEY=WRITE_KEY,
        JOURNEYS_PII_KEY=pii_key,
    )
    journeys = str(Path(sys.executable).with_name("journeys"))
    process = subprocess.Popen(
        [
            journeys,
            "collect",
            "--kafka",
            kafka_bootstrap,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-format",
            "json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the collector never became ready"
            time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/track",
            data=fixture("segment/track_order_completed.json"),
            headers={"Content-Type": "application/json", **basic(WRITE_KEY)},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert orjson.loads(response.read())["accepted"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    assert b'"accepted /v1/track: 1 record(s), 0 rejected"' in output
    assert len(consume(kafka_bootstrap, Topics(topic_prefix).raw("web"))) == 1
