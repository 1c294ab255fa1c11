"""A seeded, realistic multi-channel demo dataset with its ground truth.

`generate()` describes a population of people of an online coffee shop
(Bonenbar: espresso machines, grinders, beans, a bean subscription) and
`DemoDataset.write()` streams what the shop's providers would have delivered
about them, in each provider's own raw format:

- `web.jsonl`: Segment calls (track/page/screen/identify/alias) from the website
  (analytics.js, one call per line), from the apps (`/v1/batch` envelopes, one
  per session) and from the server (subscription renewals);
- `email.jsonl`: SendGrid Event Webhook POST bodies, one JSON array per line;
- `twilio.jsonl`: Twilio Voice status callbacks, form fields as a JSON object;
- `calls.csv`: the contact-centre call export;
- `social.jsonl`: the social-listening export (`journeys.social/v1`);
- `truth.json`: who every event really belongs to, the planted pain points, and
  the record accounting (read = stored + dead letters + duplicates).

Everything follows from `seed`: no wall clock, no global random state. Each
person is generated from their own `random.Random`, so output is streamed
person by person (`iter_records()`) in bounded memory and scales to millions of
people. See docs/demo.md for the story and the truth file.
"""

from __future__ import annotations

import base64
import csv
import io
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from journeys.touchpoint import Channel, Phase

from .adapters.callcsv import COLUMNS as CALL_EXPORT_COLUMNS

TRUTH_SCHEMA = "journeys.demo-truth/v1"
SOCIAL_SCHEMA = "journeys.social/v1"
DEFAULT_START = datetime(2026, 9, 1, tzinfo=UTC)
MIN_DAYS = 35

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

DROPOFF_TIMEOUT = 14 * DAY
ALLOWED_LATENESS = HOUR
# Planted and natural drop-offs end at least this long before the end of the data,
# "open" journeys are active within the last 12 days: nothing sits near the timeout.
DROP_MARGIN = 16 * DAY
# Thousands of customers on four channels, reconstructed in well under a minute on 2 cores.
DEFAULT_CUSTOMERS = 3000
WINDOW = 256  # people whose records are time-sorted and mixed together in the files
POST_WINDOW_MS = 30 * 1_000  # SendGrid posts the events it gathered in about 30 seconds
POST_EVENTS = 100  # events in one POST at most (SendGrid's bound is 768 KB of body)

ORIENTATION = Phase.ORIENTATION.value
CONSIDERATION = Phase.CONSIDERATION.value
PURCHASE = Phase.PURCHASE.value
USAGE = Phase.USAGE.value
RETENTION = Phase.RETENTION.value
WEB, EMAIL, PHONE, SOCIAL = (c.value for c in (Channel.WEB, Channel.EMAIL, Channel.PHONE, Channel.SOCIAL))

FILES: dict[str, str] = {
    "web": "web.jsonl",
    "email": "email.jsonl",
    "twilio": "twilio.jsonl",
    "calls": "calls.csv",
    "social": "social.jsonl",
}
FILE_CHANNEL = {"web": WEB, "email": EMAIL, "twilio": PHONE, "calls": PHONE, "social": SOCIAL}
CALL_COLUMNS = CALL_EXPORT_COLUMNS  # the documented call-record CSV, as the adapter reads it

PAYMENT_KEY = (PURCHASE, PHONE, "call.abandoned")
NURTURE_KEY = (CONSIDERATION, EMAIL, "open")
NURTURE_CAMPAIGN = "spring-nurture"

PAYMENT_STORY = (
    "Payment Failed (card_declined / 3ds_timeout), then a call to the payments queue that is "
    "abandoned after a long wait, then silence."
)
NURTURE_STORY = (
    f"SendGrid category nurture, campaign {NURTURE_CAMPAIGN}: 3-4 mails delivered, opened, "
    "sometimes clicked; the last move is an open, then silence."
)
TRUTH_PERSON = (
    "A truth person is everyone whose records are linked by real signals (ids, email, phone, "
    "device, handle). A visitor who never identifies is one person per device; a social handle "
    "that never gives an id is one person. Records of a real person that share no signal with "
    "the rest (rare: a device whose login fell after the end of the data) form a separate truth "
    "person '<id>.<n>' with fragment_of set."
)
TRUTH_DROPOFF = (
    "Last customer-initiated record (not SendGrid processed/delivered/deferred/bounce/dropped, "
    "not Twilio outbound-api callbacks) of a journey without an Order Completed, more than 14 "
    "days before the end of the data minus 1 hour of allowed lateness; key = (phase, channel, "
    "action)."
)

SITE = "https://www.bonenbar.nl"
SHOP_NUMBER = "+31208081234"
# SendGrid events that the organisation causes (delivery events): never a customer move.
PASSIVE_EMAIL = frozenset({"processed", "delivered", "deferred", "bounce", "dropped"})

# Where each action sits in the five phases, as generated. Reconstruction phase
# rules should agree; docs/demo.md lists them.
PHASE_OF: dict[str, str] = {
    "web: /, /blog/*, /lp/*, /search, /c/* pages; Products Searched; Product List Viewed": ORIENTATION,
    "web: /p/* and /cart pages; Product Viewed; Product Added; Cart Viewed; Product Added to Wishlist": (
        CONSIDERATION
    ),
    "web: /checkout pages; Checkout Started; Checkout Step Viewed/Completed; Payment Info Entered; "
    "Payment Failed; first Order Completed": PURCHASE,
    "web: /account, /help pages; Signed In; Account Created; Order Refunded": USAGE,
    "web: /rewards pages; Product Reviewed; repeat Order Completed; Subscription Renewed": RETENTION,
    "email: category newsletter, welcome": ORIENTATION,
    "email: category nurture (campaign spring-nurture)": CONSIDERATION,
    "email: category order-confirmation, cart-reminder (with transactional)": PURCHASE,
    "email: category onboarding": USAGE,
    "email: category loyalty": RETENTION,
    "phone: queue sales": CONSIDERATION,
    "phone: queue payments": PURCHASE,
    "phone: queue support (and outbound callbacks)": USAGE,
    "social: mention before any purchase": ORIENTATION,
    "social: comment before any purchase (questions about a product)": CONSIDERATION,
    "social: reply before any purchase: the phase the conversation is in": "(unchanged)",
    "social: direct_message (customer service questions)": USAGE,
    "social: mention/reply after a purchase (positive)": RETENTION,
}


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    sku: str
    name: str
    category: str
    price: float


PRODUCTS: tuple[Product, ...] = (
    Product("espresso-duo-200", "ESP-DUO-200", "Duo 200 espresso machine", "espresso-machines", 449.0),
    Product("espresso-mini", "ESP-MINI-1", "Mini espresso machine", "espresso-machines", 229.0),
    Product(
        "espresso-pro-dual", "ESP-PRO-2", "Pro dual boiler espresso machine", "espresso-machines", 1349.0
    ),
    Product("grinder-burr-64", "GRD-64", "Burr grinder 64 mm", "grinders", 329.0),
    Product("grinder-hand", "GRD-HAND", "Hand grinder", "grinders", 89.0),
    Product("beans-ethiopia-1kg", "BNS-ETH-1K", "Ethiopia Yirgacheffe 1 kg", "beans", 34.5),
    Product("beans-house-blend-1kg", "BNS-HB-1K", "House blend 1 kg", "beans", 24.9),
    Product("beans-decaf-500g", "BNS-DEC-500", "Decaf Colombia 500 g", "beans", 15.9),
    Product("beans-office-5kg", "BNS-OFF-5K", "Office blend 5 kg", "beans", 99.0),
    Product("milk-frother", "ACC-FROTH", "Milk frother", "accessories", 59.0),
    Product("tamper-58", "ACC-TAMP-58", "Tamper 58 mm", "accessories", 34.0),
    Product("descaler", "ACC-DESC", "Descaler 3-pack", "accessories", 14.95),
    Product("pour-over-kit", "FLT-KIT", "Pour-over kit", "filter-coffee", 49.0),
    Product("moka-pot-6", "FLT-MOKA-6", "Moka pot 6 cups", "filter-coffee", 39.0),
)
SUBSCRIPTION = Product("bean-club", "SUB-CLUB", "Bean Club monthly subscription", "subscriptions", 29.0)
CATEGORIES = ("espresso-machines", "grinders", "beans", "accessories", "filter-coffee")
BLOG_POSTS = (
    ("/blog/dial-in-espresso", "How to dial in your espresso"),
    ("/blog/burr-vs-blade", "Burr or blade grinder?"),
    ("/blog/moka-pot-beans", "The best beans for a moka pot"),
    ("/blog/office-coffee-guide", "The office coffee guide"),
    ("/blog/descaling-101", "Descaling 101"),
)
SEARCHES = ("espresso machine", "grinder", "decaf", "milk frother", "office coffee", "ethiopia", "descaler")
HELP_PAGES = (
    ("/help/descaling", "Descaling your machine"),
    ("/help/warranty", "Warranty"),
    ("/help/delivery", "Delivery times"),
    ("/account/orders", "My orders"),
)
FIRST_NAMES = (
    "Sanne", "Daan", "Lotte", "Bram", "Emma", "Luuk", "Julia", "Sem", "Anouk", "Thijs", "Fleur", "Jesse",
    "Noor", "Milan", "Eva", "Ruben", "Iris", "Lars", "Maud", "Joris", "Femke", "Koen", "Esther", "Pieter",
    "Yara", "Mohammed", "Fatima", "Sven", "Ilse", "Wouter",
)  # fmt: skip
LAST_NAMES = (
    "de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser", "Smit",
    "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks", "van Leeuwen", "Dekker",
    "Brouwer", "El Amrani", "Yilmaz", "Kramer", "Verhoeven",
)  # fmt: skip
MAIL_DOMAINS = (
    "gmail.com",
    "outlook.com",
    "hotmail.com",
    "ziggo.nl",
    "kpnmail.nl",
    "icloud.com",
    "proton.me",
)
TRADES = ("kantoor", "kapsalon", "architecten", "bakkerij", "advies", "studio")
PLATFORMS = ("instagram", "x", "facebook", "tiktok")
WEB_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
)
MOBILE_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0 Mobile "
    "Safari/537.36",
)
MAIL_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15",
    "Outlook-iOS/4.2435",
)
CAMPAIGNS = (
    ("/lp/autumn-sale", "Autumn sale", {"name": "autumn-sale", "source": "google", "medium": "cpc"}),
    ("/lp/bean-club", "Bean Club", {"name": "bean-club", "source": "instagram", "medium": "paid-social"}),
    (
        "/lp/office-coffee",
        "Coffee for the office",
        {"name": "office-coffee", "source": "linkedin", "medium": "paid-social"},
    ),
)
TEXTS: dict[str, tuple[str, ...]] = {
    "mention": (
        "Anyone tried the Bonenbar Duo 200? Thinking about upgrading.",
        "Bonenbar's autumn sale looks decent, but is the mini worth it?",
        "Which grinder do people pair with a Bonenbar machine?",
        "Saw the Bean Club ad again. Tempting.",
    ),
    "comment": ("Does this one fit a small kitchen?", "Price?", "Nice crema!", "Is the decaf any good?"),
    "reply": ("Same question here.", "Following.", "Mine arrived in two days.", "Agreed, lovely beans."),
    "dm": (
        "Hi, my order hasn't shipped yet, can you check? My customer number is in my profile.",
        "How do I descale the Duo 200? The light keeps blinking.",
        "Can I pause my Bean Club subscription for a month?",
        "The frother makes a strange noise, is that normal?",
    ),
    "happy": (
        "Third month of Bean Club and still loving it @bonenbar",
        "Best espresso I've made at home. Thanks @bonenbar!",
        "Quick delivery and great support from @bonenbar",
    ),
}


# --------------------------------------------------------------------------- personas


