"""Fixtures for the adapter tests: a fixed PII key and clock, and fixture-file parsing.

(The suite runs with --import-mode=importlib, so helpers are fixtures rather
than an importable module.)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.context import IngestContext
from ingest.files import read_records
from ingest.pipeline import parse_records
from ingest.records import DeadLetter, RawRecord
from journeys.touchpoint import Touchpoint

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
KEY = b"adapter-tests-key-0123456789abcd"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

Outcomes = list[Touchpoint | DeadLetter]


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def digest() -> Callable[[str], str]:
    """The expected identifier value, computed independently of ingest.pii."""
    return lambda normalised: hmac.new(KEY, normalised.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def make_ctx() -> Callable[..., IngestContext]:
    return lambda **kwargs: IngestContext.with_key(KEY, now=lambda: NOW, **kwargs)


@pytest.fixture
def ctx(make_ctx: Callable[..., IngestContext]) -> IngestContext:
    return make_ctx()


@pytest.fixture
def parse_file(ctx: IngestContext) -> Callable[..., Outcomes]:
    def parse(name: str, format: str | None = None, context: IngestContext | None = None) -> Outcomes:
        return list(parse_records(read_records(FIXTURES / name), context or ctx, format))

    return parse


@pytest.fixture
def parse_raw(ctx: IngestContext) -> Callable[..., Outcomes]:
    def parse(raw: Any, format: str | None = None, context: IngestContext | None = None) -> Outcomes:
        data = raw.encode() if isinstance(raw, str) else raw
        return list(parse_records([RawRecord(data, "test")], context or ctx, format))

    return parse
