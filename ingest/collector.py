"""`journeys collect`: an HTTP collector speaking each provider's own webhook convention.

Providers push events; the collector checks who is calling, validates the
payload with the same adapters the workers use, and answers **2xx only after
Kafka has the record** (acks from all in-sync replicas), so a provider's own
retry covers every failure on our side:

- `POST /v1/{track,page,screen,identify,alias,group,batch}`: the Segment HTTP
  tracking API, HTTP Basic auth with the write key as user name;
- `POST /sendgrid/events`: the SendGrid Event Webhook (JSON array), ECDSA
  signature headers checked against the verification key;
- `POST /twilio/voice/status`: Twilio Voice status callbacks (form-encoded),
  `X-Twilio-Signature` checked with the auth token;
- `POST /social`: the project's social JSON (object or array), a bearer token;
- `GET`/`POST /meta/webhook`: Meta Graph webhooks (verify token handshake,
  `X-Hub-Signature-256` checked with the app secret);
- `GET /health/live`, `/health/ready` (ready = Kafka reachable).

Authentication is on by default: every enabled endpoint needs its credential
(`CREDENTIALS`), or the collector refuses to start (`CollectorConfig.check`).
An operator enables only some endpoints (`JOURNEYS_COLLECTOR_ENDPOINTS`) or,
for local development only, lets named endpoints without a credential take
unauthenticated requests (`JOURNEYS_COLLECTOR_INSECURE`, a warning at start).
Credentials come from the environment or `*_FILE` files (`ingest.secrets`).
During a rotation a shared secret's previous value (`NAME_PREVIOUS`) is
accepted alongside the current one (`CollectorConfig.accepted`).

Every endpoint is rate limited per client address (token buckets,
`RateLimiter`): 429 with `Retry-After` past the limit. The address is the TCP
peer's, or, when that peer is a trusted proxy
(`JOURNEYS_COLLECTOR_TRUSTED_PROXIES`), the client it names in
`X-Forwarded-For` (`client_address`).

Answers: 200 with `{"accepted": n, "rejected": [...]}` when at least one
record is valid (the raw record goes on its channel's raw topic unchanged;
invalid elements of a partly valid batch are dead-lettered by the normalise
stage, once); 400 with the reasons when nothing in the body is valid (each
reason also goes to the dead-letter topic); 401/403 for failed
authentication; 413 over the size limit; 415 for a wrong content type; 429
over the rate limit; 503 with `Retry-After` when Kafka does not acknowledge in
time.

Every request gives one access-log line (logger `journeys.collector.access`)
with method, path, status, duration, body size, the accepted/rejected counts,
the refusal reason and `credential=previous` (a rotation's old credential was
used) as `extra` fields; never a body, a query string (Meta's verify token
travels in one), a credential or a client address.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from .context import IngestContext
from .kafka import ensure_topics, make_producer
from .pipeline import parse_records
from .records import DeadLetter, RawRecord
from .secrets import FILE_SUFFIX, SecretError, secret_from_env
from .topics import Topics, bootstrap_from_env, dead_letter_headers, message_key, raw_headers

log = logging.getLogger("journeys.collector")
access = logging.getLogger("journeys.collector.access")

SEGMENT_CALL_LIMIT = 32 * 1024  # Segment: "maximum of 32KB per call"
SEGMENT_BATCH_LIMIT = 500 * 1024  # Segment: "maximum of 500KB per batch request"
WEBHOOK_LIMIT = 1024 * 1024
SEGMENT_CALLS = ("track", "page", "screen", "identify", "alias", "group")
SIGNATURE_TOLERANCE = 300  # seconds a SendGrid signature timestamp may be old (replay window)
ENDPOINTS = ("segment", "sendgrid", "twilio", "social", "meta")
ENDPOINTS_ENV = "JOURNEYS_COLLECTOR_ENDPOINTS"
INSECURE_ENV = "JOURNEYS_COLLECTOR_INSECURE"
RATE_ENV = "JOURNEYS_COLLECTOR_RATE"
BURST_ENV = "JOURNEYS_COLLECTOR_BURST"
TRUSTED_PROXIES_ENV = "JOURNEYS_COLLECTOR_TRUSTED_PROXIES"
# Generous: a client address may send 100 requests a second sustained, 1,000 at once.
DEFAULT_RATE = 100.0
DEFAULT_BURST = 1000
MAX_RATE_CLIENTS = 100_000  # buckets kept; the least recently seen client is forgotten past this
PREVIOUS_SUFFIX = "_PREVIOUS"


class Credential(NamedTuple):
    """A credential an endpoint checks: its `CollectorConfig` field and the variable that sets it."""

    config_field: str
    variable: str
    # A shared secret: during a rotation `variable_PREVIOUS` (or the file in `variable_PREVIOUS_FILE`)
    # holds the old value, accepted alongside the current one. SendGrid's verification key is a
    # public key and SendGrid signs with one private key at a time: no previous key (docs/deploy.md).
    rotates: bool = True


# What each endpoint needs before it may start.
CREDENTIALS: dict[str, tuple[Credential, ...]] = {
    "segment": (Credential("segment_write_key", "JOURNEYS_SEGMENT_WRITE_KEY"),),
    "sendgrid": (
        Credential("sendgrid_verification_key", "JOURNEYS_SENDGRID_VERIFICATION_KEY", rotates=False),
    ),
    "twilio": (Credential("twilio_auth_token", "JOURNEYS_TWILIO_AUTH_TOKEN"),),
    "social": (Credential("social_token", "JOURNEYS_SOCIAL_TOKEN"),),
    "meta": (
        Credential("meta_app_secret", "JOURNEYS_META_APP_SECRET"),
        Credential("meta_verify_token", "JOURNEYS_META_VERIFY_TOKEN"),
    ),
}
CREDENTIAL_OF_FIELD = {c.config_field: c for needed in CREDENTIALS.values() for c in needed}
# How the HTTP server runs, in production and in the tests alike: aiohttp's own
# access log would write client addresses and query strings (Meta's verify token).
SERVER_OPTIONS: dict[str, Any] = {"access_log": None}
# Per request (each runs in its own task): what the access-log line adds to method, path and status.
_outcome: ContextVar[dict[str, Any] | None] = ContextVar("journeys_collector_outcome", default=None)


def _note(**fields: Any) -> None:
    """Add fields (counts, a refusal reason: never a body) to this request's access-log line."""
    outcome = _outcome.get()
    if outcome is not None:
        outcome.update(fields)