@dataclass(frozen=True, slots=True)
class Persona:
    """How one kind of customer behaves: channels, pace, conversion."""

    name: str
    share: float
    outcomes: dict[str, float]  # converted, payment_pain, nurture_pain, dropped, open
    app_share: float  # primary device is the app
    extra_devices: tuple[float, float, float]  # weights for 0, 1, 2 extra devices after buying
    gap_hours: tuple[float, float]  # between sessions
    call_rate: float
    social_rate: float
    open_rate: float
    click_rate: float
    payment_failure: float
    subscription: float
    repeat_rate: float
    products: tuple[str, ...]


PERSONAS: tuple[Persona, ...] = (
    Persona(
        name="bargain_hunter",
        share=0.3,
        outcomes={
            "converted": 0.24,
            "payment_pain": 0.14,
            "nurture_pain": 0.18,
            "dropped": 0.3,
            "open": 0.14,
        },
        app_share=0.2,
        extra_devices=(0.5, 0.35, 0.15),
        gap_hours=(6, 60),
        call_rate=0.15,
        social_rate=0.25,
        open_rate=0.55,
        click_rate=0.25,
        payment_failure=0.22,
        subscription=0.05,
        repeat_rate=0.2,
        products=(
            "espresso-mini",
            "grinder-hand",
            "beans-house-blend-1kg",
            "moka-pot-6",
            "descaler",
            "milk-frother",
        ),
    ),
    Persona(
        name="busy_parent",
        share=0.28,
        outcomes={
            "converted": 0.4,
            "payment_pain": 0.16,
            "nurture_pain": 0.07,
            "dropped": 0.23,
            "open": 0.14,
        },
        app_share=0.6,
        extra_devices=(0.3, 0.45, 0.25),
        gap_hours=(2, 30),
        call_rate=0.35,
        social_rate=0.3,
        open_rate=0.45,
        click_rate=0.15,
        payment_failure=0.25,
        subscription=0.25,
        repeat_rate=0.3,
        products=(
            "espresso-mini",
            "espresso-duo-200",
            "beans-decaf-500g",
            "milk-frother",
            "beans-house-blend-1kg",
        ),
    ),
    Persona(
        name="small_business",
        share=0.17,
        outcomes={
            "converted": 0.52,
            "payment_pain": 0.07,
            "nurture_pain": 0.16,
            "dropped": 0.15,
            "open": 0.1,
        },
        app_share=0.1,
        extra_devices=(0.6, 0.3, 0.1),
        gap_hours=(12, 72),
        call_rate=0.55,
        social_rate=0.15,
        open_rate=0.4,
        click_rate=0.2,
        payment_failure=0.15,
        subscription=0.5,
        repeat_rate=0.45,
        products=("beans-office-5kg", "espresso-pro-dual", "grinder-burr-64", "espresso-duo-200"),
    ),
    Persona(
        name="loyal_regular",
        share=0.25,
        outcomes={
            "converted": 0.78,
            "payment_pain": 0.03,
            "nurture_pain": 0.02,
            "dropped": 0.09,
            "open": 0.08,
        },
        app_share=0.45,
        extra_devices=(0.3, 0.45, 0.25),
        gap_hours=(4, 48),
        call_rate=0.2,
        social_rate=0.45,
        open_rate=0.7,
        click_rate=0.35,
        payment_failure=0.1,
        subscription=0.45,
        repeat_rate=0.7,
        products=(
            "beans-ethiopia-1kg",
            "beans-house-blend-1kg",
            "tamper-58",
            "grinder-burr-64",
            "pour-over-kit",
        ),
    ),
)
PERSONA_BY_NAME = {p.name: p for p in PERSONAS}
PRODUCT_BY_ID = {p.product_id: p for p in PRODUCTS}

# Kinds of people. Anonymous visitors never identify (one device each); social-only
# people only ever talk about the shop on social media (one handle each).
KIND_SHARES = (("anonymous", 0.18), ("social_only", 0.06), ("identified", 0.76))
# Population mixes (`generate(mix=…)`), as shares of those kinds. `demo` (the default) is the
# story above: about 30.7 events per generated person. `short` keeps every story and only
# changes who turns up: mostly visitors who never identify, as in a real clickstream, so a
# person averages about 10 events; the benchmark's scale target (10M events from 1M
# customers) is measured on it.
MIXES: dict[str, tuple[tuple[str, float], ...]] = {
    "demo": KIND_SHARES,
    "short": (("anonymous", 0.79), ("social_only", 0.06), ("identified", 0.15)),
}
DEFAULT_MIX = "demo"

# Natural drop-off points of identified people who give up: many different places,
# none common. `needs_phone` points call the contact centre.
NATURAL_DROPS: tuple[tuple[tuple[str, str, str], float], ...] = (
    ((ORIENTATION, WEB, "Page Viewed"), 1.0),
    ((ORIENTATION, WEB, "Products Searched"), 1.0),
    ((ORIENTATION, WEB, "Product List Viewed"), 1.0),
    ((ORIENTATION, EMAIL, "open"), 1.0),
    ((ORIENTATION, EMAIL, "click"), 0.6),
    ((ORIENTATION, EMAIL, "group_unsubscribe"), 0.5),
    ((ORIENTATION, EMAIL, "spamreport"), 0.2),
    ((CONSIDERATION, WEB, "Product Viewed"), 1.0),
    ((CONSIDERATION, WEB, "Product Added"), 1.0),
    ((CONSIDERATION, WEB, "Cart Viewed"), 1.0),
    ((CONSIDERATION, WEB, "Product Added to Wishlist"), 1.0),
    ((CONSIDERATION, PHONE, "call.answered"), 0.7),
    ((CONSIDERATION, PHONE, "call.voicemail"), 0.4),
    ((PURCHASE, WEB, "Checkout Started"), 1.0),
    ((PURCHASE, WEB, "Checkout Step Viewed"), 0.6),
    ((PURCHASE, WEB, "Payment Info Entered"), 0.6),
    ((PURCHASE, WEB, "Payment Failed"), 0.7),
    ((PURCHASE, PHONE, "call.answered"), 0.4),
)
ANONYMOUS_DROPS: tuple[tuple[tuple[str, str, str], float], ...] = (
    ((ORIENTATION, WEB, "Page Viewed"), 2.0),
    ((ORIENTATION, WEB, "Products Searched"), 1.0),
    ((ORIENTATION, WEB, "Product List Viewed"), 1.0),
    ((CONSIDERATION, WEB, "Product Viewed"), 1.2),
    ((CONSIDERATION, WEB, "Product Added"), 0.8),
    ((CONSIDERATION, WEB, "Cart Viewed"), 0.6),
    ((CONSIDERATION, WEB, "Product Added to Wishlist"), 0.6),
)


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class DemoRecord:
    """One raw provider record (a leaf: one Segment call, one SendGrid event, ...).

    `payload` is exactly what the provider sends (for `calls`, the CSV row).
    `event_id` is the id an adapter derives from it. `phase`, `active` and
    `conversion` are the generator's intent, used for the expected drop-offs.
    Calls sharing `batch` are delivered as one Segment `/v1/batch` envelope
    whose shared context is `envelope`.
    """

    file: str
    at_ms: int
    event_id: str
    action: str
    phase: str
    active: bool
    payload: dict[str, Any]
    ids: tuple[str, ...]
    person_id: str = ""
    conversion: bool = False
    batch: str | None = None
    envelope: dict[str, Any] | None = None
    duplicate: bool = False

    @property
    def channel(self) -> str:
        return FILE_CHANNEL[self.file]


@dataclass(slots=True)
class DemoPerson:
    """Everything generated for one person, and how their story was meant to end."""

    index: int
    person_id: str
    persona: str
    kind: str  # identified | anonymous | social_only (before splitting unlinkable fragments)
    outcome: str  # converted | payment_pain | nurture_pain | dropped | open
    planned_dropoff: tuple[str, str, str] | None
    detail: dict[str, Any]
    records: list[DemoRecord]
    fragments: dict[str, str] = field(default_factory=dict)  # truth person id -> kind


@dataclass(frozen=True, slots=True)
class BrokenRecord:
    """A deliberately unusable record; every one must become a dead letter."""

    file: str
    line: bytes
    kind: str
    reason: str
    event_id: str | None


@dataclass(frozen=True, slots=True)
class DemoFiles:
    """Paths written by `DemoDataset.write`."""

    directory: Path
    web: Path
    email: Path
    twilio: Path
    calls: Path
    social: Path
    truth: Path

    def inputs(self) -> tuple[Path, ...]:
        """The provider files, in the order an ingest run should read them."""
        return (self.web, self.email, self.twilio, self.calls, self.social)


# --------------------------------------------------------------------------- formatting


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // SECOND, UTC)


@lru_cache(maxsize=4096)
def _date(day: int) -> str:
    return f"{datetime.fromtimestamp(day * (DAY // SECOND), UTC):%Y-%m-%d}"


def iso_ms(ms: int) -> str:
    """`2026-09-03T10:11:12.345Z` (Segment). Hot: formats the time of day by hand."""
    day, rest = divmod(ms, DAY)
    hour, rest = divmod(rest, HOUR)
    minute, rest = divmod(rest, MINUTE)
    second, milli = divmod(rest, SECOND)
    return f"{_date(day)}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"


def iso_s(ms: int) -> str:
    """`2026-09-03T10:11:12Z` (call export, social export)."""
    return f"{_dt(ms):%Y-%m-%dT%H:%M:%S}Z"


def rfc2822(ms: int) -> str:
    """`Thu, 03 Sep 2026 10:11:12 +0000` (Twilio `Timestamp`)."""
    dt = _dt(ms)
    return f"{_WEEKDAYS[dt.weekday()]}, {dt.day:02d} {_MONTHS[dt.month - 1]} {dt.year} {dt:%H:%M:%S} +0000"


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _b64(rng: random.Random) -> str:
    return base64.urlsafe_b64encode(rng.getrandbits(128).to_bytes(16, "big")).decode().rstrip("=")


def _utm(source: str, medium: str, campaign: str) -> str:
    return f"?utm_source={source}&utm_medium={medium}&utm_campaign={campaign}"


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    total = sum(w for _, w in weighted)
    r = rng.random() * total
    for item, weight in weighted:
        r -= weight
        if r < 0:
            return item
    return weighted[-1][0]


# --------------------------------------------------------------------------- one person


class _Device:
    __slots__ = ("anonymous_id", "app", "context", "device_id", "junk_anonymous", "kind", "logged_in")

    def __init__(self, rng: random.Random, kind: str) -> None:
        self.kind = kind  # web | mobile_web | ios | android
        self.app = kind in ("ios", "android")
        self.anonymous_id = _uuid(rng)
        self.logged_in = False
        self.junk_anonymous = False
        self.device_id: str | None = None
        if kind == "ios":
            self.device_id = _uuid(rng).upper()
            self.context: dict[str, Any] = {
                "app": {
                    "name": "Bonenbar",
                    "version": "4.12.0",
                    "build": "4120",
                    "namespace": "nl.bonenbar.app",
                },
                "device": {
                    "id": self.device_id,
                    "manufacturer": "Apple",
                    "model": "iPhone15,3",
                    "type": "ios",
                },
                "os": {"name": "iOS", "version": "17.6"},
                "library": {"name": "analytics-swift", "version": "1.5.11"},
                "locale": "nl-NL",
                "timezone": "Europe/Amsterdam",
            }
        elif kind == "android":
            self.device_id = f"{rng.getrandbits(64):016x}"
            self.context = {
                "app": {
                    "name": "Bonenbar",
                    "version": "4.12.0",
                    "build": "41200",
                    "namespace": "nl.bonenbar.app",
                },
                "device": {
                    "id": self.device_id,
                    "manufacturer": "Google",
                    "model": "Pixel 8",
                    "type": "android",
                },
                "os": {"name": "Android", "version": "14"},
                "library": {"name": "analytics-kotlin", "version": "1.16.3"},
                "locale": "nl-NL",
                "timezone": "Europe/Amsterdam",
            }
        else:
            agents = MOBILE_AGENTS if kind == "mobile_web" else WEB_AGENTS
            self.context = {
                "library": {"name": "analytics.js", "version": "npm:next-1.72.0"},
                "userAgent": agents[rng.randrange(len(agents))],
                "locale": "nl-NL",
                "timezone": "Europe/Amsterdam",
            }


