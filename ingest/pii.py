"""Personal data handling: normalise, keyed-hash, and scrub before anything is stored.

Email addresses and phone numbers are customer identifiers, but they must never
reach storage or logs in the clear. They are normalised (so `Jan@X.nl ` and
`jan@x.nl` link) and replaced by `HMAC-SHA256(key, normalised)` in hex. A keyed
hash rather than a plain one: without the key nobody can hash a list of known
addresses and look them up.

The key comes from `JOURNEYS_PII_KEY` or from the file named by
`JOURNEYS_PII_KEY_FILE` (its bytes, trailing whitespace stripped); use 32 random
bytes. Demo and tests pass a key explicitly with `PiiHasher(key)`.

Messages raised from here never contain the raw value: callers put them in
dead-letter reasons and logs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
import phonenumbers

from .secrets import FILE_SUFFIX, SecretError, secret_from_env

PII_KEY_ENV = "JOURNEYS_PII_KEY"
PII_KEY_FILE_ENV = PII_KEY_ENV + FILE_SUFFIX
DEFAULT_PHONE_REGION = "NL"

# Property keys that carry personal data, compared after folding (lower-case, no
# `_`, `-` or spaces) so `firstName`, `first_name` and `First-Name` all match.
# `city` and `country` are kept on purpose: coarse location is useful for journey
# analysis and does not single a person out; street, house number and postcode do.
# `name` is dropped everywhere, which also drops product names in e-commerce
# events: the product id and SKU stay, and guessing which `name` is a person's is
# how PII leaks.
PII_PROPERTY_KEYS: frozenset[str] = frozenset(
    {
        "email",
        "emailaddress",
        "phone",
        "phonenumber",
        "mobile",
        "mobilenumber",
        "telephone",
        "name",
        "firstname",
        "lastname",
        "fullname",
        "givenname",
        "familyname",
        "surname",
        "middlename",
        "username",
        "address",
        "streetaddress",
        "street",
        "address1",
        "address2",
        "addressline1",
        "addressline2",
        "housenumber",
        "postalcode",
        "postcode",
        "zip",
        "zipcode",
        "ip",
        "ipaddress",
        "birthday",
        "dateofbirth",
        "birthdate",
        "dob",
        "ssn",
        "bsn",
        "iban",
        "password",
    }
)
# Deeper nesting than this is dropped rather than walked: it never carries
# journey-relevant data and unbounded recursion is a crash waiting for input.
MAX_PROPERTY_DEPTH = 16
_RAW_CACHE_SIZE = 65536

# Linear time on any input (the text is untrusted): the local part may only start
# after a delimiter (lookbehind), contains no `@` and no `%40`, and the domain is
# dot-separated labels. A pattern with overlapping `[^…]+` runs around `@` is
# cubic: 6 kB of `a@.` took minutes.
_EMAIL_DELIMITERS = r"\s<>\"'(),;:/?&=@"
_EMAIL_IN_TEXT = re.compile(
    rf"(?<![^{_EMAIL_DELIMITERS}])(?:[^{_EMAIL_DELIMITERS}%]|%(?!40))+(?:@|%40)(?:[A-Za-z0-9-]+\.)+[A-Za-z]{{2,}}"
)


class PiiError(ValueError):
    """A value could not be normalised; the message never contains the value."""


class PiiKeyError(RuntimeError):
    """No usable hashing key is configured. A deployment error, not a bad record."""


def normalise_email(raw: str) -> str:
    """Trim and lower-case an email address; reject what is clearly not one."""
    value = raw.strip().lower()
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise PiiError("not an email address")
    if any(ch.isspace() for ch in value):
        raise PiiError("email address contains white space")
    return value


@lru_cache(maxsize=65536)
def normalise_phone(raw: str, region: str = DEFAULT_PHONE_REGION) -> str:
    """Parse a phone number (national numbers read in `region`) and return it in E.164.

    Cached: parsing costs ~25 µs and the same customers call again and again.
    """
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise PiiError("not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise PiiError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def load_pii_key(environ: Mapping[str, str] | None = None) -> bytes:
    """Read the hashing key from `JOURNEYS_PII_KEY` or the file in `JOURNEYS_PII_KEY_FILE`."""
    env = os.environ if environ is None else environ
    try:
        key = secret_from_env(PII_KEY_ENV, env, what="the PII key")
    except SecretError as exc:
        raise PiiKeyError(str(exc)) from None
    if key is None:
        raise PiiKeyError(
            f"no PII hashing key: set {PII_KEY_ENV} or {PII_KEY_FILE_ENV} "
            "(emails and phone numbers are stored only as keyed hashes)"
        )
    return key


class PiiHasher:
    """Keyed hashing of normalised emails and phone numbers.

    Build it with an explicit key (`PiiHasher(b"...")`) or from the environment
    (`PiiHasher.from_env()`); the latter reads the key on first use, so a run that
    never meets an email or phone number needs no key.
    """

    __slots__ = ("_cached_digest", "_email_digests", "_key", "_loader")

    def __init__(self, key: bytes | str | None = None, *, loader: Callable[[], bytes] | None = None) -> None:
        if key is None and loader is None:
            raise PiiKeyError("PiiHasher needs a key or a key loader")
        if key is not None:
            key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
            if not key:
                raise PiiKeyError("the PII hashing key is empty")
        self._key: bytes | None = key
        self._loader = loader
        self._cached_digest = lru_cache(maxsize=65536)(self._digest)
        # Raw address -> digest: the same customers write again and again, in the same spelling.
        self._email_digests: dict[str, str] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PiiHasher:
        """A hasher whose key is read from the environment when first needed."""
        snapshot = dict(os.environ if environ is None else environ)
        return cls(loader=lambda: load_pii_key(snapshot))

    def _key_bytes(self) -> bytes:
        if self._key is None:
            assert self._loader is not None
            self._key = self._loader()
        return self._key

    def _digest(self, normalised: str) -> str:
        return hmac.new(self._key_bytes(), normalised.encode("utf-8"), hashlib.sha256).hexdigest()

    def hash(self, normalised: str) -> str:
        """HMAC-SHA256 of an already normalised value, in hex."""
        return self._cached_digest(normalised)

    def hash_email(self, raw: str) -> str:
        """Normalise then hash an email address; `PiiError` if it is not one."""
        digest = self._email_digests.get(raw)
        if digest is None:
            digest = self._cached_digest(normalise_email(raw))
            if len(self._email_digests) >= _RAW_CACHE_SIZE:
                self._email_digests.clear()
            self._email_digests[raw] = digest
        return digest

    def hash_phone(self, raw: str, region: str = DEFAULT_PHONE_REGION) -> str:
        """Normalise to E.164 then hash a phone number; `PiiError` if it is not valid."""
        return self._cached_digest(normalise_phone(raw, region))


@lru_cache(maxsize=4096)
def _fold(key: str) -> str:
    # Cached: property keys come from a small vocabulary and are folded for every event.
    return key.lower().replace("_", "").replace("-", "").replace(" ", "")


def is_pii_key(key: str) -> bool:
    """True when a property key names personal data (see `PII_PROPERTY_KEYS`)."""
    return _fold(key) in PII_PROPERTY_KEYS


def scrub_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `properties` without personal-data keys, at any depth (dicts in lists too).

    String values keep their place but have embedded email addresses replaced by
    `<email>` (`redact_emails`): a `search` of `?email=jan%40x.nl` must not leak.
    """
    return _scrub_dict(properties, 0)