class CollectorConfigError(ValueError):
    """The collector cannot start as configured; the message says what to set (never a secret)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str, variable: str) -> tuple[Network, ...]:
    """The addresses and CIDR networks of a comma- or space-separated list (a lone address is a /32 or /128).

    Raises `CollectorConfigError` naming `variable` and every entry that is
    not one, including a network with host bits set (`10.0.0.1/8`: did the
    operator mean 10.0.0.0/8 or the one host?).
    """
    networks: list[Network] = []
    wrong: list[str] = []
    for entry in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            wrong.append(str(exc))
    if wrong:
        raise CollectorConfigError(
            f"{variable} must list IP addresses or CIDR networks (e.g. 10.0.0.0/8, 2001:db8::/32): "
            + "; ".join(wrong)
        )
    return tuple(networks)


def _address(text: str | None) -> Address | None:
    """The IP address in `text`, else None; IPv4-mapped IPv6 (a dual-stack socket's IPv4 peer) as IPv4."""
    try:
        address = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client a request is rate limited as: the TCP peer, unless that is a trusted proxy.

    `peer` is aiohttp's `request.remote`: the socket's peer address (None once
    the transport is gone; not an address on a Unix socket), never anything a
    header said. Only when it lies in `trusted` is `X-Forwarded-For` read
    (`forwarded_for`: every such header line, in order, as proxies may add a
    line rather than extend one): the client is the right-most address that
    is not itself a trusted proxy, since each proxy appends the peer it saw
    and everything left of the first untrusted one is whatever that client
    chose to send. When every hop is trusted, the left-most one is the client.
    A malformed hop (`unknown`, a port, a name) leaves the peer: nothing
    beyond it can be trusted. Addresses come back normalised, so one client
    has one bucket however its address is spelled.
    """
    address = _address(peer)
    if address is None:
        return peer or ""
    if not any(address in network for network in trusted):
        return str(address)
    client = address
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    for hop in reversed(hops):
        forwarded = _address(hop)
        if forwarded is None:
            return str(address)
        client = forwarded
        if not any(forwarded in network for network in trusted):
            break
    return str(client)


@dataclass(frozen=True)
class CollectorConfig:
    """Where records go, the providers' credentials and the limits; `from_env` reads the documented variables.

    `check()` refuses a configuration in which an enabled endpoint has no
    credential, unless that endpoint is named in `insecure`.
    """

    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    # The credentials (`CREDENTIALS`); kept out of repr so that logging a config never logs a secret.
    segment_write_key: str | None = field(default=None, repr=False)
    sendgrid_verification_key: str | None = field(default=None, repr=False)
    twilio_auth_token: str | None = field(default=None, repr=False)
    social_token: str | None = field(default=None, repr=False)  # `Authorization: Bearer` on POST /social
    meta_verify_token: str | None = field(default=None, repr=False)
    meta_app_secret: str | None = field(default=None, repr=False)
    # During a rotation, the old value of a credential by its field ("segment_write_key": …),
    # accepted alongside the current one: `accepted` is the one place that combines them.
    previous: Mapping[str, str] = field(default_factory=dict, repr=False)
    public_url: str | None = None  # the URL providers call, for Twilio signatures behind a proxy
    send_timeout: float = 10.0  # seconds to wait for Kafka's acknowledgement before answering 503
    segment_call_limit: int = SEGMENT_CALL_LIMIT
    segment_batch_limit: int = SEGMENT_BATCH_LIMIT
    webhook_limit: int = WEBHOOK_LIMIT  # SendGrid, Twilio, social and Meta bodies
    endpoints: frozenset[str] = frozenset(ENDPOINTS)  # the others are not routed (404)
    insecure: frozenset[str] = frozenset()  # enabled endpoints allowed to run without a credential
    rate: float = DEFAULT_RATE  # requests a second per client address and endpoint; 0 = no limit
    burst: int = DEFAULT_BURST  # requests a client may send at once before the rate applies
    # Peers whose X-Forwarded-For names the client to rate limit (`client_address`); none by default.
    trusted_proxies: tuple[Network, ...] = ()
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CollectorConfig:
        """The configuration from the environment; raises `CollectorConfigError` for unusable values."""
        env = os.environ if environ is None else environ

        def value(name: str) -> str | None:
            return env.get(name, "").strip() or None

        def secret(name: str) -> str | None:
            try:
                found = secret_from_env(name, env, what=name)
                return None if found is None else found.decode("utf-8")
            except SecretError as exc:
                raise CollectorConfigError(str(exc)) from None
            except UnicodeDecodeError:
                raise CollectorConfigError(f"{name} (or {name}{FILE_SUFFIX}) is not UTF-8 text") from None

        def number(name: str, default: float) -> float:
            text = value(name)
            try:
                return default if text is None else float(text)
            except ValueError:
                raise CollectorConfigError(f"{name} must be a number, got {text!r}") from None

        credentials = {c.config_field: secret(c.variable) for c in CREDENTIAL_OF_FIELD.values()}
        # Every credential's, so that `check` can refuse one that has no previous value (SendGrid's).
        previous = {
            c.config_field: old
            for c in CREDENTIAL_OF_FIELD.values()
            if (old := secret(c.variable + PREVIOUS_SUFFIX)) is not None
        }
        config = cls(
            bootstrap=bootstrap_from_env(env),
            topics=Topics.from_env(env),
            public_url=value("JOURNEYS_COLLECTOR_PUBLIC_URL"),
            endpoints=_endpoint_names(env, ENDPOINTS_ENV) or frozenset(ENDPOINTS),
            insecure=_endpoint_names(env, INSECURE_ENV),
            rate=number(RATE_ENV, DEFAULT_RATE),
            burst=int(number(BURST_ENV, DEFAULT_BURST)),
            trusted_proxies=parse_networks(env.get(TRUSTED_PROXIES_ENV, ""), TRUSTED_PROXIES_ENV),
            previous=previous,
            **credentials,
        )
        return config if not overrides else type(config)(**{**config.__dict__, **overrides})

    def missing_credentials(self, endpoint: str) -> list[str]:
        """The environment variables `endpoint` needs that are not set."""
        return [c.variable for c in CREDENTIALS[endpoint] if getattr(self, c.config_field) is None]

    def accepted(self, config_field: str) -> tuple[str, ...]:
        """Every value a check of the credential in `config_field` accepts, the current one first.

        During a rotation the previous one follows it. Every handler asks here,
        so this is the one place that says what an endpoint accepts; empty when
        the credential is not configured (an endpoint named insecure).
        """
        current = getattr(self, config_field)
        if current is None:
            return ()
        previous = self.previous.get(config_field)
        return (current,) if previous is None else (current, previous)

    def check(self) -> list[str]:
        """Raise `CollectorConfigError` unless the collector may start; return the warnings to log.

        Every problem is in the one message, so one restart fixes them all.
        """
        problems: list[str] = []
        for variable, names in ((ENDPOINTS_ENV, self.endpoints), (INSECURE_ENV, self.insecure)):
            unknown = sorted(set(names) - set(ENDPOINTS))
            if unknown:
                problems.append(
                    f"{variable} names unknown endpoints {unknown}; choose from {', '.join(ENDPOINTS)}"
                )
        if not self.endpoints:
            problems.append(f"no endpoint is enabled ({ENDPOINTS_ENV})")
        if self.rate < 0 or (self.rate > 0 and self.burst < 1):
            problems.append(f"{RATE_ENV} must be ≥ 0 (0 = no limit) and {BURST_ENV} ≥ 1")
        problems.extend(self._rotation_problems())
        warnings: list[str] = []
        unauthenticated: list[str] = []
        for endpoint in (e for e in ENDPOINTS if e in self.endpoints):
            missing = self.missing_credentials(endpoint)
            if not missing:
                continue
            wanted = " and ".join(f"{v} (or {v}{FILE_SUFFIX})" for v in missing)
            if endpoint in self.insecure:
                warnings.append(
                    f"INSECURE: the {endpoint} endpoint accepts unauthenticated requests "
                    f"({INSECURE_ENV}={endpoint}, no {' or '.join(missing)}): for local development only"
                )
            else:
                unauthenticated.append(f"{endpoint} needs {wanted}")
        if unauthenticated:
            problems.append(
                "authentication is required on every enabled endpoint: "
                + "; ".join(unauthenticated)
                + f". Set the credentials, enable only some endpoints ({ENDPOINTS_ENV}=segment,twilio), "
                f"or for local development only allow them unauthenticated ({INSECURE_ENV}=sendgrid,…)"
            )
        if "sendgrid" in self.endpoints and self.sendgrid_verification_key is not None:
            from cryptography.hazmat.primitives.asymmetric import ec

            try:
                usable = isinstance(
                    _load_ecdsa_key(self.sendgrid_verification_key), ec.EllipticCurvePublicKey
                )
            except ValueError:
                usable = False
            if not usable:
                problems.append(
                    "JOURNEYS_SENDGRID_VERIFICATION_KEY is not an ECDSA public key "
                    "(base64 DER as SendGrid shows it, or PEM)"
                )
        if problems:
            raise CollectorConfigError("the collector cannot start: " + " | ".join(problems))
        return warnings

    def _rotation_problems(self) -> list[str]:
        """A previous credential that cannot be accepted: one without a current one, or SendGrid's key."""
        problems: list[str] = []
        for config_field in sorted(self.previous):
            credential = CREDENTIAL_OF_FIELD.get(config_field)
            if credential is None:
                problems.append(f"{config_field!r} is not a credential")
                continue
            current, old = credential.variable, credential.variable + PREVIOUS_SUFFIX
            if not credential.rotates:
                problems.append(
                    f"{old} is not supported: SendGrid signs with one key at a time, so a previous "
                    f"verification key verifies nothing it sends; put the new key in {current} "
                    "(docs/deploy.md, rotating provider credentials)"
                )
            elif getattr(self, config_field) is None:
                problems.append(
                    f"{old} is set without {current}: during a rotation {current} holds the new "
                    f"credential and {old} the old one"
                )
        return problems


def _endpoint_names(env: Mapping[str, str], variable: str) -> frozenset[str]:
    """Endpoint names from a comma- or space-separated variable (checked by `CollectorConfig.check`)."""
    return frozenset(name.strip().lower() for name in env.get(variable, "").replace(",", " ").split())


class RateLimiter:
    """Token buckets per client: `rate` requests a second sustained, up to `burst` at once.

    A client's bucket holds at most `burst` tokens, refills at `rate` a second
    and each request takes one; an empty bucket says how long until the next
    token. Time comes from `clock` (monotonic seconds), so tests drive it. At
    most `max_clients` buckets are kept: past that the least recently seen
    client is forgotten (it comes back with a full bucket), which bounds memory
    under a flood of addresses.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_RATE_CLIENTS,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # client -> (tokens, when counted)

    def wait(self, client: Hashable) -> float:
        """0.0 when `client` may go ahead (one token taken), else the seconds until its next token."""
        now = self.clock()
        tokens, counted = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - counted) * self.rate)
        waiting = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            waiting = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # re-inserted: the dict's order is least recently seen first
        if len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]
        return waiting


class KafkaUnavailable(RuntimeError):
    """Kafka did not acknowledge in time."""


class KafkaSender:
    """The idempotent kafka-python producer, awaited from the event loop without blocking it.

    The producer is made on first use and made again after a failed start, so
    the collector starts (live, not ready) while Kafka is still down.
    """

    def __init__(self, bootstrap: str, timeout: float, probe_topic: str) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.probe_topic = probe_topic
        self._producer: Any = None
        self._lock = threading.Lock()

    def _ensure(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(
                    self.bootstrap,
                    client_id="journeys-collector",
                    linger_ms=5,
                    max_block_ms=int(self.timeout * 1000),
                    bootstrap_timeout_ms=int(self.timeout * 1000),
                )
            return self._producer

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()

        def send_and_wait() -> None:
            producer = self._ensure()
            producer.send(topic, key=key, value=value, headers=headers).get(timeout=self.timeout)

        try:
            await loop.run_in_executor(None, send_and_wait)
        except Exception as exc:
            raise KafkaUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def ready(self) -> bool:
        """Kafka answers a fresh metadata request within the send timeout.

        `partitions_for` alone answers from the producer's cached metadata once it
        has any, so it would stay ready through an outage; the refresh goes to a
        broker every time.
        """
        try:
            producer = self._ensure()
            if not producer.partitions_for(self.probe_topic):
                return False
            # kafka-python has no public "refresh metadata now": this is what partitions_for does inside.
            refreshed = producer._metadata.request_update()
            producer._sender.wakeup()
            done = threading.Event()
            refreshed.add_both(lambda *_: done.set())
            return done.wait(self.timeout) and refreshed.succeeded()
        except Exception:
            return False

    def close(self) -> None:
        """Flush and close; records Kafka still has not acknowledged are dropped (they were answered 503)."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.flush(timeout=self.timeout)
        except Exception as exc:
            log.warning("closing with records Kafka did not acknowledge (answered 503, so retried): %s", exc)
            # kafka-python's close() flushes again and would raise the same way: abort what is left first.
            producer._sender.force_close()
            producer._sender.join(self.timeout)
        producer.close(timeout=self.timeout)


def _problem(
    status: int, reason: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error answer with its reason (our own words, never quoting a body or a credential)."""
    answer_headers = {"Retry-After": "5"} if status == 503 else {}
    answer_headers.update(headers or {})
    _note(reason=reason)
    return web.json_response({"error": reason, **extra}, status=status, headers=answer_headers or None)


async def _read_body(request: web.Request, limit: int) -> bytes | web.Response:
    if request.content_length is not None and request.content_length > limit:
        return _problem(413, f"request body of {request.content_length} bytes is over the limit of {limit}")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        return _problem(413, f"request body is over the limit of {limit} bytes")
    return body


async def _body(request: web.Request, content_type: str, limit: int) -> bytes | web.Response:
    """The request body, or the 415/413 answer saying why not."""
    if request.content_type != content_type:
        return _problem(415, f"expected Content-Type {content_type}, got {request.content_type or 'none'}")
    return await _read_body(request, limit)


class Collector:
    """The request handlers; one instance per app."""

    def __init__(self, config: CollectorConfig, context: IngestContext, sender: Any) -> None:
        self.config = config
        self.context = context
        self.sender = sender
        enabled = "sendgrid" in config.endpoints
        self._sendgrid_key = _load_ecdsa_key(config.sendgrid_verification_key) if enabled else None
        self._limiter = RateLimiter(config.rate, config.burst, config.clock) if config.rate > 0 else None

    def limited(
        self, endpoint: str, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """`handler` behind the rate limit of (endpoint, client address), checked before anything else.

        Before authentication, so a flood of wrong credentials is limited too;
        per endpoint, so one provider's burst never holds up another's. The
        address is the TCP peer's, or behind a trusted proxy the client's it
        forwards for (`client_address`), and is only a bucket's name in
        memory: never logged, never in an answer.
        """

        async def limited_handler(request: web.Request) -> web.Response:
            if self._limiter is not None:
                client = client_address(
                    request.remote,
                    request.headers.getall("X-Forwarded-For", ()),
                    self.config.trusted_proxies,
                )
                waiting = self._limiter.wait((endpoint, client))
                if waiting > 0:
                    return _problem(
                        429,
                        f"over the rate limit of {self.config.rate:g} requests a second; retry later",
                        headers={"Retry-After": str(max(1, math.ceil(waiting)))},
                    )
            return await handler(request)

        return limited_handler

    # -- the shared path: validate, then Kafka, then answer

    async def accept(self, request: web.Request, raw: bytes, format_name: str) -> web.Response:
        record = RawRecord(raw, f"{request.method} {request.path}", format_name)
        outcomes = list(parse_records([record], self.context))
        letters = [o for o in outcomes if isinstance(o, DeadLetter)]
        accepted = len(outcomes) - len(letters)
        rejected = [{"origin": letter.origin, "reason": letter.reason} for letter in letters]
        _note(accepted=accepted, rejected=len(letters))
        try:
            if accepted == 0:
                await asyncio.gather(
                    *(
                        self.sender.send(
                            self.config.topics.dead_letters,
                            letter.origin.encode("utf-8"),
                            letter.raw,
                            dead_letter_headers(letter, "collect"),
                        )
                        for letter in letters
                    )
                )
                return _problem(400, "no valid record in the request", rejected=rejected)
            await self.sender.send(
                self.config.topics.raw_for_format(format_name),
                message_key(raw, self.context.hasher),
                raw,
                raw_headers(record, received_at=datetime.now(UTC)),
            )
        except KafkaUnavailable as exc:
            log.warning("Kafka unavailable for %s: %s", request.path, exc)
            return _problem(503, "the event store is unavailable; retry later")
        return web.json_response({"accepted": accepted, "rejected": rejected})

    # -- Segment

    # Each handler checks its credential when one is configured; `CollectorConfig.check`
    # lets an endpoint run without one only when the operator named it insecure.

    async def segment(self, request: web.Request) -> web.Response:
        keys = self.config.accepted("segment_write_key")
        if keys and not _authentic(_basic_user(request), keys):
            return _problem(
                401,
                "missing or wrong write key (HTTP Basic, write key as user name)",
                headers={"WWW-Authenticate": 'Basic realm="segment"'},
            )
        call = request.match_info["call"]
        limit = self.config.segment_batch_limit if call == "batch" else self.config.segment_call_limit
        body = await _body(request, "application/json", limit)
        if isinstance(body, web.Response):
            return body
        if call != "batch":
            body = _with_type(body, call)
        return await self.accept(request, body, "segment")

    # -- SendGrid

    async def sendgrid(self, request: web.Request) -> web.Response:
        body = await _body(request, "application/json", self.config.webhook_limit)
        if isinstance(body, web.Response):
            return body
        if self._sendgrid_key is not None:
            problem = _check_sendgrid_signature(self._sendgrid_key, request, body)
            if problem is not None:
                return _problem(403, problem)
        return await self.accept(request, body, "sendgrid")

    # -- Twilio

    async def twilio(self, request: web.Request) -> web.Response:
        body = await _body(request, "application/x-www-form-urlencoded", self.config.webhook_limit)
        if isinstance(body, web.Response):
            return body
        tokens = self.config.accepted("twilio_auth_token")
        if tokens:
            url = (
                (self.config.public_url.rstrip("/") + request.path_qs)
                if self.config.public_url
                else str(request.url)
            )
            expected = [twilio_signature(token, url, body) for token in tokens]
            if not _authentic(request.headers.get("X-Twilio-Signature"), expected):
                return _problem(
                    403, "X-Twilio-Signature does not match (check JOURNEYS_COLLECTOR_PUBLIC_URL)"
                )
        return await self.accept(request, body, "twilio")

    # -- social

    async def social(self, request: web.Request) -> web.Response:
        tokens = self.config.accepted("social_token")
        if tokens and not _authentic(_bearer(request), tokens):
            return _problem(
                401,
                "missing or wrong bearer token (Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await _body(request, "application/json", self.config.webhook_limit)
        if isinstance(body, web.Response):
            return body
        return await self.accept(request, body, "social")

    # -- Meta

    async def meta_verify(self, request: web.Request) -> web.Response:
        query = request.query
        tokens = self.config.accepted("meta_verify_token")
        if not tokens:
            # Only when the operator allowed Meta unauthenticated: there is nothing to compare with.
            return _problem(503, "the Meta handshake is not configured (set JOURNEYS_META_VERIFY_TOKEN)")
        if query.get("hub.mode") != "subscribe" or not _authentic(query.get("hub.verify_token"), tokens):
            return _problem(403, "hub.mode must be subscribe and hub.verify_token must match")
        return web.Response(text=query.get("hub.challenge", ""))

    async def meta(self, request: web.Request) -> web.Response:
        body = await _body(request, "application/json", self.config.webhook_limit)
        if isinstance(body, web.Response):
            return body
        secrets = self.config.accepted("meta_app_secret")
        if secrets:
            expected = [
                "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest() for secret in secrets
            ]
            if not _authentic(request.headers.get("X-Hub-Signature-256"), expected):
                return _problem(403, "X-Hub-Signature-256 does not match the app secret")
        return await self.accept(request, body, "meta")

    # -- health

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, self.sender.ready):
            return web.json_response({"status": "ready"})
        return _problem(503, f"Kafka at {self.config.bootstrap} is not reachable")


def create_collector(config: CollectorConfig, context: IngestContext, sender: Any) -> web.Application:
    """The aiohttp application; `sender` has `async send(topic, key, value, headers)` and `ready()`.

    Raises `CollectorConfigError` when an enabled endpoint has no credential and
    was not named insecure; logs a warning for each endpoint that was.
    Disabled endpoints have no route (404).
    """
    for warning in config.check():
        log.warning(warning)
    handlers = Collector(config, context, sender)
    routes = {
        "segment": [web.post("/v1/{call:track|page|screen|identify|alias|group|batch}", handlers.segment)],
        "sendgrid": [web.post("/sendgrid/events", handlers.sendgrid)],
        "twilio": [web.post("/twilio/voice/status", handlers.twilio)],
        "social": [web.post("/social", handlers.social)],
        "meta": [web.get("/meta/webhook", handlers.meta_verify), web.post("/meta/webhook", handlers.meta)],
    }
    # aiohttp's own limit sits above ours so that ours answers with the reason.
    largest = max(config.segment_call_limit, config.segment_batch_limit, config.webhook_limit)
    app = web.Application(client_max_size=largest * 2, middlewares=[access_log])
    app.add_routes(
        [
            web.route(route.method, route.path, handlers.limited(endpoint, route.handler))
            for endpoint in ENDPOINTS
            if endpoint in config.endpoints
            for route in routes[endpoint]
        ]
    )
    app.add_routes(
        [
            web.get("/health/live", handlers.live),
            web.get("/health/ready", handlers.ready),
        ]
    )
    return app


def run_collector(config: CollectorConfig, context: IngestContext, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; the producer is flushed and closed on the way out.

    The configuration is checked before Kafka is contacted, so a missing
    credential fails at once (`CollectorConfigError`).
    """
    config.check()
    ensure_topics(config.bootstrap, config.topics)
    sender = KafkaSender(config.bootstrap, config.send_timeout, config.topics.raw("web"))
    app = create_collector(config, context, sender)

    async def close_sender(_: web.Application) -> None:
        sender.close()

    app.on_cleanup.append(close_sender)
    enabled = ", ".join(e for e in ENDPOINTS if e in config.endpoints)
    log.info("collecting on %s:%d into Kafka at %s (endpoints: %s)", host, port, config.bootstrap, enabled)
    web.run_app(app, host=host, port=port, print=None, **SERVER_OPTIONS)


@web.middleware
async def access_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """One structured line per request: no body, no query string, no client address."""
    started = time.perf_counter()
    outcome: dict[str, Any] = {}
    token = _outcome.set(outcome)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        outcome.setdefault("reason", exc.reason)
        raise
    finally:
        _outcome.reset(token)
        # An unmatched path is whatever the caller sent; only our own routes are logged by name.
        path = request.path if request.match_info.route.resource is not None else "<unmatched>"
        fields: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "bytes": request.content_length,
            **outcome,
        }
        counts = (
            f" accepted={fields['accepted']} rejected={fields['rejected']}" if "accepted" in outcome else ""
        )
        because = f" ({outcome['reason']})" if "reason" in outcome else ""
        previous = " credential=previous" if "credential" in outcome else ""
        access.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "%s %s %d%s%s%s %.1f ms",
            request.method,
            path,
            status,
            previous,
            counts,
            because,
            fields["duration_ms"],
            extra=fields,
        )


