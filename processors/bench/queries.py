"""The analyst-query measurement: the mining views at 10M touchpoints.

Reconstructing 10M events end to end is the embedded measurement's job; the
queries only need a realistic table of that size. So the dataset is *replicated
from a reconstructed demo*: the run's own reconstructed database (the embedded
measurement's, or one made now) is copied into a fresh database
(`bench_queries`, same chDB path, every migration applied) K times with
`INSERT … SELECT … CROSS JOIN numbers()`, each copy with its event, journey and
customer ids (and drop-off event ids) suffixed `~k`, until the touchpoints
reach the target (10M by default; the quick run uses two copies). The
per-journey point rollups (`journey_point_ids`, migrations 0005 and 0006) are copied the same way rather than
left to their materialized view, whose input here would be the copy's blocks,
which split journeys. Copies share
timestamps, paths and distributions with the original, so group sizes scale
and cardinalities of ids grow K-fold, which is what costs in these views; the
number of distinct path variants does not grow (it would with real customers).
The point names (`journey_points`, migration 0006) are left to their
materialized view: they do not depend on how the copy's blocks split journeys.

Each query is the documented cookbook form of its view (docs/cookbook.md),
timed from the client: one warm-up, then `runs` timed runs; the median and
the max wall time are reported with the median CPU time (chDB's threads
included) and the rows returned.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from typing import Any

from processors.bench.child import run_step
from processors.bench.embedded import ensure_reconstructed

FULL_TOUCHPOINTS = 10_000_000
DATABASE = "bench_queries"
# The cookbook's query for each view the issue names (docs/cookbook.md).
QUERIES: dict[str, str] = {
    "funnel": (
        "SELECT phase, journeys, reached_next, conversion_to_next, "
        "median_seconds_to_next / 86400 AS median_days, p90_seconds_to_next / 86400 AS p90_days "
        "FROM phase_funnel"
    ),
    "dropoff": (
        "SELECT phase, channel, action, detail, dropped_journeys, journeys_passing, dropoff_rate, "
        "did_just_before FROM dropoff_points ORDER BY dropped_journeys DESC LIMIT 10"
    ),
    "channel_switch": (
        "SELECT from_channel, to_channel, phase, switches, median_gap_seconds, share_after_failure, "
        "top_failures FROM channel_switch_matrix ORDER BY share_after_failure DESC, switches DESC LIMIT 10"
    ),
    "path_variants": (
        "SELECT status, path, journeys, avg_loops FROM path_variants WHERE status = 'dropped' "
        "ORDER BY journeys DESC LIMIT 10"
    ),
    "moments_of_truth": (
        "SELECT channel, action, journeys_with, conversion_with, conversion_lift, dropoff_with, "
        "dropoff_lift FROM moments_of_truth ORDER BY dropoff_lift DESC LIMIT 10"
    ),
}
# Columns that carry an id and are suffixed per copy.
ID_COLUMNS = {
    "touchpoint_versions": ("event_id", "customer_id", "journey_id"),
    "journey_versions": ("journey_id", "customer_id", "dropoff_event_id"),
    "journey_point_ids": ("journey_id",),
}
# Filled by a materialized view on touchpoint_versions; copied like the others after the view's
# own rows from the bulk copy are dropped (its blocks split journeys, which the writers never do).
ROLLUP_TABLES = ("journey_point_ids",)
ROWS_PER_INSERT = 2_000_000


def measure_queries(ctx: Any, touchpoints: int | None = None) -> dict[str, Any]:
    """Median and max latency of each analyst query on the replicated touchpoint table."""
    source = ensure_reconstructed(ctx.workdir, ctx.dataset, ctx.pii_key)
    args = {
        "source": source,
        "target": touchpoints if touchpoints is not None else (0 if ctx.quick else FULL_TOUCHPOINTS),
        "copies": 2 if ctx.quick and touchpoints is None else None,
        "runs": 2 if ctx.quick else 5,
    }
    child = run_step(
        "queries", args, cwd=ctx.workdir, log=ctx.workdir / "logs" / "queries", pii_key=ctx.pii_key
    )
    return {
        **child.result(),
        "peak_rss_mb": round(child.peak_rss_mb, 1),
        "child_wall_s": round(child.wall_s, 3),
    }


def _columns(client: Any, database: str, table: str) -> list[str]:
    result = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
        parameters={"db": database, "t": table},
    )
    return [row[0] for row in result.result_rows]


def replicate(client: Any, source_db: str, table: str, copies: int) -> None:
    """Copy `source_db.table` into the client's database `copies` times, ids suffixed `~k` (k ≥ 1)."""
    columns = _columns(client, source_db, table)
    rows = client.query(f"SELECT count() FROM `{source_db}`.`{table}`").result_rows[0][0]
    exprs = []
    for column in columns:
        if column in ID_COLUMNS[table]:
            exprs.append(
                f"if(n.number = 0 OR s.`{column}` = '', s.`{column}`, "
                f"concat(s.`{column}`, '~', toString(n.number))) AS `{column}`"
            )
        else:
            exprs.append(f"s.`{column}`")
    step = max(1, ROWS_PER_INSERT // max(rows, 1))
    for start in range(0, copies, step):
        count = min(step, copies - start)
        client.command(
            f"INSERT INTO `{table}` ({', '.join(f'`{c}`' for c in columns)}) "
            f"SELECT {', '.join(exprs)} FROM `{source_db}`.`{table}` AS s "
            f"CROSS JOIN numbers({start}, {count}) AS n"
        )


def _cpu_s() -> float:
    """CPU seconds of this process so far, chDB's threads included (it runs in-process).

    Beside the wall time it separates what a query costs from waiting for a core on a
    shared machine: cpu_s above wall time means both cores worked for the query."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_queries(args: dict[str, Any]) -> dict[str, Any]:
    """(child step) Build the replicated database, then time every query."""
    from processors.storage import Target, connect, migrate

    source = Target.parse(args["source"])
    # A kept workdir may hold a database an older release reconstructed: bring it to the
    # schema the copies are made in (migrations keep what is stored).
    migrate(connect(args["source"]))
    target_dsn = args["source"].replace(f"database={source.database}", f"database={DATABASE}")
    client = connect(target_dsn)
    client.command(f"DROP DATABASE IF EXISTS `{DATABASE}`")
    client = connect(target_dsn)
    migrate(client)
    source_touchpoints = client.query(f"SELECT count() FROM `{source.database}`.touchpoints").result_rows[0][
        0
    ]
    copies = args.get("copies") or max(1, math.ceil(args["target"] / max(source_touchpoints, 1)))
    started = time.perf_counter()
    for table in ID_COLUMNS:
        if table in ROLLUP_TABLES:
            client.command(f"TRUNCATE TABLE `{table}`")
        replicate(client, source.database, table, copies)
    build_s = time.perf_counter() - started
    touchpoints, journeys = client.query(
        "SELECT (SELECT count() FROM touchpoints), (SELECT count() FROM journeys)"
    ).result_rows[0]
    parts = dict(
        client.query(
            "SELECT table, count() FROM system.parts WHERE database = {db:String} AND active GROUP BY table",
            parameters={"db": DATABASE},
        ).result_rows
    )
    figures: dict[str, Any] = {
        "dataset": "replicated from a reconstructed demo",
        "source_touchpoints": int(source_touchpoints),
        "copies": copies,
        "touchpoints": int(touchpoints),
        "journeys": int(journeys),
        "touchpoint_parts": int(parts.get("touchpoint_versions", 0)),
        "journey_parts": int(parts.get("journey_versions", 0)),
        "build_s": round(build_s, 3),
        "runs": args["runs"],
    }
    for name, query in QUERIES.items():
        client.query(query)  # warm-up: caches, marks, compiled expressions
        seconds, cpu = [], []
        rows = 0
        for _ in range(args["runs"]):
            began, cpu_began = time.perf_counter(), _cpu_s()
            result = client.query(query)
            seconds.append(time.perf_counter() - began)
            cpu.append(_cpu_s() - cpu_began)
            rows = len(result.result_rows)
        figures[f"{name}_median_s"] = round(statistics.median(seconds), 4)
        figures[f"{name}_max_s"] = round(max(seconds), 4)
        figures[f"{name}_cpu_s"] = round(statistics.median(cpu), 4)
        figures[f"{name}_rows"] = rows
    return figures