def scrub_value(value: Any) -> Any:
    """`scrub_properties` for any JSON value: objects and arrays scrubbed, strings redacted."""
    if isinstance(value, dict):
        return _scrub_dict(value, 0)
    if isinstance(value, list):
        return _scrub_list(value, 0)
    if isinstance(value, str):
        return redact_emails(value)
    return value


# Property key -> whether it names personal data: a key is folded and looked up
# once, not for every event that carries it. Bounded like `_fold`'s cache.
_PII_KEY_VERDICTS: dict[Any, bool] = {}
_KEY_VERDICTS_SIZE = 4096


def _is_dropped_key(key: Any) -> bool:
    verdict = _PII_KEY_VERDICTS.get(key)
    if verdict is None:
        # Only strings can be str keys (1 == 1.0 == True collide, but none is a string).
        verdict = not isinstance(key, str) or _fold(key) in PII_PROPERTY_KEYS
        if len(_PII_KEY_VERDICTS) >= _KEY_VERDICTS_SIZE:
            _PII_KEY_VERDICTS.clear()
        _PII_KEY_VERDICTS[key] = verdict
    return verdict


def _scrub_dict(source: Mapping[str, Any], depth: int) -> dict[str, Any]:
    # Hot: every event's properties pass here. The common JSON types are told
    # apart by exact type and the email check is inlined (`redact_emails`);
    # anything else (subclasses) takes the general checks, in the same order.
    out: dict[str, Any] = {}
    verdicts = _PII_KEY_VERDICTS
    for key, value in source.items():
        dropped = verdicts.get(key)
        if dropped is None:
            dropped = _is_dropped_key(key)
        if dropped:
            continue
        kind = type(value)
        if kind is str:
            out[key] = _EMAIL_IN_TEXT.sub("<email>", value) if "@" in value or "%40" in value else value
        elif kind is dict or kind is list or isinstance(value, dict | list):
            if depth < MAX_PROPERTY_DEPTH:
                out[key] = (
                    _scrub_dict(value, depth + 1)
                    if isinstance(value, dict)
                    else _scrub_list(value, depth + 1)
                )
        elif isinstance(value, str):
            out[key] = redact_emails(value)
        else:
            out[key] = value
    return out


