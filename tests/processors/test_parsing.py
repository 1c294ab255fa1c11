"""Parsing in processes gives exactly what parsing in the caller gives, in the same order; the
short way from an adapter's fields to the aggregate's form gives what validating the model gives."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
from hostile import bodies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.context import IngestContext
from ingest.demo import generate
from ingest.files import read_records
from ingest.pipeline import FORMATS, parse_records, parse_records_with
from ingest.records import DeadLetter, RawRecord
from journeys.fold import ClassifiedTouchpoint
from processors.config import Settings, load_rules
from processors.embedded import expand_inputs, parse_recipe
from processors.parsing import classified_outcomes, classifier


def test_processes_give_the_same_outcomes_in_the_same_order(tmp_path: Path, dsn: str) -> None:
    files = generate(customers=60, seed=5).write(tmp_path / "demo")
    records = [record for path in expand_inputs(list(files.inputs())) for record in read_records(path, None)]
    recipe = parse_recipe(Settings.load(dsn=dsn), load_rules(), create_key=False)

    here = list(classified_outcomes(records, recipe, workers=1))
    pooled = list(classified_outcomes(records, recipe, workers=2, min_records=0))

    def comparable(outcome: ClassifiedTouchpoint | DeadLetter) -> object:  # minus when it was received
        if isinstance(outcome, DeadLetter):
            return replace(outcome, received_at=None)
        return outcome._replace(touchpoint=outcome.touchpoint._replace(received_at=None))

    assert len(here) > 1000
    assert any(isinstance(outcome, DeadLetter) for outcome in here), "the demo plants broken records"
    assert [comparable(o) for o in pooled] == [comparable(o) for o in here]


# ── the short way: adapters' fields straight to the compact, classified form ──

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CTX = IngestContext.with_key(b"parsing-test-key", now=lambda: datetime(2024, 6, 1, tzinfo=UTC))
RULES = load_rules()


def _the_model_s_way(records: list[RawRecord], format: str | None = None) -> list:
    """The reference: every leaf validated into the model, then made compact and classified."""
    return [
        o if isinstance(o, DeadLetter) else ClassifiedTouchpoint.of(o, RULES)
        for o in parse_records(records, CTX, format)
    ]


def _the_short_way(records: list[RawRecord], format: str | None = None) -> list:
    return list(parse_records_with(records, CTX, classifier(RULES), format))


def _fixture_samples() -> dict[str, dict]:
    samples = {}
    for path in sorted(FIXTURES.rglob("*.json")):
        document = orjson.loads(path.read_bytes())
        sample = document[0] if isinstance(document, list) and document else document
        if isinstance(sample, dict):
            samples[path.name] = sample
    return samples


def test_the_short_way_gives_what_the_model_gives_on_every_fixture_and_the_demo(tmp_path: Path) -> None:
    demo = generate(customers=60, seed=5).write(tmp_path / "demo")
    paths = [*sorted(p for p in FIXTURES.rglob("*") if p.is_file()), *demo.inputs()]
    records = [record for path in paths for record in read_records(path)]
    reference = _the_model_s_way(records)
    assert _the_short_way(records) == reference
    letters = [o for o in reference if isinstance(o, DeadLetter)]
    assert len(letters) > 20 and len(reference) - len(letters) > 1000  # the rejects fixtures and the demo


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=bodies(_fixture_samples()), format=st.sampled_from([None, *FORMATS]))
def test_the_short_way_rejects_what_the_model_rejects_with_the_same_reason(
    raw: bytes, format: str | None
) -> None:
    records = [RawRecord(raw, "fuzz")]
    assert _the_short_way(records, format) == _the_model_s_way(records, format)