# -- provider conventions


def _basic_user(request: web.Request) -> str | None:
    """The user name of HTTP Basic authentication (Segment's write key), if the request has one."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        return base64.b64decode(header[6:], validate=True).decode("utf-8").split(":", 1)[0]
    except (ValueError, UnicodeDecodeError):
        return None


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def _authentic(given: str | None, expected: Sequence[str]) -> bool:
    """`given` equals one of `expected`: what `CollectorConfig.accepted` allows, the current one first.

    Each comparison is constant-time and all of them are made, so the time
    taken does not say which one matched. A match of any but the first (the
    previous credential, during a rotation) is noted in the access log, so an
    operator sees when the old one is no longer used and can be removed.
    """
    if given is None:
        return False
    matches = [_same(given, candidate) for candidate in expected]
    if any(matches[1:]) and not matches[0]:
        _note(credential="previous")
    return any(matches)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two texts (as UTF-8: `compare_digest` refuses non-ASCII `str`)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _with_type(body: bytes, call: str) -> bytes:
    """A single Segment call with `type` taken from its path when the body lacks it."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # the pipeline gives the reason
    if isinstance(obj, dict) and "type" not in obj:
        obj["type"] = call
        return orjson.dumps(obj)
    return body


def twilio_signature(auth_token: str, url: str, body: bytes) -> str:
    """Twilio's request signature: HMAC-SHA1 over the URL and the sorted POST parameters, base64."""
    params = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    data = url + "".join(name + value for name, value in params)
    return base64.b64encode(
        hmac.new(auth_token.encode(), data.encode("utf-8"), hashlib.sha1).digest()
    ).decode()


def _load_ecdsa_key(text: str | None) -> Any:
    if text is None:
        return None
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

    text = text.strip()
    if text.startswith("-----BEGIN"):
        return load_pem_public_key(text.encode())
    return load_der_public_key(base64.b64decode(text))  # SendGrid shows base64 DER without PEM framing


def _check_sendgrid_signature(key: Any, request: web.Request, body: bytes) -> str | None:
    """None when the ECDSA (P-256, SHA-256) signature over timestamp + body verifies, else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature")
    timestamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp")
    if not signature or not timestamp:
        return "missing X-Twilio-Email-Event-Webhook-Signature or -Timestamp header"
    try:
        if abs(time.time() - int(timestamp)) > SIGNATURE_TOLERANCE:
            return f"signature timestamp is more than {SIGNATURE_TOLERANCE} s old"
        key.verify(base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return "the SendGrid signature does not verify with JOURNEYS_SENDGRID_VERIFICATION_KEY"
    return None
