"""`journeys collect` against the real broker: documented payloads in, records on the raw topics.

The app runs in-process on aiohttp's test server; what it sends is read back
from Kafka. Provider secrets and signatures are made the way each provider
documents them.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hostile import bodies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhooks import (
    FORM,
    JSON,
    META_SECRET,
    META_VERIFY,
    PUBLIC_KEY,
    SOCIAL,
    SOCIAL_TOKEN,
    TWILIO_TOKEN,
    WRITE_KEY,
    basic,
    meta_signed,
    sendgrid_signed,
    serve,
    twilio_signed,
)

from ingest.collector import (
    CREDENTIAL_OF_FIELD,
    CREDENTIALS,
    SEGMENT_CALL_LIMIT,
    TRUSTED_PROXIES_ENV,
    CollectorConfig,
    CollectorConfigError,
    RateLimiter,
    client_address,
    create_collector,
    parse_networks,
    twilio_signature,
)
from ingest.context import IngestContext
from ingest.kafka import ensure_topics
from ingest.pii import PiiHasher
from ingest.topics import Topics
from processors.stream.broker import tansu_process

FIXTURES = Path(__file__).parents[1] / "fixtures"
_fuzz_runs = itertools.count()
SEGMENT_CALLS = ("track", "page", "screen", "identify", "alias", "group")


def fixture(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def headers_of(message: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in message.headers}


def closed_port() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


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
        signed = twilio_signed(client, "/twilio/voice/status", twilio)
        response = await client.post("/twilio/voice/status", data=twilio, headers=signed)
        assert response.status == 200, await response.text()
        for body in (social, social_array):
            response = await client.post("/social", data=body, headers=SOCIAL)
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

        social = fixture("social/export.jsonl").splitlines()[0]
        for headers in (JSON, {**JSON, "Authorization": "Bearer wrong"}, {**JSON, **basic(SOCIAL_TOKEN)}):
            response = await client.post("/social", data=social, headers=headers)
            assert response.status == 401 and "bearer" in (await response.json())["error"]

        meta = fixture("meta/messenger.json")
        bad = {**JSON, "X-Hub-Signature-256": "sha256=00"}
        assert (await client.post("/meta/webhook", data=meta, headers=bad)).status == 403
        assert (await client.post("/meta/webhook", data=meta, headers=JSON)).status == 403
        challenge = await client.get(
            "/meta/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": META_VERIFY, "hub.challenge": "1158201444"},
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


def credential_free_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider credential, endpoint choice or rate setting from the machine running the tests."""
    for credential in CREDENTIAL_OF_FIELD.values():
        for variable in (credential.variable, credential.variable + "_PREVIOUS"):
            monkeypatch.delenv(variable, raising=False)
            monkeypatch.delenv(variable + "_FILE", raising=False)
    for variable in ("JOURNEYS_COLLECTOR_ENDPOINTS", "JOURNEYS_COLLECTOR_INSECURE", TRUSTED_PROXIES_ENV):
        monkeypatch.delenv(variable, raising=False)


