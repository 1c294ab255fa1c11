"""Parsing in processes gives exactly what parsing in the caller gives, in the same order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ingest.demo import generate
from ingest.files import read_records
from ingest.records import DeadLetter
from journeys.fold import ClassifiedTouchpoint
from processors.config import Settings, load_rules
from processors.embedded import expand_inputs, parse_recipe
from processors.parsing import classified_outcomes


def test_processes_give_the_same_outcomes_in_the_same_order(tmp_path: Path, dsn: str) -> None:
    files = generate(customers=60, seed=5).write(tmp_path / "demo")
    records = [record for path in expand_inputs(list(files.inputs())) for record in read_records(path, None)]
    recipe = parse_recipe(Settings.load(dsn=dsn), load_rules(), create_key=False)

    here = list(classified_outcomes(records, recipe, workers=1))
    pooled = list(classified_outcomes(records, recipe, workers=2, min_records=0))

    def comparable(outcome: ClassifiedTouchpoint | DeadLetter) -> object:  # minus when it was received
        if isinstance(outcome, DeadLetter):
            return replace(outcome, received_at=None)
        return replace(outcome, touchpoint=replace(outcome.touchpoint, received_at=None))

    assert len(here) > 1000
    assert any(isinstance(outcome, DeadLetter) for outcome in here), "the demo plants broken records"
    assert [comparable(o) for o in pooled] == [comparable(o) for o in here]
