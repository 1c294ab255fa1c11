"""The benchmark harness runs end to end on a tiny N and records every figure it promises.

Benchmarks are not timed tests: nothing here asserts a speed. It asserts that the
harness measures what it says (events counted equal records read, the read-and-
decode limit sees the same events, the queries return rows, pm4py and our SQL
agree on the directly-follows graph and the variants) and that results.json and
the table carry every figure and every target's verdict.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from processors.bench.dataset import customers_for, mix_for
from processors.bench.harness import TARGETS, BenchContext, Verdict, measurements, parse_count, run_bench
from processors.bench.queries import QUERIES, run_queries
from processors.storage import connect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    base = tmp_path_factory.mktemp("bench")
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    run_bench(
        2_000,
        only=["embedded", "queries", "peer"],
        out=base / "results.json",
        cache=base / "data",
        quick=True,
        console=console,
    )
    return orjson.loads((base / "results.json").read_bytes()), buffer.getvalue()


def test_results_describe_the_machine_and_the_versions(bench_run: tuple[dict, str]) -> None:
    results, _ = bench_run
    assert results["schema"] == "journeys.bench/v1"
    assert results["machine"]["cores"] >= 1 and results["machine"]["memory_gb"] > 0
    assert results["machine"]["cpu_model"] and results["machine"]["python"]
    for package in ("chdb", "clickhouse-connect", "pydantic", "orjson", "journeys"):
        assert results["versions"][package], package
    assert results["dataset"]["leaf_events"] >= results["dataset"]["records"] > 0
    assert results["command"].startswith("journeys bench --events 2000")
    assert results["config"]["replay"] == "time" and "--replay" not in results["command"]


def test_embedded_counts_every_event_and_measures_the_limit(bench_run: tuple[dict, str]) -> None:
    results, _ = bench_run
    embedded = results["measurements"]["embedded"]
    assert "error" not in embedded, embedded.get("error")
    assert embedded["events"] == results["dataset"]["leaf_events"] == embedded["limit_events"]
    assert embedded["events_match_dataset"] and embedded["accounted"]
    assert embedded["touchpoints_new"] == results["dataset"]["stored"] == embedded["touchpoints"]
    for figure in ("wall_s", "events_per_s", "peak_rss_mb", "limit_events_per_s", "share_of_limit"):
        assert embedded[figure] > 0, figure
    assert embedded["run_s"] < embedded["wall_s"]
    assert embedded["tree_peak_rss_mb"] >= embedded["peak_rss_mb"] and embedded["processes"] >= 1


def test_every_analyst_query_returns_rows_on_the_replicated_table(bench_run: tuple[dict, str]) -> None:
    results, _ = bench_run
    queries = results["measurements"]["queries"]
    assert "error" not in queries, queries.get("error")
    assert queries["copies"] == 2
    assert queries["touchpoints"] == 2 * queries["source_touchpoints"] > 0
    for name in QUERIES:
        assert queries[f"{name}_rows"] > 0, name
        assert 0 < queries[f"{name}_median_s"] <= queries[f"{name}_max_s"], name


def test_the_peer_sees_the_same_log_and_agrees_with_our_sql(bench_run: tuple[dict, str]) -> None:
    results, _ = bench_run
    peer = results["measurements"]["peer"]
    if importlib.util.find_spec("pm4py") is None:
        assert "pm4py is not installed" in peer["skipped"]
        return
    assert "error" not in peer, peer.get("error")
    assert peer["events"] == results["measurements"]["embedded"]["touchpoints"]
    assert peer["dfg_matches"] and peer["variants_match"]
    assert peer["dfg_edges"] > 0 and peer["variants"] > 0
    assert peer["pm4py_events_per_s"] > 0 and peer["journeys_run_s"] > 0


def test_every_target_has_a_verdict_in_the_file_and_the_table(bench_run: tuple[dict, str]) -> None:
    results, table = bench_run
    verdicts = {t["name"]: t for t in results["targets"]}
    assert set(verdicts) == {target.name for target in TARGETS}
    assert all(t["status"] in ("pass", "fail", "n/a") for t in verdicts.values())
    # A 2,000-event run cannot judge the 10M targets, and must say so rather than pass them.
    assert verdicts["10M events from 1M customers ≤ 2 min"]["status"] == "n/a"
    assert verdicts["funnel query ≤ 1 s at 10M touchpoints"]["status"] == "n/a"
    assert verdicts["embedded end to end ≥ 200k events/s"]["status"] in ("pass", "fail")
    for text in ("Targets", "events_per_s", "funnel_median_s", "pm4py", "n/a"):
        assert text in table, text


def test_counts_accept_suffixes() -> None:
    assert parse_count("1M") == 1_000_000
    assert parse_count("10m") == 10_000_000
    assert parse_count("200k") == 200_000
    assert parse_count("2,000") == 2_000
    with pytest.raises(ValueError):
        parse_count("lots")
    with pytest.raises(ValueError):
        parse_count("0")


def test_the_scale_run_uses_the_short_mix_and_smaller_runs_the_demo_mix() -> None:
    assert mix_for(10_000_000) == "short" and mix_for(1_000_000) == "demo"
    assert mix_for(1_000_000, "short") == "short" and mix_for(10_000_000, "demo") == "demo"
    assert 950_000 <= customers_for(10_000_000, "short") <= 1_050_000
    assert customers_for(1_000_000) == 32_523  # the customers of runs 1-5
    with pytest.raises(ValueError, match="unknown mix"):
        mix_for(1_000, "long")


def test_the_scale_target_needs_a_million_customers(tmp_path: Path) -> None:
    scale = next(t for t in TARGETS if t.name.startswith("10M events from 1M customers"))
    results = {"embedded": {"wall_s": 100.0}}

    def verdict(customers: int) -> Verdict:
        ctx = BenchContext(10_000_000, tmp_path, tmp_path, 1, 10_000_000, customers, "k", False)
        return scale.verdict(results, ctx)

    assert verdict(987_000).status == "pass"
    assert verdict(325_000).status == "n/a" and "--mix short" in verdict(325_000).note


def test_the_latency_target_is_judged_only_at_the_pace_the_producer_held(tmp_path: Path) -> None:
    latency = next(t for t in TARGETS if t.name.startswith("p95 latency"))
    ctx = BenchContext(1_000, tmp_path, tmp_path, 1, 1_000, 10, "k", False)

    def verdict(rate: float, achieved: float, p95: float = 1_500.0) -> Verdict:
        return latency.verdict({"latency": {"rate": rate, "achieved_rate": achieved, "p95_ms": p95}}, ctx)

    assert verdict(5_000, 4_990).status == "pass"
    assert verdict(5_000, 4_990, p95=2_500).status == "fail"
    assert verdict(5_000, 3_470).status == "n/a" and "held 3,470" in verdict(5_000, 3_470).note
    assert verdict(300, 300).status == "n/a"


def test_an_unknown_measurement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown measurement"):
        run_bench(10, only=["nope"], out=tmp_path / "r.json", cache=tmp_path / "data")
    assert list(measurements())[:1] == ["embedded"]


def test_an_unknown_replay_order_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown replay order"):
        run_bench(10, replay="random", out=tmp_path / "r.json", cache=tmp_path / "data")


def test_the_query_measurement_brings_an_older_source_database_up_to_date(
    database_before_point_ids: str,
) -> None:
    """A kept workdir's database from before migration 0006 is migrated, not failed on."""
    figures = run_queries({"source": database_before_point_ids, "target": 0, "copies": 1, "runs": 1})
    assert figures["touchpoints"] == figures["source_touchpoints"] > 0
    assert all(figures[f"{name}_rows"] > 0 for name in QUERIES)
    tables = {row[0] for row in connect(database_before_point_ids).query("SHOW TABLES").result_rows}
    assert "journey_point_ids" in tables
