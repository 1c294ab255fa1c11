"""The peer measurement: the same event log through pm4py, the tool a process-mining user reaches for.

The event log is the run's reconstructed touchpoints as stored (case =
journey_id, activity = `phase:channel:action`, timestamp = occurred_at), read
from ClickHouse into a pandas DataFrame; that build is timed on its own. pm4py
is then timed from the built DataFrame: `pm4py.discover_dfg` (directly-follows
graph with start and end activities) and `pm4py.get_variants` (the variants
and their counts). The same two answers from our store, in SQL on the same
touchpoints, are timed beside them and their sizes compared as a sanity check.

Fairness: pm4py starts from a clean, typed table; it does not read provider
payloads, validate, hash PII, stitch identities, classify phases or store
anything. Our figure beside it is the whole `journeys run` (all of that plus
the insert), so "faster than pm4py" compares our end-to-end events/s with
pm4py's DFG + variants events/s on the same events, and the DataFrame build is
reported separately, charged to neither.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import orjson

from processors.bench.child import run_step
from processors.bench.embedded import MARKER, ensure_reconstructed

ACTIVITY = "concat(phase, ':', channel, ':', action)"
LOG_QUERY = (
    f"SELECT journey_id AS case_id, {ACTIVITY} AS activity, occurred_at AS timestamp FROM touchpoints "
    "ORDER BY journey_id, occurred_at, seq"
)
SQL_DFG = f"""
SELECT previous, activity, count() AS n
FROM (
    SELECT {ACTIVITY} AS activity,
           lagInFrame({ACTIVITY}, 1, '') OVER (PARTITION BY journey_id ORDER BY occurred_at, seq
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS previous
    FROM touchpoints
)
WHERE previous != ''
GROUP BY previous, activity
"""
SQL_VARIANTS = f"""
SELECT variant, count() AS cases
FROM (
    SELECT arrayMap(x -> x.2, arraySort(x -> x.1, groupArray(((occurred_at, seq), {ACTIVITY})))) AS variant
    FROM touchpoints
    GROUP BY journey_id
)
GROUP BY variant
"""


def measure_peer(ctx: Any) -> dict[str, Any]:
    """pm4py's DFG and variants on our event log, with our end-to-end time beside them."""
    if importlib.util.find_spec("pm4py") is None:
        return {"skipped": "pm4py is not installed (pip install -e '.[bench]')"}
    source = ensure_reconstructed(ctx.workdir, ctx.dataset, ctx.pii_key)
    child = run_step(
        "peer", {"dsn": source}, cwd=ctx.workdir, log=ctx.workdir / "logs" / "peer", pii_key=ctx.pii_key
    )
    figures = child.result()
    ours = orjson.loads((Path(ctx.workdir) / MARKER).read_bytes())
    pm4py_s = figures["pm4py_dfg_s"] + figures["pm4py_variants_s"]
    figures.update(
        {
            "pm4py_s": round(pm4py_s, 3),
            "pm4py_events_per_s": round(figures["events"] / pm4py_s) if pm4py_s > 0 else None,
            "journeys_run_s": ours["wall_s"],
            "journeys_run_events_per_s": round(ours["records_read"] / ours["wall_s"]),
            "peak_rss_mb": round(child.peak_rss_mb, 1),
            "note": "pm4py: no parsing, stitching, phases or storage; timed from its DataFrame",
        }
    )
    return figures


def run_peer(args: dict[str, Any]) -> dict[str, Any]:
    """(child step) Build the DataFrame, time pm4py's DFG and variants, and the same two answers in SQL."""
    began = time.perf_counter()
    import pm4py

    import_s = time.perf_counter() - began
    from processors.storage import connect

    client = connect(args["dsn"])
    began = time.perf_counter()
    frame = client.query_df(LOG_QUERY)
    frame["case_id"] = frame["case_id"].astype(object)
    frame["activity"] = frame["activity"].astype(object)
    build_s = time.perf_counter() - began
    keys = {"case_id_key": "case_id", "activity_key": "activity", "timestamp_key": "timestamp"}

    began = time.perf_counter()
    dfg, starts, ends = pm4py.discover_dfg(frame, **keys)
    dfg_s = time.perf_counter() - began
    began = time.perf_counter()
    variants = pm4py.get_variants(frame, **keys)
    variants_s = time.perf_counter() - began

    began = time.perf_counter()
    sql_dfg = client.query(SQL_DFG).result_rows
    sql_dfg_s = time.perf_counter() - began
    began = time.perf_counter()
    sql_variants = client.query(SQL_VARIANTS).result_rows
    sql_variants_s = time.perf_counter() - began
    events = len(frame)
    return {
        "events": events,
        "cases": int(frame["case_id"].nunique()),
        "activities": int(frame["activity"].nunique()),
        "pm4py": pm4py.__version__,
        "pm4py_import_s": round(import_s, 3),
        "dataframe_build_s": round(build_s, 3),
        "pm4py_dfg_s": round(dfg_s, 3),
        "pm4py_variants_s": round(variants_s, 3),
        "dfg_edges": len(dfg),
        "start_activities": len(starts),
        "end_activities": len(ends),
        "variants": len(variants),
        "sql_dfg_s": round(sql_dfg_s, 3),
        "sql_variants_s": round(sql_variants_s, 3),
        "sql_dfg_edges": len(sql_dfg),
        "sql_variants": len(sql_variants),
        "dfg_matches": {(a, b): n for a, b, n in sql_dfg} == {k: int(v) for k, v in dfg.items()},
        "variants_match": {tuple(v): int(n) for v, n in sql_variants}
        == {tuple(k): int(n) for k, n in variants.items()},
    }
