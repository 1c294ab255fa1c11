"""The mining views and every cookbook query, run against the demo dataset in chDB.

The demo plants two pain points (a failing payment step that sends customers
to an abandoned phone call, and a nurture email series that is opened and
then leads nowhere); the views must find them where an analyst would look.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from processors.demo import DemoResult

COOKBOOK = Path(__file__).parents[2] / "docs" / "cookbook.md"
QUERIES = re.findall(r"```sql\n(.*?)```", COOKBOOK.read_text(), flags=re.S)


@pytest.fixture
def demo(mining_demo: tuple[Client, DemoResult]) -> tuple[Client, DemoResult]:
    return mining_demo


def rows(client: Client, query: str) -> list[dict[str, Any]]:
    result = client.query(query)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def test_the_cookbook_has_queries() -> None:
    assert len(QUERIES) >= 12


@pytest.mark.parametrize("query", QUERIES, ids=[f"cookbook-{n}" for n in range(1, len(QUERIES) + 1)])
def test_every_cookbook_query_runs_on_the_demo(demo: tuple[Client, DemoResult], query: str) -> None:
    client, _ = demo
    assert rows(client, query), "the query returned nothing on the demo"


def test_the_planted_pain_points_are_the_top_dropoff_points(demo: tuple[Client, DemoResult]) -> None:
    client, result = demo
    planted = {
        (p["dropoff_key"]["phase"], p["dropoff_key"]["channel"], p["dropoff_key"]["action"])
        for p in result.truth["pain_points"]
    }
    top = rows(client, "SELECT phase, channel, action, detail, dropoff_rate FROM dropoff_points LIMIT 2")
    assert {(r["phase"], r["channel"], r["action"]) for r in top} == planted
    details = {r["action"]: r["detail"] for r in top}
    assert details == {"call.abandoned": "payments", "open": "spring-nurture"}
    assert all(r["dropoff_rate"] > 0.5 for r in top)


def test_the_funnel_counts_match_the_journeys(demo: tuple[Client, DemoResult]) -> None:
    client, _ = demo
    funnel = {r["phase"]: r for r in rows(client, "SELECT * FROM phase_funnel")}
    reached = dict(
        client.query(
            "SELECT phase, count() FROM journeys ARRAY JOIN phases_reached AS phase GROUP BY phase"
        ).result_rows
    )
    assert {phase: r["journeys"] for phase, r in funnel.items()} == reached
    assert list(funnel) == ["orientation", "consideration", "purchase", "usage", "retention"]
    assert funnel["retention"]["reached_next"] == 0
    assert all(r["median_seconds_to_next"] > 0 for r in funnel.values() if r["reached_next"])
    split = rows(
        client, "SELECT side, phase, journeys FROM funnel_before_after(cutoff = '2026-10-01 00:00:00')"
    )
    for phase, r in funnel.items():
        assert sum(s["journeys"] for s in split if s["phase"] == phase) == r["journeys"]


def test_customers_flee_from_a_failed_payment_to_the_phone(demo: tuple[Client, DemoResult]) -> None:
    client, result = demo
    (cell,) = rows(
        client,
        "SELECT switches, share_after_failure, top_failures FROM channel_switch_matrix "
        "WHERE from_channel = 'web' AND to_channel = 'phone' AND phase = 'purchase'",
    )
    assert cell["switches"] >= result.truth["pain_points"][0]["journeys"]
    assert cell["share_after_failure"] > 0.5 and "Payment Failed" in cell["top_failures"]


def test_the_abandoned_call_is_the_strongest_negative_moment_of_truth(
    demo: tuple[Client, DemoResult],
) -> None:
    client, _ = demo
    top = rows(
        client,
        "SELECT channel, action, conversion_with, dropoff_lift FROM moments_of_truth "
        "ORDER BY dropoff_lift DESC LIMIT 1",
    )[0]
    assert (top["channel"], top["action"]) == ("phone", "call.abandoned")
    assert top["conversion_with"] == 0 and top["dropoff_lift"] > 1.5
    # Minimum support: nothing seen in fewer than 20 journeys is ranked.
    assert client.query("SELECT min(journeys_with) FROM moments_of_truth").result_rows[0][0] >= 20


def test_the_nurture_series_is_opened_but_precedes_no_progress(demo: tuple[Client, DemoResult]) -> None:
    client, _ = demo
    campaigns = rows(
        client, "SELECT * FROM email_progress WHERE journeys_opened >= 10 ORDER BY progress_rate"
    )
    assert campaigns[0]["campaign"] == "spring-nurture"
    assert campaigns[0]["progress_rate"] < 0.2 < campaigns[-1]["progress_rate"]


def test_paths_collapse_repeats_and_count_loops(demo: tuple[Client, DemoResult]) -> None:
    client, _ = demo
    paths = rows(client, "SELECT steps, loops FROM journey_paths")
    for path in paths:
        steps = path["steps"]
        assert all(a != b for a, b in itertools.pairwise(steps))
        assert path["loops"] == len(steps) - len(set(steps))
    assert any(path["loops"] > 0 for path in paths)


def test_anomalies_are_the_journeys_own_skips_regressions_and_reversals(
    demo: tuple[Client, DemoResult],
) -> None:
    client, _ = demo
    counted = dict(client.query("SELECT kind, count() FROM phase_anomalies GROUP BY kind").result_rows)
    expected = client.query("SELECT sum(length(skipped_phases)), sum(regressions) FROM journeys").result_rows[
        0
    ]
    assert (counted.get("skipped", 0), counted.get("regression", 0)) == expected
    order = ["orientation", "consideration", "purchase", "usage", "retention"]
    reached = [row[0] for row in client.query("SELECT phases_reached FROM journeys").result_rows]
    reversals = sum(
        1 for phases in reached for a, b in itertools.pairwise(phases) if order.index(b) < order.index(a)
    )
    assert counted.get("reversed", 0) == reversals