def test_an_endpoint_without_its_credential_refuses_to_start(
    pii_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from processors.cli import app

    bare = CollectorConfig(bootstrap="127.0.0.1:9")
    with pytest.raises(CollectorConfigError) as refused:
        bare.check()
    message = str(refused.value)
    for credential in CREDENTIAL_OF_FIELD.values():
        assert f"{credential.variable} (or {credential.variable}_FILE)" in message
    assert "JOURNEYS_COLLECTOR_ENDPOINTS" in message and "JOURNEYS_COLLECTOR_INSECURE" in message
    context = IngestContext(hasher=PiiHasher(pii_key))
    with pytest.raises(CollectorConfigError):  # the app itself cannot be made open by mistake
        create_collector(bare, context, sender=None)

    only_segment = CollectorConfig(bootstrap="127.0.0.1:9", segment_write_key=WRITE_KEY)
    with pytest.raises(CollectorConfigError, match="sendgrid needs JOURNEYS_SENDGRID_VERIFICATION_KEY"):
        only_segment.check()
    assert CollectorConfig(**{**only_segment.__dict__, "endpoints": frozenset({"segment"})}).check() == []
    with pytest.raises(CollectorConfigError, match=r"unknown endpoints \['mailchimp'\]"):
        CollectorConfig(**{**only_segment.__dict__, "endpoints": frozenset({"segment", "mailchimp"})}).check()
    not_a_key = {
        **only_segment.__dict__,
        "endpoints": frozenset({"sendgrid"}),
        "sendgrid_verification_key": "abc",
    }
    with pytest.raises(CollectorConfigError, match="not an ECDSA public key"):
        CollectorConfig(**not_a_key).check()

    # `journeys collect` says so and exits 2 before it ever tries Kafka (nothing listens on port 9).
    credential_free_env(monkeypatch)
    monkeypatch.setenv("JOURNEYS_SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setattr("processors.logs.configure", lambda *_: None)  # keep pytest's log handlers
    result = CliRunner().invoke(app, ["collect", "--kafka", "127.0.0.1:9"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "authentication is required" in output and "JOURNEYS_TWILIO_AUTH_TOKEN" in output
    assert "Kafka at" not in output and WRITE_KEY not in output


def test_credentials_come_from_the_environment_or_files(tmp_path: Path) -> None:
    files = {}
    for config_field, variable, _ in CREDENTIAL_OF_FIELD.values():
        path = tmp_path / variable.lower()
        path.write_text(f"{config_field}-from-file\n")  # Docker secrets end in a newline
        files[variable + "_FILE"] = str(path)
    files["JOURNEYS_SENDGRID_VERIFICATION_KEY_FILE"] = ""
    config = CollectorConfig.from_env(
        {**files, "JOURNEYS_SENDGRID_VERIFICATION_KEY": PUBLIC_KEY, "JOURNEYS_TWILIO_AUTH_TOKEN": "env-wins"}
    )
    assert config.segment_write_key == "segment_write_key-from-file"
    assert config.meta_app_secret == "meta_app_secret-from-file"
    assert config.social_token == "social_token-from-file"
    assert config.twilio_auth_token == "env-wins"
    assert config.sendgrid_verification_key == PUBLIC_KEY
    assert config.check() == []
    assert config.endpoints == frozenset(CREDENTIALS) and config.insecure == frozenset()
    assert "from-file" not in repr(config) and "env-wins" not in repr(
        config
    )  # a logged config shows no secret

    missing = str(tmp_path / "nowhere")
    with pytest.raises(
        CollectorConfigError,
        match="cannot read JOURNEYS_SOCIAL_TOKEN file named by JOURNEYS_SOCIAL_TOKEN_FILE",
    ):
        CollectorConfig.from_env({"JOURNEYS_SOCIAL_TOKEN_FILE": missing})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CollectorConfigError, match="is empty"):
        CollectorConfig.from_env({"JOURNEYS_META_APP_SECRET_FILE": str(tmp_path / "empty")})
    chosen = CollectorConfig.from_env(
        {
            "JOURNEYS_COLLECTOR_ENDPOINTS": "Segment, twilio",
            "JOURNEYS_COLLECTOR_INSECURE": "twilio",
            "JOURNEYS_COLLECTOR_RATE": "2.5",
            "JOURNEYS_COLLECTOR_BURST": "10",
        }
    )
    assert chosen.endpoints == {"segment", "twilio"} and chosen.insecure == {"twilio"}
    assert (chosen.rate, chosen.burst) == (2.5, 10)
    with pytest.raises(CollectorConfigError, match="JOURNEYS_COLLECTOR_RATE must be a number"):
        CollectorConfig.from_env({"JOURNEYS_COLLECTOR_RATE": "fast"})


# The credentials a rotation replaces (the ones `serve` configures) and the ones it retires.
NEW_CREDENTIALS = {
    "segment_write_key": WRITE_KEY,
    "twilio_auth_token": TWILIO_TOKEN,
    "social_token": SOCIAL_TOKEN,
    "meta_app_secret": META_SECRET,
    "meta_verify_token": META_VERIFY,
}
OLD_CREDENTIALS = {name: f"old-{name}-7f3a" for name in NEW_CREDENTIALS}


async def authenticate_everywhere(client: TestClient, credentials: Mapping[str, str]) -> dict[str, int]:
    """One valid request at each endpoint with a shared secret, made with `credentials`: the statuses."""
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
    meta = fixture("meta/messenger.json")
    url = str(client.make_url("/twilio/voice/status"))
    requests = {
        "segment_write_key": client.post(
            "/v1/track",
            data=fixture("segment/track_order_completed.json"),
            headers={**JSON, **basic(credentials["segment_write_key"])},
        ),
        "twilio_auth_token": client.post(
            "/twilio/voice/status",
            data=twilio,
            headers={
                **FORM,
                "X-Twilio-Signature": twilio_signature(credentials["twilio_auth_token"], url, twilio),
            },
        ),
        "social_token": client.post(
            "/social",
            data=fixture("social/export.jsonl").splitlines()[0],
            headers={**JSON, "Authorization": f"Bearer {credentials['social_token']}"},
        ),
        "meta_app_secret": client.post(
            "/meta/webhook", data=meta, headers=meta_signed(meta, credentials["meta_app_secret"])
        ),
        "meta_verify_token": client.get(
            "/meta/webhook",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": credentials["meta_verify_token"],
                "hub.challenge": "5",
            },
        ),
    }
    return {name: (await request).status for name, request in requests.items()}


def test_during_a_rotation_the_previous_credential_is_accepted_until_it_is_removed(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Every shared secret is exercised: a new one without a rotation test fails here.
    assert set(OLD_CREDENTIALS) == {c.config_field for c in CREDENTIAL_OF_FIELD.values() if c.rotates}
    ok = dict.fromkeys(NEW_CREDENTIALS, 200)

    async def rotating(client: TestClient) -> None:
        assert await authenticate_everywhere(client, NEW_CREDENTIALS) == ok
        assert await authenticate_everywhere(client, OLD_CREDENTIALS) == ok

    async def rotated(client: TestClient) -> None:
        assert await authenticate_everywhere(client, NEW_CREDENTIALS) == ok
        assert await authenticate_everywhere(client, OLD_CREDENTIALS) == {
            "segment_write_key": 401,
            "twilio_auth_token": 403,
            "social_token": 401,
            "meta_app_secret": 403,
            "meta_verify_token": 403,
        }

    with caplog.at_level(logging.DEBUG, logger="journeys"):
        serve(kafka_bootstrap, topics, pii_key, rotating, previous=OLD_CREDENTIALS)
        access = [r for r in caplog.records if r.name == "journeys.collector.access"]
        # The access log says which requests still use the old credential (never the credential).
        assert [getattr(r, "credential", None) for r in access] == [None] * 5 + ["previous"] * 5
        assert "credential=previous" in access[-1].getMessage()
        caplog.clear()
        serve(kafka_bootstrap, topics, pii_key, rotated)  # `_PREVIOUS` removed, the collector restarted
    assert not any(hasattr(r, "credential") for r in caplog.records)
    # Each accepted POST is one raw record: 4 endpoints x (new, old, new).
    assert len(read_back(kafka_bootstrap, *topics.all_raw, count=12)) == 12
    assert read_back(kafka_bootstrap, topics.dead_letters) == []
    logged = " ".join(r.getMessage() + repr(vars(r)) for r in caplog.records)
    assert not any(value in logged for value in (*OLD_CREDENTIALS.values(), *NEW_CREDENTIALS.values()))


def test_previous_credentials_come_from_the_environment_or_files(tmp_path: Path) -> None:
    old_token = tmp_path / "old_social_token"
    old_token.write_text("old-social-from-file\n")
    config = CollectorConfig.from_env(
        {
            "JOURNEYS_COLLECTOR_ENDPOINTS": "segment social",
            "JOURNEYS_SEGMENT_WRITE_KEY": "wk_new",
            "JOURNEYS_SEGMENT_WRITE_KEY_PREVIOUS": "wk_old",
            "JOURNEYS_SOCIAL_TOKEN": "new-social",
            "JOURNEYS_SOCIAL_TOKEN_PREVIOUS_FILE": str(old_token),
        }
    )
    assert config.accepted("segment_write_key") == ("wk_new", "wk_old")  # the current one first
    assert config.accepted("social_token") == ("new-social", "old-social-from-file")
    assert config.accepted("twilio_auth_token") == ()
    assert config.check() == []
    assert "wk_old" not in repr(config) and "old-social" not in repr(config)
    with pytest.raises(CollectorConfigError, match="JOURNEYS_META_APP_SECRET_PREVIOUS_FILE"):
        CollectorConfig.from_env({"JOURNEYS_META_APP_SECRET_PREVIOUS_FILE": str(tmp_path / "nowhere")})

    # A previous credential without a current one would leave the endpoint checking nothing (or
    # refusing everything): refused, also when the endpoint is insecure or switched off.
    for endpoints, insecure in (("twilio", ""), ("twilio", "twilio"), ("segment", "")):
        orphan = CollectorConfig.from_env(
            {
                "JOURNEYS_COLLECTOR_ENDPOINTS": endpoints,
                "JOURNEYS_COLLECTOR_INSECURE": insecure,
                "JOURNEYS_SEGMENT_WRITE_KEY": "wk_new",
                "JOURNEYS_TWILIO_AUTH_TOKEN_PREVIOUS": "old-token",
            }
        )
        with pytest.raises(
            CollectorConfigError,
            match="JOURNEYS_TWILIO_AUTH_TOKEN_PREVIOUS is set without JOURNEYS_TWILIO_AUTH_TOKEN",
        ):
            orphan.check()
    # SendGrid's key is public and SendGrid signs with one key at a time: no previous key.
    sendgrid = CollectorConfig.from_env(
        {
            "JOURNEYS_COLLECTOR_ENDPOINTS": "sendgrid",
            "JOURNEYS_SENDGRID_VERIFICATION_KEY": PUBLIC_KEY,
            "JOURNEYS_SENDGRID_VERIFICATION_KEY_PREVIOUS": PUBLIC_KEY,
        }
    )
    with pytest.raises(CollectorConfigError, match="SENDGRID_VERIFICATION_KEY_PREVIOUS is not supported"):
        sendgrid.check()
    not_a_credential = CollectorConfig(bootstrap="127.0.0.1:9", previous={"public_url": "https://old"})
    with pytest.raises(CollectorConfigError, match="'public_url' is not a credential"):
        not_a_credential.check()


def test_insecure_endpoints_are_named_loudly_and_disabled_ones_are_gone(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid = fixture("sendgrid/events.json")
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0]
    social = fixture("social/export.jsonl").splitlines()[0]
    meta = fixture("meta/messenger.json")

    async def call(client: TestClient) -> None:
        track = fixture("segment/track_order_completed.json")
        assert (
            await client.post("/v1/track", data=track, headers={**JSON, **basic(WRITE_KEY)})
        ).status == 404
        assert (await client.post("/sendgrid/events", data=sendgrid, headers=JSON)).status == 200
        assert (await client.post("/twilio/voice/status", data=twilio, headers=FORM)).status == 200
        assert (await client.post("/social", data=social, headers=JSON)).status == 200
        assert (await client.post("/meta/webhook", data=meta, headers=JSON)).status == 200
        # Without a verify token there is nothing to compare Meta's handshake with.
        verify = await client.get("/meta/webhook", params={"hub.mode": "subscribe", "hub.verify_token": ""})
        assert verify.status == 503 and "JOURNEYS_META_VERIFY_TOKEN" in (await verify.json())["error"]

    insecure = frozenset({"sendgrid", "twilio", "social", "meta"})
    with caplog.at_level(logging.WARNING, logger="journeys.collector"):
        serve(
            kafka_bootstrap,
            topics,
            pii_key,
            call,
            endpoints=insecure,
            insecure=insecure,
            segment_write_key=None,
            sendgrid_verification_key=None,
            twilio_auth_token=None,
            social_token=None,
            meta_verify_token=None,
            meta_app_secret=None,
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(w.split(" endpoint ")[0] for w in warnings if w.startswith("INSECURE")) == [
        f"INSECURE: the {name}" for name in sorted(insecure)
    ]
    assert read_back(kafka_bootstrap, topics.raw("web")) == []
    unsigned = read_back(
        kafka_bootstrap, topics.raw("email"), topics.raw("phone"), topics.raw("social"), count=4
    )
    assert sorted(headers_of(m)["format"] for m in unsigned) == ["meta", "sendgrid", "social", "twilio"]

    async def still_checked(client: TestClient) -> None:
        # Naming an endpoint insecure never switches off a credential that is configured.
        assert (await client.post("/twilio/voice/status", data=twilio, headers=FORM)).status == 403

    serve(kafka_bootstrap, topics, pii_key, still_checked, insecure=frozenset({"twilio"}))


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock, max_clients=2)
    assert [limiter.wait("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait("a") == pytest.approx(0.5)  # one token every half second
    clock.now += 0.25
    assert limiter.wait("a") == pytest.approx(0.25)  # half a token back, half to go
    clock.now += 100
    assert [limiter.wait("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond
    assert limiter.wait("b") == 0.0
    limiter.wait("c")  # a third client: the least recently seen ("a") is forgotten
    assert limiter.wait("a") == 0.0


def test_a_client_over_the_rate_limit_gets_429_and_others_are_unaffected(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import aiohttp

    social = fixture("social/export.jsonl").splitlines()[0]
    sendgrid = fixture("sendgrid/events.json")
    clock = Clock()

    async def call(client: TestClient) -> None:
        for _ in range(2):  # the burst
            assert (await client.post("/social", data=social, headers=SOCIAL)).status == 200
        over = await client.post("/social", data=social, headers=SOCIAL)
        assert over.status == 429 and over.headers["Retry-After"] == "2"  # 0.5 requests a second
        assert "rate limit" in (await over.json())["error"]
        wrong = await client.post("/social", data=social, headers=JSON)
        assert wrong.status == 429  # checked before the credential: a flood of bad tokens is limited too
        # The same client on another endpoint has a bucket of its own.
        signed = sendgrid_signed(sendgrid)
        assert (await client.post("/sendgrid/events", data=sendgrid, headers=signed)).status == 200
        # Another client address is unaffected.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            response = await other.post(client.make_url("/social"), data=social, headers=SOCIAL)
            assert response.status == 200
        clock.now += 2.0  # one token back
        assert (await client.post("/social", data=social, headers=SOCIAL)).status == 200
        assert (await client.post("/social", data=social, headers=SOCIAL)).status == 429

    with caplog.at_level(logging.INFO, logger="journeys.collector"):
        serve(kafka_bootstrap, topics, pii_key, call, rate=0.5, burst=2, clock=clock)
    assert len(read_back(kafka_bootstrap, topics.raw("social"), count=4)) == 4  # nothing refused was sent
    access = [r for r in caplog.records if r.name == "journeys.collector.access"]
    limited = [r for r in access if r.status == 429]  # type: ignore[attr-defined]
    assert len(limited) == 3 and all("rate limit" in r.reason for r in limited)  # type: ignore[attr-defined]
    # The client address names a bucket and nothing else (kafka-python's records name the broker's).
    ours = [r for r in caplog.records if r.name.startswith(("journeys", "aiohttp"))]
    assert not any("127.0.0" in r.getMessage() + repr(vars(r)) for r in ours)


PROXIES = parse_networks("127.0.0.1, 10.0.0.0/8, 2001:db8::/64", TRUSTED_PROXIES_ENV)


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # An untrusted peer is the client, whatever it claims to forward for.
        ("192.0.2.1", [], "192.0.2.1"),
        ("192.0.2.1", ["198.51.100.1"], "192.0.2.1"),
        ("192.0.2.1", ["198.51.100.1, 10.0.0.1"], "192.0.2.1"),
        # A trusted peer: the right-most hop that is not a trusted proxy.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # load balancer, then a second proxy
        ("10.0.0.7", ["198.51.100.1, 10.1.2.3, 10.4.5.6"], "198.51.100.1"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # the client's own forgery
        ("127.0.0.1", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # every hop trusted: the left-most
        ("127.0.0.1", ["6.6.6.6", "198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # one header line a proxy
        ("127.0.0.1", [" 198.51.100.1 ,10.1.2.3 "], "198.51.100.1"),
        # Malformed hops on the trusted side leave the peer.
        ("127.0.0.1", ["unknown"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1:4711"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1, garbage"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1,,10.1.2.3"], "127.0.0.1"),
        ("127.0.0.1", [""], "127.0.0.1"),
        ("127.0.0.1", ["garbage, 198.51.100.1"], "198.51.100.1"),  # left of the client: never read
        # request.remote as aiohttp gives it: a dual-stack socket's IPv4 peer, IPv6, no transport.
        ("::ffff:127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("::ffff:192.0.2.1", ["198.51.100.1"], "192.0.2.1"),
        ("2001:db8::5", ["2001:DB8:0:1::9"], "2001:db8:0:1::9"),
        ("2001:db8:1::5", ["198.51.100.1"], "2001:db8:1::5"),
        (None, ["198.51.100.1"], ""),
    ],
)
def test_the_client_behind_trusted_proxies(peer: str | None, forwarded_for: list[str], client: str) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == client
    assert client_address(peer, forwarded_for, ()) == (client_address(peer, [], ()))  # trusting nobody


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The test client's 127.0.0.1 is the load balancer; 127.0.0.2 is a client that reaches us directly."""
    import aiohttp
    from multidict import CIMultiDict

    social = fixture("social/export.jsonl").splitlines()[0]
    clock = Clock()

    def forwarded(*lines: str) -> CIMultiDict[str]:
        return CIMultiDict([*SOCIAL.items(), *(("X-Forwarded-For", line) for line in lines)])

    async def call(client: TestClient) -> None:
        async def status(*lines: str) -> int:
            return (await client.post("/social", data=social, headers=forwarded(*lines))).status

        # Through the proxy: one bucket per forwarded client (burst 1).
        assert await status("198.51.100.1") == 200
        assert await status("198.51.100.1") == 429
        assert await status("198.51.100.2") == 200
        # A chain: the load balancer's own hop (10.1.2.3) is skipped, and so is what the client forged.
        assert await status("203.0.113.9, 10.1.2.3") == 200
        assert await status("6.6.6.6, 203.0.113.9, 10.1.2.3") == 429
        assert await status("6.6.6.6", "203.0.113.9, 10.1.2.3") == 429  # a header line of its own
        # Malformed: the proxy's own bucket, shared with requests it did not forward for anyone.
        assert await status("unknown") == 200
        assert await status() == 429
        # Straight to the collector, not through the proxy: a forged header changes nothing.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as direct:
            for spoofed, expected in (("198.51.100.3", 200), ("198.51.100.4", 429), ("127.0.0.1", 429)):
                response = await direct.post(
                    client.make_url("/social"), data=social, headers=forwarded(spoofed)
                )
                assert response.status == expected, spoofed

    with caplog.at_level(logging.DEBUG, logger="journeys"):
        serve(
            kafka_bootstrap,
            topics,
            pii_key,
            call,
            rate=0.01,
            burst=1,
            clock=clock,
            trusted_proxies=parse_networks("127.0.0.1 10.0.0.0/8", TRUSTED_PROXIES_ENV),
        )
    assert len(read_back(kafka_bootstrap, topics.raw("social"), count=5)) == 5
    logged = " ".join(r.getMessage() + repr(vars(r)) for r in caplog.records if r.name.startswith("journeys"))
    assert not any(a in logged for a in ("198.51.100", "203.0.113", "127.0.0", "6.6.6.6"))


def test_trusted_proxies_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from processors.cli import app

    config = CollectorConfig.from_env({TRUSTED_PROXIES_ENV: "10.0.0.0/8, 192.168.1.10 fd00::/8"})
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "192.168.1.10/32", "fd00::/8"]
    assert CollectorConfig.from_env({}).trusted_proxies == ()  # default: nobody
    for wrong in ("10.0.0.0/33", "10.0.0.1/8", "proxy.internal", "10.0.0.0/8;10.1.0.0/16"):
        with pytest.raises(CollectorConfigError, match=TRUSTED_PROXIES_ENV) as refused:
            CollectorConfig.from_env({TRUSTED_PROXIES_ENV: f"127.0.0.1, {wrong}"})
        assert wrong.split(";")[0] in str(refused.value)
    with pytest.raises(CollectorConfigError, match="has host bits set"):
        CollectorConfig.from_env({TRUSTED_PROXIES_ENV: "10.0.0.1/8"})

    # `journeys collect` says so and exits 2 before it ever tries Kafka.
    credential_free_env(monkeypatch)
    monkeypatch.setenv("JOURNEYS_SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("JOURNEYS_COLLECTOR_ENDPOINTS", "segment")
    monkeypatch.setenv(TRUSTED_PROXIES_ENV, "10.0.0.0/33")
    monkeypatch.setattr("processors.logs.configure", lambda *_: None)
    result = CliRunner().invoke(app, ["collect", "--kafka", "127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert TRUSTED_PROXIES_ENV in result.output and "10.0.0.0/33" in result.output


def test_no_personal_data_or_secret_reaches_a_log_record(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG (aiohttp, kafka-python, ours): no address, number or credential in any record."""
    email, phone = "jane.secret@initech.nl", "+31 6 1357 9246"
    identify = orjson.dumps(
        {
            "type": "identify",
            "messageId": "m-secret-42",
            "userId": "u-42",
            "traits": {"email": email, "phone": phone},
            "timestamp": "2024-03-05T10:00:00Z",
        }
    )
    events = orjson.loads(fixture("sendgrid/events.json"))
    sendgrid = orjson.dumps([{**events[0], "email": email}])
    twilio = fixture("twilio/inbound_call.txt").splitlines()[0].replace(b"%2B31612345678", b"%2B31613579246")
    social = orjson.dumps(
        {
            **orjson.loads(fixture("social/export.jsonl").splitlines()[0]),
            "text": f"mail me at {email} or {phone}",
        }
    )
    basic_header = basic(WRITE_KEY)["Authorization"]

    async def call(client: TestClient) -> None:
        auth = {**JSON, **basic(WRITE_KEY)}
        assert (await client.post("/v1/identify", data=identify, headers=auth)).status == 200
        assert (
            await client.post(
                "/v1/identify", data=b'{"traits": {"email": "' + email.encode() + b'"}}', headers=auth
            )
        ).status == 400
        assert (
            await client.post("/v1/identify", data=identify, headers={**JSON, **basic(email)})
        ).status == 401
        assert (
            await client.post("/sendgrid/events", data=sendgrid, headers=sendgrid_signed(sendgrid))
        ).status == 200
        signed = twilio_signed(client, "/twilio/voice/status", twilio)
        assert (await client.post("/twilio/voice/status", data=twilio, headers=signed)).status == 200
        assert (await client.post("/social", data=social, headers=SOCIAL)).status == 200
        assert (await client.post("/social", data=b"{" + social, headers=SOCIAL)).status == 400
        meta = fixture("meta/messenger.json").replace(b'"text": "', b'"text": "' + email.encode() + b" ")
        assert b"jane.secret" in meta
        assert (await client.post("/meta/webhook", data=meta, headers=meta_signed(meta))).status == 200
        challenge = {"hub.mode": "subscribe", "hub.verify_token": META_VERIFY, "hub.challenge": "7"}
        assert (await client.get("/meta/webhook", params=challenge)).status == 200

    with caplog.at_level(logging.DEBUG):
        serve(kafka_bootstrap, topics, pii_key, call)
    assert any(r.name == "journeys.collector.access" for r in caplog.records)
    secrets = [WRITE_KEY, basic_header[6:], TWILIO_TOKEN, SOCIAL_TOKEN, META_SECRET, META_VERIFY, pii_key]
    personal = [email, "jane.secret", phone, "+31613579246", "613579246", "1357 9246", "31613579246"]
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        found = [value for value in (*secrets, *personal) if value in text]
        assert not found, (record.name, record.levelname, found)
    assert len(read_back(kafka_bootstrap, topics.dead_letters, count=2)) == 2


def test_bad_payloads_get_reasons_and_dead_letters(
    kafka_bootstrap: str, topics: Topics, pii_key: str, read_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def call(client: TestClient) -> None:
        auth = basic(WRITE_KEY)
        malformed = await client.post("/social", data=b"{not json, call 06 12345678", headers=SOCIAL)
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
        wrong_type = await client.post(
            "/social", data=b"{}", headers={**SOCIAL, "Content-Type": "text/plain"}
        )
        assert wrong_type.status == 415 and "application/json" in (await wrong_type.json())["error"]
        twilio_json = await client.post("/twilio/voice/status", data=b'{"CallSid": "CA1"}', headers=JSON)
        assert twilio_json.status == 415

    with caplog.at_level(logging.INFO, logger="journeys.collector"):
        serve(kafka_bootstrap, topics, pii_key, call)

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
            "/social", data=fixture("social/export.jsonl").splitlines()[0], headers=SOCIAL
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
            assert (await client.post("/social", data=social, headers=SOCIAL)).status == 200
            crash()
            # Not the producer's cached metadata: a fresh request that now finds nobody.
            assert (await client.get("/health/ready")).status == 503
            response = await client.post("/social", data=social, headers=SOCIAL)
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
        JOURNEYS_COLLECTOR_ENDPOINTS="segment",  # the only credential given
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
                    ("/social", lambda _: SOCIAL),
                    ("/meta/webhook", meta_signed),
                )
            ]
            + [
                ("/twilio/voice/status", body, twilio_signed(client, "/twilio/voice/status", body))
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
