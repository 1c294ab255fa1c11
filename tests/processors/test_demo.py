"""End to end: the demo's ground truth is recovered from its raw provider files."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.config import Settings
from processors.demo import bcubed, run_demo
from processors.storage import connect


def test_bcubed_perfect_split_and_merge() -> None:
    assert bcubed([("a", "x"), ("a", "x"), ("b", "y")]).precision == 1.0
    merged = bcubed([("a", "x"), ("a", "y")])  # two people stitched into one customer
    assert (merged.precision, merged.recall) == (0.5, 1.0)
    split = bcubed([("a", "x"), ("b", "x")])  # one person left as two customers
    assert (split.precision, split.recall) == (1.0, 0.5)
    assert bcubed([]).events == 0


@pytest.mark.slow
def test_demo_recovers_its_ground_truth(tmp_path: Path, dsn: str) -> None:
    result = run_demo(Settings.load(dsn=dsn), customers=1200, seed=11, directory=tmp_path / "demo")

    truth = result.truth
    assert result.run.accounted
    assert result.run.records_read == truth["counts"]["records_read"]
    assert result.run.touchpoints_new == truth["counts"]["stored"]
    assert result.run.duplicates == truth["counts"]["duplicates"]
    assert result.run.dead_letters == truth["counts"]["dead_letters"]
    assert result.scored_events == truth["counts"]["stored"]
    assert result.precision >= 0.99
    assert result.recall >= 0.99
    # The two planted pain points are the two biggest drop-off points.
    assert sorted(rank for rank in result.pain_point_ranks.values() if rank is not None) == [1, 2]

    client = connect(dsn)
    planted = {p["name"]: p for p in truth["pain_points"]}
    payment = planted["failing_payment_step"]["dropoff_key"]
    dropped_after_payment_call = client.query(
        "SELECT count() FROM journeys WHERE status = 'dropped' AND dropoff_phase = {p:String} "
        "AND dropoff_channel = {c:String} AND dropoff_action = {a:String}",
        parameters={"p": payment["phase"], "c": payment["channel"], "a": payment["action"]},
    ).result_rows[0][0]
    assert dropped_after_payment_call >= planted["failing_payment_step"]["journeys"]
    # Those customers fled from the web to the phone after a payment failure.
    web_to_phone_after_failure = client.query(
        "SELECT countIf(after_failure = 1) FROM channel_switches "
        "WHERE from_channel = 'web' AND to_channel = 'phone'"
    ).result_rows[0][0]
    assert web_to_phone_after_failure >= planted["failing_payment_step"]["journeys"]
    # Every broken record is a dead letter with a reason and its bytes.
    letters = client.query("SELECT reason, length(raw) FROM dead_letters").result_rows
    assert len(letters) == len(truth["broken_records"])
    assert all(reason for reason, _ in letters)
