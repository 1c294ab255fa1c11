"""Provider requests made the way each provider documents them, and an in-process collector to send them to.

Shared by the collector tests and the stream tests that deliver events by webhook.
The collector runs on aiohttp's test server exactly as `journeys collect` serves
it, with every endpoint's credential set, and sends to a real broker.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ingest.collector import SERVER_OPTIONS, CollectorConfig, KafkaSender, create_collector, twilio_signature
from ingest.context import IngestContext
from ingest.pii import PiiHasher
from ingest.topics import Topics

WRITE_KEY = "wk_test_0123456789"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
META_SECRET = "meta-app-secret"
META_VERIFY = "verify-me"
SOCIAL_TOKEN = "social-token-for-tests"
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_KEY = base64.b64encode(
    PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SOCIAL = {**JSON, "Authorization": f"Bearer {SOCIAL_TOKEN}"}


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


def meta_signed(body: bytes, app_secret: str = META_SECRET) -> dict[str, str]:
    return {
        **JSON,
        "X-Hub-Signature-256": "sha256=" + hmac.new(app_secret.encode(), body, "sha256").hexdigest(),
    }


Call = Callable[[TestClient], Awaitable[None]]


def serve(bootstrap: str, topics: Topics, pii_key: str, call: Call, **config: Any) -> None:
    """Run `call` against a collector sending to `bootstrap`."""
    settings = CollectorConfig(
        bootstrap=bootstrap,
        topics=topics,
        segment_write_key=WRITE_KEY,
        sendgrid_verification_key=PUBLIC_KEY,
        twilio_auth_token=TWILIO_TOKEN,
        social_token=SOCIAL_TOKEN,
        meta_verify_token=META_VERIFY,
        meta_app_secret=META_SECRET,
        send_timeout=2.0,
    )
    settings = CollectorConfig(**{**settings.__dict__, **config})
    sender = KafkaSender(settings.bootstrap, settings.send_timeout, topics.raw("web"))

    async def main() -> None:
        app = create_collector(settings, IngestContext(hasher=PiiHasher(pii_key)), sender)
        # Served as `journeys collect` serves it (no aiohttp access log), on 127.0.0.1 so that
        # clients can come from other loopback addresses.
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**SERVER_OPTIONS)  # TestServer() itself drops runner options
        async with TestClient(server) as client:
            await call(client)

    try:
        asyncio.run(main())
    finally:
        sender.close()


def twilio_signed(client: TestClient, path: str, body: bytes) -> dict[str, str]:
    """Twilio's headers for a form body posted to `path` of the collector `client` talks to."""
    url = str(client.make_url(path))
    return {**FORM, "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, body)}