# Dutch mobile numbers are +31 6 followed by 8 digits whose first digit is 1-6 or 8 (60, 67,
# 69 are not mobile ranges and fail validation). Numbers are a bijection of the person
# index into those 70M numbers, so no two people share one up to 70M people; a number
# from 10M to 70M keeps its digits, so the default demo (and small ones) are unchanged.
_MOBILE_LEADS = "8123456"


def _mobile_digits(index: int, seed: int) -> str:
    number = (index * 7919 + seed * 104_729 + 12_345_678) % 70_000_000
    return _MOBILE_LEADS[number // 10_000_000] + f"{number % 10_000_000:07d}"


class _Builder:
    """Generates one person's records. All times are integer milliseconds since the epoch."""

    def __init__(self, ds: DemoDataset, index: int) -> None:
        self.ds = ds
        self.index = index
        self.rng = rng = random.Random((ds.seed << 32) + index)
        self.pid = f"p{index:07d}"
        self.start = ds.start_ms
        self.end = ds.end_ms
        self.records: list[DemoRecord] = []
        self.persona = _pick(rng, tuple((p, p.share) for p in PERSONAS))
        self.kind = _pick(rng, MIXES[ds.mix])
        first = FIRST_NAMES[rng.randrange(len(FIRST_NAMES))]
        last = LAST_NAMES[rng.randrange(len(LAST_NAMES))]
        self.first_name, self.last_name = first, last
        compact = last.replace(" ", "").lower()
        if self.persona.name == "small_business":
            trade = TRADES[rng.randrange(len(TRADES))]
            self.email = f"{first.lower()}@{trade}-{compact}{index}.nl"
        else:
            domain = MAIL_DOMAINS[rng.randrange(len(MAIL_DOMAINS))]
            self.email = f"{first.lower()}.{compact}{index}@{domain}"
        # How the person typed it; providers and adapters normalise case and spaces.
        self.email_typed = (
            self.email
            if rng.random() < 0.8
            else f" {first}.{last.replace(' ', '')}{index}@" + (self.email.split("@", 1)[1].capitalize())
        )
        if self.persona.name == "small_business":
            self.email_typed = self.email
        digits = _mobile_digits(index, ds.seed)
        self.phone = f"+316{digits}"
        style = rng.random()
        self.phone_typed = (
            f"+31 6 {digits[:4]} {digits[4:]}"
            if style < 0.5
            else self.phone
            if style < 0.85
            else f"06-{digits}"
        )
        self.user_id = f"cus_{(index * 2_654_435_761 + ds.seed * 97) % (1 << 40):010x}"
        self.has_user = False
        self.phone_known = False
        self.email_known_at: int | None = None
        self.subscribed_at: int | None = None
        self.bad_email = False
        self.devices: list[_Device] = []
        self.handle: str | None = None
        self.platform = PLATFORMS[rng.randrange(len(PLATFORMS))]
        self.session_no = 0
        self.call_no = 0
        self.cart_id = _uuid(rng)
        self.orders = 0
        self.detail: dict[str, Any] = {}
        self.engage_until = self.end  # newsletter engagement allowed before this time
        self.quirk = rng.random()  # which tracker quirk (junk identifiers) this person triggers

    # ------------------------------------------------------------------ emission

    def _add(self, record: DemoRecord) -> DemoRecord | None:
        if record.at_ms >= self.end or record.at_ms < self.start:
            return None
        self.records.append(record)
        return record

    def _segment(
        self,
        dev: _Device,
        t: int,
        kind: str,
        phase: str,
        *,
        event: str | None = None,
        properties: dict[str, Any] | None = None,
        page: tuple[str, str] | None = None,
        campaign: dict[str, str] | None = None,
        traits: dict[str, Any] | None = None,
        conversion: bool = False,
        batch: str | None = None,
    ) -> int:
        """One Segment call from a device; returns its time."""
        rng = self.rng
        t = t - t % 1  # whole milliseconds
        ids: list[str] = []
        message_id = _uuid(rng).upper() if dev.kind == "ios" else _uuid(rng)
        if dev.kind in ("web", "mobile_web"):
            message_id = f"ajs-next-{t}-{message_id}"
        call: dict[str, Any] = {"type": kind, "messageId": message_id}
        if kind == "track":
            call["event"] = event
        if dev.junk_anonymous and dev.logged_in:
            call["anonymousId"] = "undefined"
        else:
            call["anonymousId"] = dev.anonymous_id
            ids.append(f"a:{dev.anonymous_id}")
        if dev.logged_in:
            call["userId"] = self.user_id
            ids.append(f"u:{self.user_id}")
        elif (
            kind != "identify" and self.quirk < 0.04 and event in ("Checkout Started", "Payment Info Entered")
        ):
            call["userId"] = "guest"  # guest checkout tracked with a shared placeholder id
        if kind == "alias":
            call["previousId"] = dev.anonymous_id
            call["userId"] = self.user_id
            ids.append(f"u:{self.user_id}")
            call.pop("anonymousId", None)
        if dev.device_id:
            ids.append(f"d:{dev.device_id}")
        if page is not None and not dev.app:
            path, title = page
            search = ""
            if campaign:
                search = _utm(campaign["source"], campaign["medium"], campaign["name"])
            context_page = {
                "path": path,
                "referrer": "",
                "search": search,
                "title": title,
                "url": f"{SITE}{path}{search}",
            }
            if campaign and campaign["source"] == "google":
                context_page["referrer"] = "https://www.google.com/"
        else:
            context_page = None
        if kind == "page":
            call["name"] = page[1] if page else None
            call["properties"] = dict(context_page) if context_page else {}
        elif kind == "screen":
            call["name"] = page[1] if page else "Home"
            call["properties"] = {}
        elif kind == "track":
            call["properties"] = properties or {}
        elif kind == "identify":
            call["traits"] = traits or {}
            if "email" in (traits or {}):
                ids.append(f"e:{self.email}")
            if "phone" in (traits or {}):
                ids.append(f"t:{self.phone}")
        context: dict[str, Any] = {} if dev.app else dict(dev.context)
        if context_page is not None:
            context["page"] = context_page
        if campaign:
            context["campaign"] = dict(campaign)
        if dev.logged_in or kind == "identify":
            context_traits: dict[str, Any] = {"persona": self.persona.name}
            if dev.app and self.email_known_at is not None:
                context_traits["email"] = self.email
                ids.append(f"e:{self.email}")
            context["traits"] = context_traits
        if context:
            call["context"] = context
        call["timestamp"] = iso_ms(t)
        call["originalTimestamp"] = call["timestamp"]
        if batch is None:
            sent = t + 200 + rng.randrange(1800)
            call["sentAt"] = iso_ms(sent)
            call["receivedAt"] = iso_ms(sent + 40 + rng.randrange(400))
        call["integrations"] = {}
        action = {
            "page": "Page Viewed",
            "screen": "Screen Viewed",
            "identify": "Identify",
            "alias": "Alias",
        }.get(kind, event or "")
        if not ids:  # a logged-in call whose only anonymous id was junk still has its device or user id
            raise AssertionError("generated a call without a usable identifier")
        self._add(
            DemoRecord(
                "web",
                t,
                message_id,
                action,
                phase,
                True,
                call,
                tuple(ids),
                conversion=conversion,
                batch=batch,
                envelope=dev.context if batch else None,
            )
        )
        return t

    def _view(
        self, dev: _Device, t: int, page: tuple[str, str], phase: str, batch: str | None, **kw: Any
    ) -> int:
        if dev.app:
            return self._segment(dev, t, "screen", phase, page=page, batch=batch)
        return self._segment(dev, t, "page", phase, page=page, batch=batch, **kw)

    def _track(
        self,
        dev: _Device,
        t: int,
        event: str,
        props: dict[str, Any],
        phase: str,
        batch: str | None,
        conversion: bool = False,
    ) -> int:
        return self._segment(
            dev, t, "track", phase, event=event, properties=props, batch=batch, conversion=conversion
        )

    def _session(self, dev: _Device) -> str | None:
        """A batch key for app sessions (apps send `/v1/batch`), None on the web."""
        self.session_no += 1
        return f"{self.pid}/s{self.session_no}" if dev.app else None

    def _step(self, t: int) -> int:
        return t + 8 * SECOND + self.rng.randrange(100 * SECOND)

    def _gap(self) -> int:
        lo, hi = self.persona.gap_hours
        return int((lo + self.rng.random() * (hi - lo)) * HOUR)

    # ------------------------------------------------------------------ web building blocks

    def _product(self) -> Product:
        rng = self.rng
        if rng.random() < 0.75:
            return PRODUCT_BY_ID[self.persona.products[rng.randrange(len(self.persona.products))]]
        return PRODUCTS[rng.randrange(len(PRODUCTS))]

    @staticmethod
    def _item(product: Product, position: int | None = None, quantity: int = 1) -> dict[str, Any]:
        item: dict[str, Any] = {
            "product_id": product.product_id,
            "sku": product.sku,
            "name": product.name,
            "category": product.category,
            "brand": "Bonenbar",
            "price": product.price,
            "quantity": quantity,
        }
        if position is not None:
            item["position"] = position
        return item

    def land(self, dev: _Device, t: int, batch: str | None) -> int:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            if self.persona.name == "small_business":
                path, title, campaign = CAMPAIGNS[2]
            else:
                path, title, campaign = CAMPAIGNS[rng.randrange(2)]
            return self._view(dev, t, (path, title), ORIENTATION, batch, campaign=campaign)
        if r < 0.6:
            return self._view(dev, t, BLOG_POSTS[rng.randrange(len(BLOG_POSTS))], ORIENTATION, batch)
        return self._view(dev, t, ("/", "Bonenbar — koffie, bonen en espresso"), ORIENTATION, batch)

    def blog(self, dev: _Device, t: int, batch: str | None) -> int:
        return self._view(dev, t, BLOG_POSTS[self.rng.randrange(len(BLOG_POSTS))], ORIENTATION, batch)

    def search(self, dev: _Device, t: int, batch: str | None) -> int:
        query = SEARCHES[self.rng.randrange(len(SEARCHES))]
        t = self._view(dev, t, ("/search", "Search"), ORIENTATION, batch)
        return self._track(dev, t + 1500, "Products Searched", {"query": query}, ORIENTATION, batch)

    def product_list(self, dev: _Device, t: int, batch: str | None) -> int:
        category = self._product().category if self.rng.random() < 0.7 else CATEGORIES[self.rng.randrange(5)]
        t = self._view(dev, t, (f"/c/{category}", category.replace("-", " ").title()), ORIENTATION, batch)
        items = [self._item(p, i + 1) for i, p in enumerate(p for p in PRODUCTS if p.category == category)][
            :4
        ]
        props = {"list_id": f"{category}-grid", "category": category, "products": items}
        return self._track(dev, t + 1200, "Product List Viewed", props, ORIENTATION, batch)

    def view_product(
        self,
        dev: _Device,
        t: int,
        batch: str | None,
        product: Product | None = None,
        campaign: dict[str, str] | None = None,
    ) -> int:
        product = product or self._product()
        path = f"/p/{product.product_id}"
        t = self._view(dev, t, (path, product.name), CONSIDERATION, batch, campaign=campaign)
        props = self._item(product) | {"currency": "EUR", "value": product.price, "url": f"{SITE}{path}"}
        return self._track(dev, t + 900, "Product Viewed", props, CONSIDERATION, batch)

    def add_to_cart(self, dev: _Device, t: int, batch: str | None, product: Product | None = None) -> int:
        product = product or self._product()
        props = {"cart_id": self.cart_id} | self._item(product)
        return self._track(dev, t, "Product Added", props, CONSIDERATION, batch)

    def view_cart(self, dev: _Device, t: int, batch: str | None) -> int:
        t = self._view(dev, t, ("/cart", "Winkelmand"), CONSIDERATION, batch)
        product = self._product()
        return self._track(
            dev,
            t + 700,
            "Cart Viewed",
            {"cart_id": self.cart_id, "products": [self._item(product)]},
            CONSIDERATION,
            batch,
        )

    def wishlist(self, dev: _Device, t: int, batch: str | None) -> int:
        props = {"wishlist_id": f"wl-{self.index}", "wishlist_name": "Verlanglijst"} | self._item(
            self._product()
        )
        return self._track(dev, t, "Product Added to Wishlist", props, CONSIDERATION, batch)

    def identify(
        self, dev: _Device, t: int, batch: str | None, *, with_user: bool, with_phone: bool, phase: str
    ) -> int:
        traits: dict[str, Any] = {
            "email": self.email_typed,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "persona": self.persona.name,
        }
        if with_phone:
            traits["phone"] = self.phone_typed
            self.phone_known = True
        if with_user:
            self.has_user = True
            dev.logged_in = True
        if self.email_known_at is None:
            self.email_known_at = t
        if self.quirk > 0.985:  # someone else tried the form with a test address on this device first
            self._segment(
                dev, t - 30 * SECOND, "identify", phase, traits={"email": "test@example.com"}, batch=batch
            )
        return self._segment(dev, t, "identify", phase, traits=traits, batch=batch)

    def orientation_session(
        self, dev: _Device, t: int, steps: int, signup: bool = False, signup_phone: bool = False
    ) -> int:
        """A browsing session; with `signup`, the newsletter form is filled in halfway."""
        batch = self._session(dev)
        t = self.land(dev, t, batch)
        for i in range(steps):
            t = self._step(t)
            if signup and i == 0:
                t = self.identify(dev, t, batch, with_user=False, with_phone=signup_phone, phase=ORIENTATION)
                self.subscribed_at = t
                t = self._step(t)
            t = (self.search, self.product_list, self.blog)[self.rng.randrange(3)](dev, t, batch)
        return t

    def consideration_session(self, dev: _Device, t: int, steps: int) -> int:
        batch = self._session(dev)
        t = self.view_product(dev, t, batch)
        for _ in range(steps):
            t = self._step(t)
            r = self.rng.random()
            if r < 0.45:
                t = self.view_product(dev, t, batch)
            elif r < 0.7:
                t = self.add_to_cart(dev, t, batch)
            elif r < 0.85:
                t = self.view_cart(dev, t, batch)
            else:
                t = self.wishlist(dev, t, batch)
        return t

    def checkout(self, dev: _Device, t: int, stop_at: str | None = None) -> tuple[int, dict[str, Any]]:
        """Checkout up to payment; returns the time and the order being paid."""
        rng = self.rng
        batch = self._session(dev)
        products = [self._product() for _ in range(1 + (rng.random() < 0.35))]
        subtotal = round(sum(p.price for p in products), 2)
        shipping = 0.0 if subtotal >= 50 else 4.95
        tax = round(subtotal * 21 / 121, 2)
        self.orders += 1
        order = {
            "checkout_id": f"chk-{self.index}-{self.orders}",
            "order_id": f"BB{self.index:07d}{self.orders}",
            "affiliation": "Bonenbar webshop",
            "total": round(subtotal + shipping, 2),
            "subtotal": subtotal,
            "revenue": round(subtotal - tax, 2),
            "shipping": shipping,
            "tax": tax,
            "currency": "EUR",
            "products": [self._item(p) for p in products],
        }
        t = self._view(dev, t, ("/checkout", "Afrekenen"), PURCHASE, batch)
        started = {
            k: order[k] for k in ("checkout_id", "order_id", "total", "revenue", "currency", "products")
        }
        t = self._track(dev, t + 800, "Checkout Started", started, PURCHASE, batch)
        if stop_at == "Checkout Started":
            return t, order
        t = self._track(
            dev,
            self._step(t),
            "Checkout Step Viewed",
            {"checkout_id": order["checkout_id"], "step": 1, "shipping_method": "PostNL"},
            PURCHASE,
            batch,
        )
        if stop_at == "Checkout Step Viewed":
            return t, order
        t = self._track(
            dev,
            self._step(t),
            "Checkout Step Completed",
            {"checkout_id": order["checkout_id"], "step": 1, "shipping_method": "PostNL"},
            PURCHASE,
            batch,
        )
        t = self._track(
            dev,
            self._step(t),
            "Checkout Step Viewed",
            {"checkout_id": order["checkout_id"], "step": 2},
            PURCHASE,
            batch,
        )
        method = "ideal" if rng.random() < 0.5 else "card"
        t = self._track(
            dev,
            self._step(t),
            "Payment Info Entered",
            {
                "checkout_id": order["checkout_id"],
                "order_id": order["order_id"],
                "step": 2,
                "payment_method": method,
            },
            PURCHASE,
            batch,
        )
        order["_batch"] = batch
        return t, order

    def payment_failed(self, dev: _Device, t: int, order: dict[str, Any], reason: str) -> int:
        props = {
            "checkout_id": order["checkout_id"],
            "order_id": order["order_id"],
            "step": 2,
            "payment_method": "card",
            "reason": reason,
        }
        return self._track(
            dev,
            t + 4 * SECOND + self.rng.randrange(40 * SECOND),
            "Payment Failed",
            props,
            PURCHASE,
            order.get("_batch"),
        )

    def order_completed(self, dev: _Device, t: int, order: dict[str, Any], phase: str = PURCHASE) -> int:
        props = {k: v for k, v in order.items() if not k.startswith("_")}
        if self.quirk < 0.04 and not dev.logged_in:
            props["coupon"] = "WELKOM10"
        t = self._track(
            dev,
            t + 3 * SECOND + self.rng.randrange(20 * SECOND),
            "Order Completed",
            props,
            phase,
            order.get("_batch"),
            conversion=True,
        )
        return t

    # ------------------------------------------------------------------ email

    def _mail(
        self,
        t: int,
        category: list[str],
        phase: str,
        *,
        open_p: float,
        click_p: float,
        url: str,
        campaign: str | None = None,
        extra: dict[str, Any] | None = None,
        engage_until: int | None = None,
        force_open: bool | None = None,
        force_click: bool | None = None,
    ) -> tuple[int | None, int | None]:
        """One mail: processed → (deferred →) delivered → open → click. Returns open and click times."""
        rng = self.rng
        t -= t % SECOND
        message = f"{_b64(rng)}.filterdrecv-{rng.getrandbits(40):010x}-{rng.getrandbits(20):05x}-1-0"
        base: dict[str, Any] = {
            "email": self.email,
            "smtp-id": f"<{message.split('.', 1)[0]}@geopod-ismtpd-{rng.randrange(1, 40)}>",
            "sg_message_id": message,
            "category": category,
        }
        if campaign is not None:
            base["campaign"] = campaign
        if extra:
            base.update(extra)

        def emit(at: int, event: str, fields: dict[str, Any] | None = None) -> int:
            at -= at % SECOND
            body = {"timestamp": at // SECOND, "event": event, "sg_event_id": _b64(rng)} | base
            if fields:
                body.update(fields)
            self._add(
                DemoRecord(
                    "email",
                    at,
                    body["sg_event_id"],
                    event,
                    phase,
                    event not in PASSIVE_EMAIL,
                    body,
                    (f"e:{self.email}",),
                )
            )
            return at

        emit(t, "processed")
        if self.bad_email:
            if self.detail.get("bounced"):
                emit(t + 1 * SECOND, "dropped", {"reason": "Bounced Address", "status": "5.0.0"})
            else:
                self.detail["bounced"] = True
                emit(
                    t + 3 * SECOND + rng.randrange(20 * SECOND),
                    "bounce",
                    {
                        "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
                        "status": "5.1.1",
                        "type": "bounce",
                        "bounce_classification": "Invalid Address",
                    },
                )
            return None, None
        delivered = t + 2 * SECOND + rng.randrange(30 * SECOND)
        if rng.random() < 0.04:
            emit(
                delivered,
                "deferred",
                {"response": "421 4.7.28 Rate limited, try again later", "attempt": "1"},
            )
            delivered += 10 * MINUTE + rng.randrange(30 * MINUTE)
        delivered = emit(delivered, "delivered", {"response": "250 2.0.0 OK", "tls": 1})
        opened = force_open if force_open is not None else rng.random() < open_p
        if not opened:
            return None, None
        open_at = delivered + int(min(rng.expovariate(1 / (5 * HOUR)), 3 * DAY)) + MINUTE
        if engage_until is not None and open_at >= engage_until:
            return None, None
        agent = MAIL_AGENTS[rng.randrange(len(MAIL_AGENTS))]
        ip = f"84.{rng.randrange(24, 31)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        open_at = emit(open_at, "open", {"useragent": agent, "ip": ip, "sg_machine_open": False})
        clicked = force_click if force_click is not None else rng.random() < click_p
        if not clicked:
            return open_at, None
        click_at = open_at + 5 * SECOND + rng.randrange(4 * MINUTE)
        if engage_until is not None and click_at >= engage_until:
            return open_at, None
        click_at = emit(
            click_at,
            "click",
            {"useragent": agent, "ip": ip, "url": url, "url_offset": {"index": 0, "type": "html"}},
        )
        return open_at, click_at

    def newsletters(self, drop: str | None = None, drop_from: int | None = None) -> int | None:
        """The welcome mail and fortnightly newsletters since signing up.

        With `drop`, the first newsletter after `drop_from` gets that reaction
        (open, click, group_unsubscribe, spamreport) and is the person's last move.
        Returns the time of that move.
        """
        if self.subscribed_at is None:
            return None
        rng = self.rng
        url = f"{SITE}/?utm_source=sendgrid&utm_medium=email&utm_campaign=newsletter"
        p = self.persona
        self._mail(
            self.subscribed_at + 2 * MINUTE,
            ["newsletter", "welcome"],
            ORIENTATION,
            open_p=p.open_rate,
            click_p=0.1,
            url=url,
            engage_until=self.engage_until,
        )
        send = self._next_newsletter(self.start)
        last_move = None
        issue = 0
        while send < self.end:
            issue += 1
            if send > self.subscribed_at:
                extra = {"newsletter_issue": f"{_dt(send):%Y}-{issue:02d}"}
                if drop is not None and last_move is None and drop_from is not None and send >= drop_from:
                    if drop == "spamreport":
                        self._mail(
                            send, ["newsletter"], ORIENTATION, open_p=0, click_p=0, url=url, extra=extra
                        )
                        last_move = self._spam_or_unsubscribe(
                            send + 2 * HOUR + rng.randrange(DAY), "spamreport"
                        )
                        break
                    opened, clicked = self._mail(
                        send,
                        ["newsletter"],
                        ORIENTATION,
                        open_p=1,
                        click_p=0,
                        url=url,
                        extra=extra,
                        force_open=True,
                        force_click=drop == "click",
                    )
                    last_move = clicked if drop == "click" else opened
                    if drop == "group_unsubscribe" and opened is not None:
                        last_move = self._spam_or_unsubscribe(opened + 20 * SECOND, "group_unsubscribe")
                        break
                    if last_move is None:  # could not happen in time: nothing planted
                        break
                else:
                    until = self.engage_until if last_move is None else send  # after the drop: passive only
                    self._mail(
                        send,
                        ["newsletter"],
                        ORIENTATION,
                        open_p=p.open_rate * 0.7,
                        click_p=p.click_rate,
                        url=url,
                        extra=extra,
                        engage_until=until,
                    )
            send += 14 * DAY
        return last_move

    def _next_newsletter(self, after: int) -> int:
        """The first fortnightly newsletter send at or after `after` (the first goes out on day 2)."""
        first = self.start + 2 * DAY + 7 * HOUR
        if after <= first:
            return first
        return first + -(-(after - first) // (14 * DAY)) * 14 * DAY

    def _spam_or_unsubscribe(self, t: int, event: str) -> int | None:
        t -= t % SECOND
        body: dict[str, Any] = {
            "email": self.email,
            "timestamp": t // SECOND,
            "event": event,
            "sg_event_id": _b64(self.rng),
            "category": ["newsletter"],
        }
        if event == "group_unsubscribe":
            body["asm_group_id"] = 1201
            body["useragent"] = MAIL_AGENTS[0]
        body["sg_message_id"] = f"{_b64(self.rng)}.filterdrecv-{self.rng.getrandbits(40):010x}-1-0"
        added = self._add(
            DemoRecord("email", t, body["sg_event_id"], event, ORIENTATION, True, body, (f"e:{self.email}",))
        )
        return t if added else None

    # ------------------------------------------------------------------ phone

    def inbound_call(
        self,
        t: int,
        queue: str,
        outcome: str,
        phase: str,
        *,
        csat: int | None = None,
        sentiment: float | None = None,
        crm: bool = False,
    ) -> int:
        """A call: the Twilio IVR leg, then the contact-centre queue leg (CSV row).

        Returns the start of the queue leg.
        """
        rng = self.rng
        self.call_no += 1
        t -= t % SECOND
        call_sid = f"CA{rng.getrandbits(128):032x}"
        ivr_seconds = 25 + rng.randrange(50)
        ivr_end = t + ivr_seconds * SECOND
        callback = {
            "AccountSid": self.ds.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call_sid,
            "CallStatus": "completed",
            "Direction": "inbound",
            "From": self.phone,
            "Caller": self.phone,
            "FromCountry": "NL",
            "CallerCountry": "NL",
            "To": SHOP_NUMBER,
            "Called": SHOP_NUMBER,
            "ToCountry": "NL",
            "CalledCountry": "NL",
            "CallDuration": str(ivr_seconds),
            "Duration": str((ivr_seconds + 59) // 60),
            "Timestamp": rfc2822(ivr_end),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": "0",
        }
        self._add(
            DemoRecord(
                "twilio",
                ivr_end,
                f"{call_sid}:completed:0",
                "call.completed",
                phase,
                True,
                callback,
                (f"t:{self.phone}",),
            )
        )
        start = ivr_end + (1 + rng.randrange(3)) * SECOND
        if outcome == "abandoned":
            wait, talk = 420 + rng.randrange(1500), 0
        elif outcome == "voicemail":
            wait, talk = 60 + rng.randrange(240), 20 + rng.randrange(70)
        elif outcome == "callback":
            wait, talk = 120 + rng.randrange(400), 0
        else:
            wait, talk = 20 + rng.randrange(500), 120 + rng.randrange(900)
        row = {
            "call_id": f"ctr-{self.index:07d}-{self.call_no}",
            "started_at": iso_s(start),
            "ended_at": iso_s(start + (wait + talk) * SECOND),
            "caller_number": self.phone if rng.random() < 0.7 else self.phone_typed.replace("06-", "+316"),
            "queue": queue,
            "wait_seconds": str(wait),
            "outcome": outcome,
            "ivr_path": f"main>{queue}",
            "csat": "" if csat is None else str(csat),
            "sentiment": "" if sentiment is None else f"{sentiment:.2f}",
            "customer_id": self.user_id if crm and self.has_user else "",
            "email": self.email if crm and not self.has_user else "",
        }
        ids = [f"t:{self.phone}"]
        if row["customer_id"]:
            ids.append(f"u:{self.user_id}")
        if row["email"]:
            ids.append(f"e:{self.email}")
        self._add(DemoRecord("calls", start, row["call_id"], f"call.{outcome}", phase, True, row, tuple(ids)))
        return start

    def outbound_call(self, t: int, answered: bool) -> int:
        """The contact centre calls the customer back.

        Callbacks: initiated, ringing, then in-progress and completed, or no-answer.
        """
        rng = self.rng
        t -= t % SECOND
        call_sid = f"CA{rng.getrandbits(128):032x}"
        statuses = ["initiated", "ringing"] + (["in-progress", "completed"] if answered else ["no-answer"])
        at = t
        talk = 60 + rng.randrange(400)
        for seq, status in enumerate(statuses):
            fields = {
                "AccountSid": self.ds.account_sid,
                "ApiVersion": "2010-04-01",
                "CallSid": call_sid,
                "CallStatus": status,
                "Direction": "outbound-api",
                "From": SHOP_NUMBER,
                "Caller": SHOP_NUMBER,
                "To": self.phone,
                "Called": self.phone,
                "ToCountry": "NL",
                "CalledCountry": "NL",
                "Timestamp": rfc2822(at),
                "CallbackSource": "call-progress-events",
                "SequenceNumber": str(seq),
            }
            if status in ("completed", "no-answer"):
                fields["CallDuration"] = str(talk if answered else 0)
                fields["Duration"] = str((talk + 59) // 60 if answered else 0)
            self._add(
                DemoRecord(
                    "twilio",
                    at,
                    f"{call_sid}:{status}:{seq}",
                    f"call.{status}",
                    USAGE,
                    False,
                    fields,
                    (f"t:{self.phone}",),
                )
            )
            at += (talk * SECOND) if status == "in-progress" else (2 + rng.randrange(20)) * SECOND
        return at

    # ------------------------------------------------------------------ social

    def social(
        self,
        t: int,
        kind: str,
        phase: str,
        *,
        text_key: str | None = None,
        sentiment: float,
        link: bool = False,
    ) -> int:
        rng = self.rng
        t -= t % SECOND
        if self.handle is None:
            style = rng.randrange(3)
            first, last = self.first_name.lower(), self.last_name.replace(" ", "").lower()
            self.handle = (
                f"{first}_{last}{self.index}",
                f"{first}.{last[:3]}{self.index}",
                f"Koffie{self.first_name}{self.index}",
            )[style]
        texts = TEXTS[text_key or kind]
        record: dict[str, Any] = {
            "schema": SOCIAL_SCHEMA,
            "id": f"{self.platform}-{rng.getrandbits(64):016x}",
            "kind": kind,
            "platform": self.platform,
            "handle": ("@" if rng.random() < 0.3 else "") + self.handle,
            "occurred_at": iso_s(t),
            "post_id": None
            if kind == "direct_message"
            else f"{self.platform}-post-{rng.randrange(1, 60):04d}",
            "in_reply_to": f"{self.platform}-{rng.getrandbits(64):016x}" if kind == "reply" else None,
            "text": texts[rng.randrange(len(texts))],
            "sentiment": round(sentiment, 2),
        }
        ids = [f"s:{self.platform}:{self.handle.lower()}"]
        if link:
            if self.has_user and rng.random() < 0.7:
                record["user_id"] = self.user_id
                ids.append(f"u:{self.user_id}")
            else:
                record["email"] = self.email
                ids.append(f"e:{self.email}")
        self._add(DemoRecord("social", t, record["id"], f"social.{kind}", phase, True, record, tuple(ids)))
        return t

    # ------------------------------------------------------------------ stories

    def build(self) -> DemoPerson:
        """Choose a story for this person and generate it."""
        rng = self.rng
        outcome = _pick(rng, tuple(self.persona.outcomes.items()))
        planned: tuple[str, str, str] | None = None
        if self.kind == "anonymous":
            outcome = "open" if rng.random() < 0.2 else "dropped"
            planned = self.anonymous(outcome)
        elif self.kind == "social_only":
            outcome = "open" if rng.random() < 0.2 else "dropped"
            planned = self.social_only(outcome)
        elif outcome == "converted":
            self.converted()
        elif outcome == "payment_pain":
            planned = self.payment_pain()
        elif outcome == "nurture_pain":
            planned = self.nurture_pain()
        elif outcome == "dropped":
            planned = self.dropped()
        else:
            self.open_identified()
        self.records.sort(key=lambda r: (r.at_ms, r.event_id))
        return DemoPerson(
            self.index, self.pid, self.persona.name, self.kind, outcome, planned, self.detail, self.records
        )

    def _primary(self, web_only: bool = False) -> _Device:
        rng = self.rng
        if not web_only and rng.random() < self.persona.app_share:
            dev = _Device(rng, "ios" if rng.random() < 0.55 else "android")
        else:
            dev = _Device(rng, "web" if rng.random() < 0.7 else "mobile_web")
        self.devices.append(dev)
        return dev

    def _t0(self, latest_ms: int) -> int:
        """A start time between the data start and `latest_ms` (clamped)."""
        span = max(latest_ms - self.start, HOUR)
        return self.start + self.rng.randrange(span)

    def _drop_deadline(self, duration: int) -> int:
        return self.end - DROP_MARGIN - duration

    def anonymous(self, outcome: str) -> tuple[str, str, str] | None:
        rng = self.rng
        key = _pick(rng, ANONYMOUS_DROPS)
        dev = self._primary(web_only=key[2] == "Page Viewed")
        if outcome == "open":
            t = self.end - 12 * DAY + rng.randrange(10 * DAY)
        else:
            t = self._t0(self._drop_deadline(4 * DAY))
        if rng.random() < 0.5:
            t = self.orientation_session(dev, t, 1 + rng.randrange(3)) + self._gap() // 3
        self._finish_web(dev, t, key)
        return key if outcome == "dropped" else None

    def _finish_web(self, dev: _Device, t: int, key: tuple[str, str, str]) -> int:
        """A last session that ends on the planned web action."""
        batch = self._session(dev)
        action = key[2]
        t = self.land(dev, t, batch)
        t = self._step(t)
        if action == "Page Viewed":
            return self.blog(dev, t, batch)
        if action == "Products Searched":
            return self.search(dev, t, batch)
        if action == "Product List Viewed":
            return self.product_list(dev, t, batch)
        t = self.view_product(dev, t, batch)
        if action == "Product Viewed":
            return t
        if action == "Product Added":
            return self.add_to_cart(dev, self._step(t), batch)
        if action == "Cart Viewed":
            return self.view_cart(dev, self._step(self.add_to_cart(dev, self._step(t), batch)), batch)
        return self.wishlist(dev, self._step(t), batch)

    def social_only(self, outcome: str) -> tuple[str, str, str] | None:
        rng = self.rng
        t = (
            self.end - 12 * DAY + rng.randrange(10 * DAY)
            if outcome == "open"
            else self._t0(self._drop_deadline(5 * DAY))
        )
        kind, phase = "mention", ORIENTATION
        for _ in range(1 + (rng.random() < 0.4) + (rng.random() < 0.2)):
            kind = _pick(rng, (("mention", 0.5), ("comment", 0.35), ("reply", 0.15)))
            if kind != "reply":  # a reply continues whatever the conversation was about
                phase = CONSIDERATION if kind == "comment" else ORIENTATION
            self.social(t, kind, phase, sentiment=rng.uniform(-0.4, 0.6))
            t += HOUR + rng.randrange(2 * DAY)
        return (phase, SOCIAL, f"social.{kind}") if outcome == "dropped" else None

    def _warm_up(self, dev: _Device, t: int, *, phone: bool, considering: bool = True) -> int:
        """Orientation with a newsletter signup, then (optionally) consideration. Returns the last move."""
        rng = self.rng
        t = self.orientation_session(dev, t, 1 + rng.randrange(3), signup=True, signup_phone=phone)
        if rng.random() < 0.4:
            t = self.orientation_session(dev, t + self._gap(), 1 + rng.randrange(2))
        if not considering:
            return t
        t += self._gap()
        self.engage_until = t  # newsletter reactions only happen while still orienting
        for _ in range(1 + (rng.random() < 0.5)):
            t = self.consideration_session(dev, t, 1 + rng.randrange(3)) + self._gap()
        return t - self._gap()

    def payment_pain(self) -> tuple[str, str, str]:
        """Pain point 1: payment fails; the customer calls payments, waits, hangs up, never returns."""
        rng = self.rng
        dev = self._primary()
        t = self._warm_up(dev, self._t0(self._drop_deadline(12 * DAY)), phone=False) + self._gap()
        batch = self._session(dev)
        t = self.identify(dev, t, batch, with_user=True, with_phone=True, phase=PURCHASE)
        t, order = self.checkout(dev, self._step(t))
        reason = "card_declined" if rng.random() < 0.55 else "3ds_timeout"
        t = self.payment_failed(dev, t, order, reason)
        if rng.random() < 0.4:  # one retry, same result
            t = self._track(
                dev,
                self._step(t),
                "Payment Info Entered",
                {"checkout_id": order["checkout_id"], "step": 2, "payment_method": "card"},
                PURCHASE,
                order.get("_batch"),
            )
            t = self.payment_failed(dev, t, order, reason)
        t = self.inbound_call(t + 20 * MINUTE + rng.randrange(5 * HOUR), "payments", "abandoned", PURCHASE)
        if rng.random() < 0.35:
            t = self.inbound_call(t + 2 * HOUR + rng.randrange(18 * HOUR), "payments", "abandoned", PURCHASE)
        self._mail(
            t + DAY,
            ["transactional", "cart-reminder"],
            PURCHASE,
            open_p=0,
            click_p=0,
            url=f"{SITE}/checkout",
            extra={"template": "payment-failed-reminder"},
        )
        self.newsletters()
        self.detail.update({"reason": reason, "order_id": order["order_id"]})
        return PAYMENT_KEY

    def nurture_pain(self) -> tuple[str, str, str]:
        """Pain point 2: the spring-nurture series is opened (sometimes clicked) and then nothing happens."""
        rng = self.rng
        dev = self._primary()
        t = self._warm_up(dev, self._t0(self._drop_deadline(22 * DAY)), phone=rng.random() < 0.3)
        mails = 3 + (rng.random() < 0.5)
        last_opened = mails - 1 if rng.random() < 0.7 else mails - 2
        send = t + DAY + rng.randrange(DAY)
        send -= send % HOUR
        click_device: _Device | None = None
        for step in range(mails):
            opened = step == last_opened or (step < last_opened and rng.random() < 0.8)
            clicked = opened and step < last_opened and rng.random() < 0.35
            url = f"{SITE}/p/{self._product().product_id}{_utm('sendgrid', 'email', NURTURE_CAMPAIGN)}"
            _, click_at = self._mail(
                send,
                ["nurture"],
                CONSIDERATION,
                open_p=0,
                click_p=0,
                url=url,
                campaign=NURTURE_CAMPAIGN,
                extra={"nurture_step": str(step + 1)},
                force_open=opened,
                force_click=clicked,
            )
            if click_at is not None:
                if (
                    click_device is None
                ):  # opened the mail on the phone: a new browser, identified from the link
                    click_device = _Device(rng, "mobile_web") if rng.random() < 0.5 else dev
                    if click_device is not dev:
                        self.devices.append(click_device)
                        batch = self._session(click_device)
                        self.identify(
                            click_device,
                            click_at + 2 * SECOND,
                            batch,
                            with_user=False,
                            with_phone=False,
                            phase=CONSIDERATION,
                        )
                campaign = {"name": NURTURE_CAMPAIGN, "source": "sendgrid", "medium": "email"}
                self.view_product(
                    click_device, click_at + 4 * SECOND, self._session(click_device), campaign=campaign
                )
            send += 3 * DAY + rng.randrange(DAY)
            send -= send % HOUR
        self.newsletters()
        self.detail.update({"nurture_mails": mails, "last_opened": last_opened + 1})
        return NURTURE_KEY

    def dropped(self) -> tuple[str, str, str]:
        """An identified person who gives up somewhere ordinary."""
        rng = self.rng
        key = _pick(rng, NATURAL_DROPS)
        phase, channel, action = key
        dev = self._primary(web_only=action == "Page Viewed")
        if channel == EMAIL:
            t = self._warm_up(dev, self._t0(self._drop_deadline(18 * DAY)), phone=False, considering=False)
            send = self._next_newsletter(t + HOUR)
            if send - t > 7 * DAY:  # one more visit, so the reaction falls within the drop-off timeout
                t = self.orientation_session(dev, send - DAY - rng.randrange(5 * DAY), 1 + rng.randrange(2))
            self.engage_until = t
            moved = self.newsletters(drop=action, drop_from=t + HOUR)
            return key if moved is not None else (ORIENTATION, WEB, "?")
        t0 = self._t0(self._drop_deadline(12 * DAY))
        if phase == ORIENTATION:
            t = self._warm_up(dev, t0, phone=False, considering=False)
            self.engage_until = t
            self._finish_web(dev, t + self._gap(), key)
        elif phase == CONSIDERATION and channel == WEB:
            t = self._warm_up(dev, t0, phone=False, considering=False) + self._gap()
            self.engage_until = t
            self._finish_web(dev, t, key)
        elif phase == CONSIDERATION:
            t = self._warm_up(dev, t0, phone=True)
            if action == "call.answered":
                self.inbound_call(
                    t + 2 * HOUR + rng.randrange(DAY),
                    "sales",
                    "answered",
                    CONSIDERATION,
                    csat=3 + rng.randrange(3) if rng.random() < 0.6 else None,
                    sentiment=rng.uniform(-0.1, 0.6),
                    crm=True,
                )
            else:
                self.inbound_call(t + 2 * HOUR + rng.randrange(DAY), "sales", "voicemail", CONSIDERATION)
        else:
            t = self._warm_up(dev, t0, phone=False) + self._gap()
            batch = self._session(dev)
            t = self.identify(dev, t, batch, with_user=True, with_phone=True, phase=PURCHASE)
            stop = action if action in ("Checkout Started", "Checkout Step Viewed") else None
            t, order = self.checkout(dev, self._step(t), stop_at=stop)
            if action in ("Payment Failed", "call.answered"):
                t = self.payment_failed(
                    dev, t, order, "card_declined" if rng.random() < 0.5 else "3ds_timeout"
                )
            if action == "call.answered":
                self.inbound_call(
                    t + HOUR + rng.randrange(6 * HOUR),
                    "payments",
                    "answered",
                    PURCHASE,
                    csat=1 + rng.randrange(2),
                    sentiment=rng.uniform(-0.8, -0.3),
                    crm=True,
                )
        self.newsletters()
        return key

    def open_identified(self) -> None:
        """Still making up their mind at the end of the data."""
        rng = self.rng
        dev = self._primary()
        t = self.end - 12 * DAY + rng.randrange(8 * DAY)
        t = self._warm_up(dev, t, phone=rng.random() < 0.5)
        if self.phone_known and rng.random() < self.persona.call_rate:
            self.inbound_call(
                t + HOUR + rng.randrange(DAY),
                "sales",
                "answered",
                CONSIDERATION,
                csat=4 + rng.randrange(2),
                sentiment=rng.uniform(0.1, 0.7),
                crm=True,
            )
        self.newsletters()

    def converted(self) -> None:
        """Buys, then uses and (often) comes back: usage and retention across all channels."""
        rng = self.rng
        p = self.persona
        dev = self._primary()
        t = self._t0(self.end - 12 * DAY)
        if rng.random() < 0.55:
            t = self._warm_up(dev, t, phone=False)
        else:
            t = self.orientation_session(dev, t, 1 + rng.randrange(3))
            t = self.consideration_session(dev, t + self._gap(), 1 + rng.randrange(4))
        if rng.random() < p.call_rate * 0.6:
            start = self.inbound_call(
                t + HOUR + rng.randrange(DAY),
                "sales",
                "answered",
                CONSIDERATION,
                csat=4 + rng.randrange(2) if rng.random() < 0.6 else None,
                sentiment=rng.uniform(0.1, 0.8),
                crm=True,
            )
            t = max(t, start) + HOUR
        t += self._gap()
        # Purchase: checkout identifies the buyer (customer id, email, phone).
        batch = self._session(dev)
        t = self.identify(dev, t, batch, with_user=True, with_phone=True, phase=PURCHASE)
        if self.quirk > 0.96 and dev.app:
            dev.junk_anonymous = True  # an app build that sends anonymousId "undefined" once logged in
        t, order = self.checkout(dev, self._step(t))
        if rng.random() < p.payment_failure:
            reason = "card_declined" if rng.random() < 0.55 else "3ds_timeout"
            t = self.payment_failed(dev, t, order, reason)
            self.detail["payment_failed"] = reason
            if rng.random() < 0.4 and self.phone_known:  # calls, gets help (unhappy), then pays
                start = self.inbound_call(
                    t + 30 * MINUTE + rng.randrange(3 * HOUR),
                    "payments",
                    "answered",
                    PURCHASE,
                    csat=1 + rng.randrange(2),
                    sentiment=rng.uniform(-0.8, -0.3),
                    crm=True,
                )
                t = start + 40 * MINUTE
                order["_batch"] = self._session(dev)
            t = self._track(
                dev,
                self._step(t),
                "Payment Info Entered",
                {"checkout_id": order["checkout_id"], "step": 2, "payment_method": "ideal"},
                PURCHASE,
                order.get("_batch"),
            )
        t = self.order_completed(dev, t, order)
        bought = t
        self._mail(
            t + MINUTE,
            ["transactional", "order-confirmation"],
            PURCHASE,
            open_p=0.8,
            click_p=0.2,
            url=f"{SITE}/account/orders",
            extra={"template": "order-confirmation"},
        )
        self.usage_and_retention(dev, bought)
        self.newsletters()

    def usage_and_retention(self, dev: _Device, bought: int) -> None:
        rng = self.rng
        p = self.persona
        t = bought + HOUR + rng.randrange(2 * DAY)
        if rng.random() < 0.7:  # creates an account after the first order
            batch = self._session(dev)
            self._segment(dev, t, "alias", USAGE, batch=batch)
            t = self.identify(
                dev, t + SECOND, batch, with_user=True, with_phone=self.phone_known, phase=USAGE
            )
            t = self._track(
                dev, t + 2 * SECOND, "Account Created", {"signup_method": "post_purchase"}, USAGE, batch
            )
        for step in range(3):  # onboarding series
            self._mail(
                bought + (1 + 4 * step) * DAY + 9 * HOUR,
                ["onboarding"],
                USAGE,
                open_p=p.open_rate,
                click_p=p.click_rate,
                url=f"{SITE}/help/descaling",
                extra={"onboarding_step": str(step + 1)},
            )
        extra = _pick(rng, tuple(zip((0, 1, 2), p.extra_devices, strict=True)))
        for _ in range(extra):  # signs in on other devices
            kind = ("ios", "android", "web", "mobile_web")[rng.randrange(4)]
            other = _Device(rng, kind)
            self.devices.append(other)
            t2 = bought + DAY + rng.randrange(20 * DAY)
            batch = self._session(other)
            t2 = self._view(other, t2, ("/account/login", "Inloggen"), USAGE, batch)
            t2 = self.identify(other, self._step(t2), batch, with_user=True, with_phone=False, phase=USAGE)
            t2 = self._track(other, t2 + 2 * SECOND, "Signed In", {"method": "password"}, USAGE, batch)
            if self.quirk > 0.96 and other.app:
                other.junk_anonymous = True
            for _ in range(1 + rng.randrange(3)):
                t2 = self._step(t2)
                if rng.random() < 0.5:
                    t2 = self._view(other, t2, HELP_PAGES[rng.randrange(len(HELP_PAGES))], USAGE, batch)
                else:
                    t2 = self.view_product(other, t2, batch)
        if rng.random() < p.call_rate:  # support call
            t3 = bought + DAY + rng.randrange(15 * DAY)
            outcome = _pick(rng, (("answered", 0.7), ("voicemail", 0.1), ("callback", 0.2)))
            if outcome == "answered":
                self.inbound_call(
                    t3,
                    "support",
                    "answered",
                    USAGE,
                    csat=2 + rng.randrange(4) if rng.random() < 0.6 else None,
                    sentiment=rng.uniform(-0.3, 0.7),
                    crm=True,
                )
            else:
                start = self.inbound_call(t3, "support", outcome, USAGE)
                if outcome == "callback":
                    self.outbound_call(
                        start + 2 * HOUR + rng.randrange(20 * HOUR), answered=rng.random() < 0.75
                    )
        if (
            rng.random() < p.social_rate
        ):  # a question by DM (the social tool links the handle), later a shout-out
            t4 = bought + 2 * DAY + rng.randrange(10 * DAY)
            self.social(
                t4, "direct_message", USAGE, text_key="dm", sentiment=rng.uniform(-0.5, 0.2), link=True
            )
            if rng.random() < 0.6:
                kind = "mention" if rng.random() < 0.7 else "reply"
                self.social(
                    t4 + 3 * DAY + rng.randrange(12 * DAY),
                    kind,
                    RETENTION,
                    text_key="happy",
                    sentiment=rng.uniform(0.5, 1.0),
                )
        if rng.random() < 0.05:
            self._track(
                dev,
                bought + 3 * DAY + rng.randrange(10 * DAY),
                "Order Refunded",
                {"order_id": f"BB{self.index:07d}1", "total": 34.5, "currency": "EUR", "reason": "damaged"},
                USAGE,
                self._session(dev),
            )
        if rng.random() < 0.35:
            product = self._product()
            self._track(
                dev,
                bought + 7 * DAY + rng.randrange(14 * DAY),
                "Product Reviewed",
                {
                    "product_id": product.product_id,
                    "review_id": f"rv-{self.index}",
                    "rating": 3 + rng.randrange(3),
                    "review_body": "Doet wat het moet doen.",
                },
                RETENTION,
                self._session(dev),
            )
        if rng.random() < p.repeat_rate:
            t5 = bought + 10 * DAY + rng.randrange(25 * DAY)
            t5 = self.view_product(dev, t5, self._session(dev))
            t5, order = self.checkout(dev, self._step(t5))
            self.order_completed(dev, t5, order, phase=RETENTION)
        for month in (1, 2):
            self._mail(
                bought + month * 30 * DAY - 2 * DAY,
                ["loyalty"],
                RETENTION,
                open_p=p.open_rate,
                click_p=p.click_rate,
                url=f"{SITE}/rewards",
                campaign="bean-points",
            )
        if rng.random() < p.subscription:
            renew = bought + 30 * DAY
            server = _Device(rng, "web")  # the shop's backend (analytics-node), user id only
            server.context = {"library": {"name": "analytics-node", "version": "2.1.2"}}
            server.logged_in = True
            server.junk_anonymous = True
            self._segment(
                server,
                renew,
                "track",
                RETENTION,
                event="Subscription Renewed",
                properties={"plan": "bean-club", "period": "monthly", "amount": 29.0, "currency": "EUR"},
            )


# --------------------------------------------------------------------------- ground truth per person


def _assign_truth(person: DemoPerson) -> None:
    """Give every record its ground-truth person.

    A person's records that share no real signal with the rest (a device that
    never identified) cannot be stitched by anyone; they form their own truth
    person `<id>.<n>`, like a never-identified visitor. By construction this is
    rare (truncation at the end of the data); `truth.json` counts them.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for record in person.records:
        first = record.ids[0]
        parent.setdefault(first, first)
        root = find(first)
        for token in record.ids[1:]:
            parent.setdefault(token, token)
            other = find(token)
            if other != root:
                parent[other] = root
    roots: dict[str, list[DemoRecord]] = {}
    for record in person.records:
        roots.setdefault(find(record.ids[0]), []).append(record)
    groups = sorted(roots.values(), key=lambda rs: (-len(rs), rs[0].at_ms, rs[0].event_id))
    for n, group in enumerate(groups):
        pid = person.person_id if n == 0 else f"{person.person_id}.{n}"
        tokens = {tok[0] for r in group for tok in r.ids}
        kind = (
            "identified" if tokens & {"u", "e", "t"} else ("social_only" if tokens == {"s"} else "anonymous")
        )
        person.fragments[pid] = kind
        for record in group:
            record.person_id = pid


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class DemoDataset:
    """The demo population; cheap to create, generated lazily when iterated or written."""

    customers: int
    seed: int
    start: datetime
    days: int
    mix: str = DEFAULT_MIX

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp()) * SECOND

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY

    @property
    def account_sid(self) -> str:
        return f"AC{random.Random(self.seed).getrandbits(128):032x}"

    def person(self, index: int) -> DemoPerson:
        """One person, generated on its own (same result as inside `iter_records`)."""
        person = _Builder(self, index).build()
        _assign_truth(person)
        return person

    def iter_records(self) -> Iterator[DemoPerson]:
        """Every person with their records, one at a time."""
        for index in range(self.customers):
            yield self.person(index)

    def broken_records(self) -> list[BrokenRecord]:
        """The deliberately broken records mixed into the files."""
        rng = random.Random(self.seed ^ 0xB40CE)
        at = self.start_ms + 13 * DAY + 10 * HOUR
        anon = _uuid(rng)

        def message_id() -> str:
            return f"ajs-next-{at}-{_uuid(rng)}"

        naive_id, noid_id, junk_id = message_id(), message_id(), message_id()
        track = {"type": "track", "event": "Product Viewed", "properties": {"product_id": "espresso-mini"}}
        sg_id = _b64(rng)
        social_id = f"instagram-{rng.getrandbits(64):016x}"
        sid = f"CA{rng.getrandbits(128):032x}"
        return [
            BrokenRecord(
                "web",
                b'{"type":"track","event":"Product Viewed","anonymousId":"'
                + anon.encode()
                + b'","properties":{"product_id":"espresso-mini","price":229',
                "malformed_json",
                "truncated line: not valid JSON",
                None,
            ),
            BrokenRecord(
                "web",
                orjson.dumps(
                    track | {"messageId": naive_id, "anonymousId": anon, "timestamp": iso_s(at).rstrip("Z")}
                ),
                "naive_timestamp",
                "timestamp without a time zone",
                naive_id,
            ),
            BrokenRecord(
                "web",
                orjson.dumps(track | {"messageId": noid_id, "timestamp": iso_ms(at)}),
                "missing_identifiers",
                "neither userId nor anonymousId",
                noid_id,
            ),
            BrokenRecord(
                "web",
                orjson.dumps(
                    track | {"messageId": junk_id, "anonymousId": "undefined", "timestamp": iso_ms(at)}
                ),
                "junk_identifier_only",
                'anonymousId "undefined" is its only identifier',
                junk_id,
            ),
            BrokenRecord(
                "email",
                orjson.dumps(
                    {
                        "email": "",
                        "timestamp": at // SECOND,
                        "event": "open",
                        "sg_event_id": sg_id,
                        "sg_message_id": f"{_b64(rng)}.filterdrecv-0-1-0",
                        "category": ["newsletter"],
                    }
                ),
                "missing_identifiers",
                "empty recipient email",
                sg_id,
            ),
            BrokenRecord(
                "twilio",
                orjson.dumps(
                    {
                        "AccountSid": self.account_sid,
                        "ApiVersion": "2010-04-01",
                        "CallSid": sid,
                        "CallStatus": "completed",
                        "Direction": "inbound",
                        "To": SHOP_NUMBER,
                        "Called": SHOP_NUMBER,
                        "CallDuration": "12",
                        "Timestamp": rfc2822(at),
                        "CallbackSource": "call-progress-events",
                        "SequenceNumber": "0",
                    }
                ),
                "missing_identifiers",
                "withheld caller: no From/Caller",
                f"{sid}:completed:0",
            ),
            BrokenRecord(
                "calls",
                _csv_line(
                    {c: "" for c in CALL_COLUMNS}
                    | {
                        "call_id": "ctr-broken-1",
                        "started_at": iso_s(at),
                        "ended_at": iso_s(at + 2 * MINUTE),
                        "queue": "support",
                        "wait_seconds": "30",
                        "outcome": "abandoned",
                        "ivr_path": "main>support",
                    }
                ),
                "missing_identifiers",
                "row without caller number, customer id or email",
                "ctr-broken-1",
            ),
            BrokenRecord(
                "social",
                orjson.dumps(
                    {
                        "schema": SOCIAL_SCHEMA,
                        "id": social_id,
                        "kind": "mention",
                        "platform": "instagram",
                        "handle": "koffieliefhebber_nl",
                        "occurred_at": iso_s(at).rstrip("Z"),
                        "post_id": None,
                        "in_reply_to": None,
                        "text": "Bonenbar?",
                        "sentiment": 0.0,
                    }
                ),
                "naive_timestamp",
                "occurred_at without a time zone",
                social_id,
            ),
        ]

    def write(self, directory: Path) -> DemoFiles:
        """Write the provider files and truth.json into `directory` (created if needed)."""
        return _Writer(self, Path(directory)).run()


def generate(
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = 7,
    start: datetime = DEFAULT_START,
    days: int = 60,
    mix: str = DEFAULT_MIX,
) -> DemoDataset:
    """The demo dataset for `customers` people over `days` days from `start` (UTC).

    `mix` is the population mix (`MIXES`): `demo` (about 30.7 events per person)
    or `short` (mostly anonymous visitors, about 10 events per person).

    Raises `TypeError` for a non-integer `customers`, `seed` or `days`, and
    `ValueError` for a negative `customers`, fewer than `MIN_DAYS` days, a
    naive `start` or an unknown `mix`.
    """
    for name, value in (("customers", customers), ("seed", seed), ("days", days)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if customers < 0:
        raise ValueError("customers must not be negative")
    if days < MIN_DAYS:
        raise ValueError(f"days must be at least {MIN_DAYS}: the planted drop-offs need 14 days of silence")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must carry a time zone")
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; choose one of {', '.join(MIXES)}")
    start = start.astimezone(UTC).replace(microsecond=0)
    return DemoDataset(customers=customers, seed=seed, start=start, days=days, mix=mix)


# --------------------------------------------------------------------------- writing


def _csv_line(row: dict[str, str]) -> bytes:
    """One row of the call export, as `csv.writer` writes it (without the line end)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([row[c] for c in CALL_COLUMNS])
    return buffer.getvalue().encode()


class _Writer:
    """Streams a dataset to disk, window by window, and assembles truth.json."""

    def __init__(self, ds: DemoDataset, directory: Path) -> None:
        self.ds = ds
        self.dir = directory
        self.rng = random.Random(ds.seed ^ 0x5E9D)
        self.lines: Counter[str] = Counter()
        self.leaves: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self.dups: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.duplicate_ids: list[dict[str, str]] = []
        self.kinds: Counter[str] = Counter()
        self.personas: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.dropoffs: Counter[tuple[str, str, str]] = Counter()
        self.planted: dict[str, Counter[str]] = {"payment_pain": Counter(), "nurture_pain": Counter()}
        self.fragments = 0
        self.truth_persons = 0
        self.latest = 0
        self.first_event = True
        self.first_twilio = True
        self.first_person = True
        self.email_batches = 0
        # Drop-offs are measured against the nominal end of the data, minus the allowed lateness.
        self.watermark = ds.end_ms - ALLOWED_LATENESS

    def run(self) -> DemoFiles:
        self.dir.mkdir(parents=True, exist_ok=True)
        paths = {name: self.dir / filename for name, filename in FILES.items()}
        spool_events = self.dir / ".truth-events.part"
        spool_twilio = self.dir / ".truth-twilio.part"
        spool_persons = self.dir / ".truth-persons.part"
        with (
            paths["web"].open("wb") as self.web,
            paths["email"].open("wb") as self.email,
            paths["twilio"].open("wb") as self.twilio,
            paths["calls"].open("w", newline="", encoding="utf-8") as calls,
            paths["social"].open("wb") as self.social,
            spool_events.open("wb") as self.t_events,
            spool_twilio.open("wb") as self.t_twilio,
            spool_persons.open("wb") as self.t_persons,
        ):
            self.calls_file = calls
            self.calls = csv.writer(calls, lineterminator="\n")
            self.calls.writerow(CALL_COLUMNS)
            window: list[DemoPerson] = []
            broken: list[BrokenRecord] | None = self.ds.broken_records()
            for person in self.ds.iter_records():
                window.append(person)
                if len(window) == WINDOW:
                    self._flush(window, broken)
                    window, broken = [], None
            self._flush(window, broken)
        truth = self.dir / "truth.json"
        self._assemble(truth, spool_events, spool_twilio, spool_persons)
        for spool in (spool_events, spool_twilio, spool_persons):
            spool.unlink()
        return DemoFiles(
            self.dir, paths["web"], paths["email"], paths["twilio"], paths["calls"], paths["social"], truth
        )

    # ------------------------------------------------------------------ per window

    def _flush(self, window: list[DemoPerson], broken: list[BrokenRecord] | None) -> None:
        by_file: dict[str, list[DemoRecord]] = {name: [] for name in FILES}
        for person in window:
            self._account(person)
            for record in person.records:
                by_file[record.file].append(record)
        for records in by_file.values():
            records.sort(key=lambda r: (r.at_ms, r.event_id))
        broken_by_file: dict[str, list[BrokenRecord]] = {}
        for item in broken or ():
            broken_by_file.setdefault(item.file, []).append(item)
            self.dead[item.file] += 1
            self.leaves[item.file] += 1
        self._write_web(by_file["web"], broken_by_file.get("web", []))
        self._write_email(by_file["email"], broken_by_file.get("email", []))
        self._write_lines(self.twilio, "twilio", by_file["twilio"], broken_by_file.get("twilio", []))
        self._write_calls(by_file["calls"], broken_by_file.get("calls", []))
        self._write_lines(self.social, "social", by_file["social"], broken_by_file.get("social", []))

    def _account(self, person: DemoPerson) -> None:
        """Truth bookkeeping for one person: ids, kinds, expected drop-offs."""
        self.personas[person.persona] += 1
        self.outcomes[person.outcome] += 1
        self.fragments += len(person.fragments) - 1
        parts = []
        for record in person.records:
            parts.append(orjson.dumps(record.event_id) + b":" + orjson.dumps(record.person_id))
            if record.file == "twilio":
                detail = {
                    "call_sid": record.payload["CallSid"],
                    "call_status": record.payload["CallStatus"],
                    "sequence_number": record.payload["SequenceNumber"],
                    "person": record.person_id,
                }
                self.t_twilio.write(
                    (b"" if self.first_twilio else b",")
                    + orjson.dumps(record.event_id)
                    + b":"
                    + orjson.dumps(detail)
                )
                self.first_twilio = False
            self.latest = max(self.latest, record.at_ms)
        if parts:
            self.t_events.write((b"" if self.first_event else b",") + b",".join(parts))
            self.first_event = False
        for pid, kind in person.fragments.items():
            self.kinds[kind] += 1
            self.truth_persons += 1
            entry = {"persona": person.persona, "kind": kind, "outcome": person.outcome}
            if pid != person.person_id:
                entry["fragment_of"] = person.person_id
            key = self._dropoff([r for r in person.records if r.person_id == pid])
            if key is not None:
                self.dropoffs[key] += 1
                entry["dropoff"] = list(key)
            if pid == person.person_id and person.planned_dropoff is not None:
                entry["planned_dropoff"] = list(person.planned_dropoff)
                if person.outcome in self.planted and key == person.planned_dropoff:
                    self.planted[person.outcome]["journeys"] += 1
                    reason = person.detail.get("reason")
                    if reason:
                        self.planted[person.outcome][f"reason:{reason}"] += 1
                    if person.detail.get("nurture_mails"):
                        self.planted[person.outcome][f"mails:{person.detail['nurture_mails']}"] += 1
            self.t_persons.write(
                (b"" if self.first_person else b",") + orjson.dumps(pid) + b":" + orjson.dumps(entry)
            )
            self.first_person = False

    def _dropoff(self, records: list[DemoRecord]) -> tuple[str, str, str] | None:
        """The expected drop-off key of a truth person's (single) journey, if it dropped."""
        last: DemoRecord | None = None
        for record in records:  # already in (time, event id) order
            if record.conversion:
                return None
            if record.active:
                last = record
        if last is None or self.watermark - last.at_ms <= DROPOFF_TIMEOUT:
            return None
        return (last.phase, last.channel, last.action)

    # ------------------------------------------------------------------ files

    def _write_web(self, records: list[DemoRecord], broken: list[BrokenRecord]) -> None:
        units: list[tuple[int, str, bytes, int, DemoRecord | None]] = []
        batches: dict[str, list[DemoRecord]] = {}
        for record in records:
            if record.batch is None:
                units.append((record.at_ms, record.event_id, orjson.dumps(record.payload), 1, record))
            else:
                batches.setdefault(record.batch, []).append(record)
        for calls in batches.values():
            for i in range(0, len(calls), 20):  # the mobile libraries flush at most 20 calls at a time
                chunk = calls[i : i + 20]
                envelope = {
                    "batch": [c.payload for c in chunk],
                    "context": chunk[0].envelope,
                    "sentAt": iso_ms(chunk[-1].at_ms + 1500),
                }
                units.append((chunk[-1].at_ms, chunk[0].event_id, orjson.dumps(envelope), len(chunk), None))
        broken_at = self.ds.start_ms + 13 * DAY
        units.extend(
            (broken_at, item.kind, item.line, 0, None) for item in broken
        )  # leaves counted in _flush
        units.sort(key=lambda u: (u[0], u[1]))
        for _, _, line, leaves, record in units:
            self.web.write(line + b"\n")
            self.lines["web"] += 1
            self.leaves["web"] += leaves
            if record is not None and record.person_id and self._duplicate(record):
                self.web.write(line + b"\n")  # at-least-once delivery: the same call again
                self.lines["web"] += 1
                self._count_dup("web", record.event_id)
        self.stored["web"] += len(records)

    def _duplicate(self, record: DemoRecord) -> bool:
        index = int(record.person_id[1:].partition(".")[0])
        if record.file == "web":
            return (
                index % 250 == 11
                and record.action in ("Page Viewed", "Product Viewed")
                and not self._seen(index)
            )
        return index % 250 == 101 and not self._seen(index)

    def _seen(self, index: int) -> bool:
        seen = getattr(self, "_dup_people", None)
        if seen is None:
            seen = self._dup_people = set()
        if index in seen:
            return True
        seen.add(index)
        return False

    def _count_dup(self, name: str, event_id: str) -> None:
        self.dups[name] += 1
        self.leaves[name] += 1
        self.duplicate_ids.append({"file": FILES[name], "event_id": event_id})

    def _write_email(self, records: list[DemoRecord], broken: list[BrokenRecord]) -> None:
        """SendGrid Event Webhook POST bodies: the events of one flush window each.

        SendGrid posts what it gathered in about 30 seconds (fewer events if the
        body reaches 768 KB; here at most 100). A broken event rides in the POST
        of the valid event it follows. Posts spanning hours, as an earlier
        version wrote, put some events hours ahead of the rest of the feed, which
        no live webhook does.
        """
        payloads = [orjson.dumps(r.payload) for r in records]
        ids = [r.event_id for r in records]
        times = [r.at_ms for r in records]
        if broken:
            middle = len(payloads) // 2
            for item in broken:
                payloads.insert(middle, item.line)
                ids.insert(middle, "")
                times.insert(middle, times[middle - 1] if middle else 0)
        i = 0
        while i < len(payloads):
            size = 1
            while (
                i + size < len(payloads)
                and size < POST_EVENTS
                and times[i + size] - times[i] < POST_WINDOW_MS
            ):
                size += 1
            chunk = payloads[i : i + size]
            line = b"[" + b",".join(chunk) + b"]\n"
            self.email.write(line)
            self.lines["email"] += 1
            self.leaves["email"] += len(chunk)
            self.email_batches += 1
            if self.email_batches % 400 == 17 and all(ids[i : i + size]):  # SendGrid retries a whole POST
                self.email.write(line)
                self.lines["email"] += 1
                for event_id in ids[i : i + size]:
                    self._count_dup("email", event_id)
            i += size
        self.leaves["email"] -= len(broken)  # counted with the dead letters already
        self.stored["email"] += len(records)

    def _write_lines(
        self, stream: Any, name: str, records: list[DemoRecord], broken: list[BrokenRecord]
    ) -> None:
        for item in broken:
            stream.write(item.line + b"\n")
            self.lines[name] += 1
        for record in records:
            line = orjson.dumps(record.payload) + b"\n"
            stream.write(line)
            self.lines[name] += 1
            self.leaves[name] += 1
            if name == "twilio" and self._duplicate(record):
                stream.write(line)  # Twilio retried the callback
                self.lines[name] += 1
                self._count_dup(name, record.event_id)
        self.stored[name] += len(records)

    def _write_calls(self, records: list[DemoRecord], broken: list[BrokenRecord]) -> None:
        for item in broken:
            self.calls_file.write(item.line.decode() + "\n")
            self.lines["calls"] += 1
        for record in records:
            self.calls.writerow([record.payload[c] for c in CALL_COLUMNS])
            self.lines["calls"] += 1
            self.leaves["calls"] += 1
        self.stored["calls"] += len(records)

    # ------------------------------------------------------------------ truth

    def _assemble(self, truth: Path, events: Path, twilio: Path, persons: Path) -> None:
        ds = self.ds
        stored = sum(self.stored.values())
        dead = sum(self.dead.values())
        dups = sum(self.dups.values())
        ranked = sorted(self.dropoffs.items(), key=lambda kv: (-kv[1], kv[0]))
        files = {
            FILES[name]: {
                "lines": self.lines[name],
                "records": self.leaves[name],
                "stored": self.stored[name],
                "dead_letters": self.dead[name],
                "duplicates": self.dups[name],
            }
            for name in FILES
        }
        head = {
            "schema": TRUTH_SCHEMA,
            "generator": {
                "module": "ingest.demo",
                "customers": ds.customers,
                "seed": ds.seed,
                "start": iso_s(ds.start_ms),
                "days": ds.days,
                "end": iso_s(ds.end_ms),
                "mix": ds.mix,
            },
            "conventions": {
                "person": TRUTH_PERSON,
                "event_ids": {
                    "web.jsonl": "Segment messageId",
                    "email.jsonl": "SendGrid sg_event_id",
                    "twilio.jsonl": "CallSid:CallStatus:SequenceNumber (see twilio_callbacks)",
                    "calls.csv": "call_id",
                    "social.jsonl": "id",
                },
                "dropoff": TRUTH_DROPOFF,
                "phase_of": PHASE_OF,
                "identifier_junk": [
                    'anonymousId "undefined" next to a real userId (one app build)',
                    'userId "guest" on some guest checkouts',
                    "test@example.com typed in a form",
                ],
            },
            "counts": {
                "persons": self.truth_persons,
                "generated_people": ds.customers,
                "fragments": self.fragments,
                "persons_by_kind": dict(sorted(self.kinds.items())),
                "people_by_persona": dict(sorted(self.personas.items())),
                "people_by_outcome": dict(sorted(self.outcomes.items())),
                "records_read": stored + dead + dups,
                "stored": stored,
                "dead_letters": dead,
                "duplicates": dups,
                "files": files,
            },
            "latest_event_at": iso_ms(self.latest) if self.latest else None,
            "pain_points": [
                {
                    "name": "failing_payment_step",
                    "story": PAYMENT_STORY,
                    "dropoff_key": dict(zip(("phase", "channel", "action"), PAYMENT_KEY, strict=True)),
                    "journeys": self.planted["payment_pain"]["journeys"],
                    "by_reason": {
                        k.split(":", 1)[1]: v
                        for k, v in sorted(self.planted["payment_pain"].items())
                        if k.startswith("reason:")
                    },
                },
                {
                    "name": "dead_end_nurture",
                    "story": NURTURE_STORY,
                    "dropoff_key": dict(zip(("phase", "channel", "action"), NURTURE_KEY, strict=True)),
                    "journeys": self.planted["nurture_pain"]["journeys"],
                    "by_series_length": {
                        k.split(":", 1)[1]: v
                        for k, v in sorted(self.planted["nurture_pain"].items())
                        if k.startswith("mails:")
                    },
                },
            ],
            "expected_dropoffs": [
                {"phase": k[0], "channel": k[1], "action": k[2], "journeys": n} for k, n in ranked
            ],
            "broken_records": [
                {"file": FILES[b.file], "kind": b.kind, "reason": b.reason, "event_id": b.event_id}
                for b in ds.broken_records()
            ],
            "duplicates": self.duplicate_ids,
        }
        with truth.open("wb") as out:
            out.write(orjson.dumps(head, option=orjson.OPT_INDENT_2)[:-2] + b",\n")
            for key, spool in (("events", events), ("twilio_callbacks", twilio), ("persons", persons)):
                out.write(b'  "' + key.encode() + b'": {')
                with spool.open("rb") as part:
                    shutil.copyfileobj(part, out)
                out.write(b"}" + (b"\n" if key == "persons" else b",\n"))
            out.write(b"}\n")