def _scrub_list(source: list[Any], depth: int) -> list[Any]:
    out: list[Any] = []
    for value in source:
        if isinstance(value, dict):
            if depth < MAX_PROPERTY_DEPTH:
                out.append(_scrub_dict(value, depth + 1))
        elif isinstance(value, list):
            if depth < MAX_PROPERTY_DEPTH:
                out.append(_scrub_list(value, depth + 1))
        elif isinstance(value, str):
            out.append(redact_emails(value))
        else:
            out.append(value)
    return out


def redact_emails(text: str) -> str:
    """Replace email addresses inside free text (SMTP responses, URLs) with `<email>`.

    Bounce reasons and click URLs routinely embed the recipient's address.
    """
    if "@" not in text and "%40" not in text:
        return text
    return _EMAIL_IN_TEXT.sub("<email>", text)


# Keys whose values are phone numbers in the documented formats (Twilio's From/To/
# Caller/Called, the call CSV's caller column) but whose names are not PII words.
_PHONE_VALUE_KEYS: frozenset[str] = frozenset(
    {"from", "to", "caller", "called", "forwardedfrom", "callernumber", "callerid", "msisdn"}
)


def redact_record(raw: bytes, hasher: PiiHasher, region: str = DEFAULT_PHONE_REGION) -> bytes:
    """A rejected record's bytes with the personal data taken out, for the dead-letter store.

    Dead letters are kept for diagnosis, so they keep their shape: a JSON record
    stays JSON with the same keys, a form body stays a form body, a CSV row stays
    a row, and a record with nothing to redact keeps its exact bytes. Email
    addresses and phone numbers, wherever they appear, become `<email:HASH>` /
    `<phone:HASH>` with the same keyed hash the touchpoints use (so a dead letter
    can be traced to its customer); values of personal-data keys that are neither
    become `<redacted>`. Not byte-for-byte replayable: fix and replay from the
    source, which holds the raw record.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        redacted = _redact_json(obj, hasher, region, None, 0)
        return raw if redacted == obj else orjson.dumps(redacted)
    # surrogateescape: bytes that are not UTF-8 survive the round trip unchanged.
    text = raw.decode("utf-8", errors="surrogateescape")
    stripped = text.strip()
    if "=" in stripped and not any(c.isspace() for c in stripped):
        fields = parse_qsl(stripped, keep_blank_values=True)
        if fields:
            redacted_fields = [(key, _redact_field(key, value, hasher, region)) for key, value in fields]
            if redacted_fields == fields:
                return raw
            return urlencode(redacted_fields).encode("utf-8", errors="surrogateescape")
    return redact_text(text, hasher, region).encode("utf-8", errors="surrogateescape")


def redact_text(text: str, hasher: PiiHasher, region: str = DEFAULT_PHONE_REGION) -> str:
    """Free text with email addresses and phone numbers replaced by their keyed hashes."""
    if "@" in text or "%40" in text:
        text = _EMAIL_IN_TEXT.sub(lambda m: _email_token(m.group(0), hasher), text)
    if sum(c.isdigit() for c in text) < 6:
        return text
    pieces: list[str] = []
    last = 0
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        pieces.append(text[last : match.start])
        number = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        pieces.append(f"<phone:{hasher.hash(number)}>")
        last = match.end
    pieces.append(text[last:])
    return "".join(pieces)


def _email_token(found: str, hasher: PiiHasher) -> str:
    try:
        return f"<email:{hasher.hash_email(found.replace('%40', '@'))}>"
    except PiiError:
        return "<email>"


def _redact_field(key: str, value: str, hasher: PiiHasher, region: str) -> str:
    folded = _fold(key)
    if folded in PII_PROPERTY_KEYS or folded in _PHONE_VALUE_KEYS:
        candidate = value.strip()
        # A form body decodes an unescaped `+` as a space.
        if candidate.isdigit() and value.startswith(" "):
            candidate = "+" + candidate
        try:
            return f"<email:{hasher.hash_email(candidate)}>"
        except PiiError:
            pass
        try:
            return f"<phone:{hasher.hash_phone(candidate, region)}>"
        except PiiError:
            pass
        if folded in PII_PROPERTY_KEYS:
            return "<redacted>" if value else value
    return redact_text(value, hasher, region)


def _redact_json(value: Any, hasher: PiiHasher, region: str, key: str | None, depth: int) -> Any:
    if depth > MAX_PROPERTY_DEPTH:
        return "<redacted: nested too deep>"
    if isinstance(value, dict):
        return {
            k: _redact_json(v, hasher, region, k if isinstance(k, str) else None, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_json(v, hasher, region, key, depth + 1) for v in value]
    if isinstance(value, str):
        return (
            _redact_field(key, value, hasher, region)
            if key is not None
            else redact_text(value, hasher, region)
        )
    if key is not None and _fold(key) in PII_PROPERTY_KEYS and value is not None:
        return "<redacted>"
    return value
