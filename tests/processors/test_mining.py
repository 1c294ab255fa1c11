"""The mining views and every cookbook query, run against the demo dataset in chDB.

The demo plants two pain points (a failing payment step that sends customers
to an abandoned phone call, and a nurture email series that is opened and
then leads nowhere); the views must find them where an analyst would look.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from processors.config import Settings
from processors.demo import DemoResult, run_demo
from processors.embedded import run, unlink_identifier
from processors.storage import connect, migrate, migrations

COOKBOOK = Path(__file__).parents[2] / "docs" / "cookbook.md"
QUERIES = re.findall(r"```sql\n(.*?)```", COOKBOOK.read_text(), flags=re.S)


@pytest.fixture
def demo(mining_demo: tuple[Client, DemoResult]) -> tuple[Client, DemoResult]:
    return mining_demo


# The views migration 0005 rewrote over per-journey rollups (0006: drop-off points by id), and the
# migration that last defined each over the touchpoints: the old definitions are the oracle for the new ones.
REWRITTEN = {
    "journey_paths": 2,
    "path_variants": 2,
    "moments_of_truth": 2,
    "dropoff_points": 4,
    "phase_funnel": 2,
}
MIGRATIONS = {m.version: m for m in migrations()}


def view_sql(version: int, view: str) -> str:
    """The query of `view` as migration `version` created it."""
    for statement in MIGRATIONS[version].statements():
        head, _, body = statement.partition(" AS\n")
        if head.startswith("CREATE") and head.split()[-1] == view:
            return body.rstrip(";")
    raise LookupError(f"migration {version} does not create {view}")


def exact(query: str) -> str:
    """`did_just_before` as every move before the drop-off, not the top 3 (topK breaks ties by chance)."""
    return query.replace("topK(3)(", "groupArray(").replace("topKIf(3)(", "groupArrayIf(")


def canonical(client: Client, query: str) -> list[tuple]:
    """The rows in a comparable form: sorted, and arrays sorted where their order is not the answer."""
    result = client.query(query)
    shown = []
    for row in result.result_rows:
        shown.append(
            tuple(
                sorted(v) if isinstance(v, list) and name == "did_just_before" else v
                for name, v in zip(result.column_names, row, strict=True)
            )
        )
    return sorted(shown, key=repr)


def old_and_new(client: Client, view: str) -> tuple[list[tuple], list[tuple]]:
    """The view's rows by its touchpoint-scanning definition and by the rollup one now installed."""
    old = view_sql(REWRITTEN[view], view)
    if view == "path_variants":  # it reads journey_paths, which is rewritten too
        old = old.replace("FROM journey_paths", f"FROM ({view_sql(2, 'journey_paths')}) AS journey_paths")
    if view == "dropoff_points":
        return canonical(client, exact(old)), canonical(client, exact(view_sql(6, view)))
    return canonical(client, old), canonical(client, f"SELECT * FROM {view}")


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


@pytest.mark.parametrize("view", sorted(REWRITTEN))
def test_the_rollup_views_answer_what_the_touchpoint_views_answered(
    demo: tuple[Client, DemoResult], view: str
) -> None:
    client, _ = demo
    old, new = old_and_new(client, view)
    assert old, f"{view} is empty on the demo: the comparison would prove nothing"
    assert new == old
    if view == "dropoff_points":  # the installed view too, top 3 and all
        columns = "phase, channel, action, detail, dropped_journeys, journeys_passing, dropoff_rate"
        assert canonical(client, f"SELECT {columns} FROM dropoff_points") == canonical(
            client, f"SELECT {columns} FROM ({view_sql(4, view)})"
        )


def test_the_rollups_stay_exact_when_journeys_are_rewritten(chdb_path: Path, tmp_path: Path) -> None:
    """Late links merge customers and unlinks split them again: journeys are tombstoned, touchpoints
    move to other journeys and back, and every row gets new versions."""
    settings = Settings.load(dsn=f"chdb://{chdb_path}?database=mining_rewrites")
    run_demo(settings, customers=150, seed=5, directory=tmp_path)
    client = connect(settings.dsn)
    # Late logins: pairs of anonymous visitors turn out to be one user each, early in their history.
    visitors = client.query(
        "SELECT any(identifier_value), min(j.started_at) FROM identities AS i "
        "INNER JOIN journeys AS j USING (customer_id) GROUP BY customer_id "
        "HAVING groupUniqArray(identifier_type) = ['anonymous_id'] ORDER BY customer_id LIMIT 20"
    ).result_rows
    logins = [
        {
            "type": "identify",
            "messageId": f"late-login-{n}",
            "timestamp": started.replace(tzinfo=UTC).isoformat(),
            "anonymousId": anonymous_id,
            "userId": f"late-user-{n // 2}",
        }
        for n, (anonymous_id, started) in enumerate(visitors)
    ]
    late = tmp_path / "late-logins.jsonl"
    late.write_bytes(b"".join(orjson.dumps(login) + b"\n" for login in logins))
    run([late], settings)
    moved = client.query(
        "SELECT count() FROM (SELECT event_id FROM touchpoint_versions GROUP BY event_id "
        "HAVING uniqExact(journey_id) > 1)"
    ).result_rows[0][0]
    tombstones = client.query("SELECT countIf(is_deleted = 1) FROM journey_versions").result_rows[0][0]
    assert moved > 0 and tombstones > 0
    # And half of them undone: the surviving journeys lose the touchpoints they had gained.
    for n in range(0, len(visitors) // 2, 2):
        unlink_identifier(settings, "user_id", f"late-user-{n}", reason="test")
    run([], settings)  # no input: replays the log, every journey written once more
    for view in REWRITTEN:
        old, new = old_and_new(client, view)
        assert new == old, view
    # Once background merges fold a journey's rollup rows of all versions into one, only the
    # points of its current version may count.
    client.command("OPTIMIZE TABLE journey_point_ids FINAL")
    for view in REWRITTEN:
        old, new = old_and_new(client, view)
        assert new == old, f"{view}, rollups merged"


def test_a_database_written_before_point_ids_keeps_its_dropoff_points(
    demo: tuple[Client, DemoResult], database_before_point_ids: str
) -> None:
    """Migration 0006 fills `journey_point_ids` and `journey_points` from 0005's rollups."""
    client, _ = demo
    old = connect(database_before_point_ids)
    columns = "phase, channel, action, detail, dropped_journeys, journeys_passing, dropoff_rate"
    before = canonical(old, f"SELECT {columns} FROM dropoff_points")
    assert before and before == canonical(client, f"SELECT {columns} FROM dropoff_points")

    assert [m.version for m in migrate(old, until=6)] == [6]

    assert canonical(old, f"SELECT {columns} FROM dropoff_points") == before
    tables = {row[0] for row in old.query("SHOW TABLES").result_rows}
    assert {"journey_point_ids", "journey_points"} <= tables and "journey_point_rollups" not in tables
    # New touchpoints reach the new tables through their materialized views.
    first = "(SELECT min(journey_id) FROM touchpoint_versions)"
    old.command(
        "INSERT INTO touchpoint_versions SELECT * REPLACE (version + 1 AS version) FROM touchpoint_versions "
        f"WHERE journey_id = {first}"
    )
    rollups = old.query(f"SELECT count() FROM journey_point_ids WHERE journey_id = {first}").result_rows
    assert rollups == [(2,)]
