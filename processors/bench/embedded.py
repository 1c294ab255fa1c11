"""The embedded measurement: `journeys run` end to end into chDB, beside the read-and-decode limit.

End to end is the real command (`python -m processors.cli run FILES --db chdb://…`,
the same code as `journeys run`) in a child process, into a fresh chDB path under
the run's workdir: it parses, validates, hashes PII, stitches identities, folds
journeys and inserts into ClickHouse. events/s = events the run read (its own
accounting in the `runs` table) / the child's wall seconds, interpreter start and
imports included. Peak RSS is the child's own (`os.wait4`), chDB included; where
the run starts worker processes, `tree_peak_rss_mb` is the peak of the whole
process tree's resident set (sampled), the figure the memory target is about.

The practical limit, measured in the same run on the same files (page cache
warmed first for both): every line read and decoded with orjson (CSV rows with
the csv module), nothing else. No pipeline that parses every event can beat it
in this Python process; the ratio says how much of that budget the rest costs.
"""

from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from processors.bench.child import run_process, run_step
from processors.bench.dataset import input_paths

DATABASE = "bench"
MARKER = "reconstructed.json"


def source_dsn(workdir: Path) -> str:
    """The database the embedded run reconstructs into (and the queries and peer steps read)."""
    return f"chdb://{workdir / 'chdb'}?database={DATABASE}"


def read_and_decode(paths: list[Path]) -> tuple[int, int, float]:
    """(events, bytes, seconds) of reading every line and decoding it: the practical limit."""
    events = 0
    size = 0
    started = time.perf_counter()
    for path in paths:
        if path.suffix == ".csv":
            with path.open("r", encoding="utf-8", newline="") as stream:
                rows = csv.reader(stream)
                next(rows, None)  # the header is no event
                for _row in rows:
                    events += 1
            size += path.stat().st_size
            continue
        with path.open("rb") as stream:
            for line in stream:
                size += len(line)
                if not line.strip():
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    events += 1  # a broken line is still one record read
                    continue
                events += _leaves(value)
    return events, size, time.perf_counter() - started


def _leaves(value: Any) -> int:
    """Events in one decoded line, split as the pipeline splits them: a SendGrid POST body (an
    array) holds one event per element, a Segment `/v1/batch` envelope one per call."""
    if isinstance(value, list):
        return max(1, len(value))  # an empty array is one (dead-lettered) record
    if isinstance(value, dict) and isinstance(value.get("batch"), list):
        return max(1, len(value["batch"]))
    return 1


def _warm(paths: list[Path]) -> None:
    """Read the files once so both sides find them in the page cache."""
    for path in paths:
        with path.open("rb") as stream:
            while stream.read(1 << 20):
                pass


def reconstruct(workdir: Path, dataset: Path, pii_key: str) -> dict[str, Any]:
    """`journeys run` on the dataset into a fresh chDB path: the child's usage and the run's accounting."""
    chdb_dir = workdir / "chdb"
    shutil.rmtree(chdb_dir, ignore_errors=True)
    (workdir / MARKER).unlink(missing_ok=True)
    dsn = source_dsn(workdir)
    files = [str(path) for path in input_paths(dataset)]
    argv = [sys.executable, "-m", "processors.cli", "run", *files, "--db", dsn]
    child = run_process(argv, cwd=workdir, log=workdir / "logs" / "embedded-run", pii_key=pii_key)
    child.check("journeys run")
    stored = run_step(
        "inspect", {"dsn": dsn}, cwd=workdir, log=workdir / "logs" / "embedded-inspect", pii_key=pii_key
    ).result()
    figures = {
        "wall_s": round(child.wall_s, 3),
        "peak_rss_mb": round(child.peak_rss_mb, 1),
        "tree_peak_rss_mb": round(child.tree_peak_rss_mb, 1),
        "processes": child.processes,
        "user_s": round(child.user_s, 3),
        "sys_s": round(child.sys_s, 3),
        **stored,
    }
    (workdir / MARKER).write_bytes(orjson.dumps({"dsn": dsn, **figures}))
    return figures


def ensure_reconstructed(workdir: Path, dataset: Path, pii_key: str) -> str:
    """The reconstructed database of this run: the embedded measurement's, or made now (untimed)."""
    if not (workdir / MARKER).is_file():
        reconstruct(workdir, dataset, pii_key)
    return str(orjson.loads((workdir / MARKER).read_bytes())["dsn"])


def measure_embedded(ctx: Any) -> dict[str, Any]:
    """End-to-end events/s, wall time and peak RSS of `journeys run`, and the read-and-decode limit."""
    paths = input_paths(ctx.dataset)
    _warm(paths)
    limit_events, limit_bytes, limit_s = read_and_decode(paths)
    run = reconstruct(ctx.workdir, ctx.dataset, ctx.pii_key)
    events = run["records_read"]
    per_s = events / run["wall_s"]
    limit_per_s = limit_events / limit_s
    return {
        "events": events,
        "raw_records": ctx.records,
        "events_match_dataset": events == ctx.leaf_events,
        "wall_s": run["wall_s"],
        "events_per_s": round(per_s),
        "run_s": run["run_s"],
        "events_per_s_in_run": round(events / run["run_s"]) if run["run_s"] > 0 else None,
        "startup_s": round(run["wall_s"] - run["run_s"], 3),
        "peak_rss_mb": run["peak_rss_mb"],
        "tree_peak_rss_mb": run["tree_peak_rss_mb"],
        "processes": run["processes"],
        "cpu_s": round(run["user_s"] + run["sys_s"], 3),
        "cpu_per_wall": round((run["user_s"] + run["sys_s"]) / run["wall_s"], 2),
        "touchpoints_new": run["touchpoints_new"],
        "duplicates": run["duplicates"],
        "dead_letters": run["dead_letters"],
        "accounted": run["records_read"] == run["touchpoints_new"] + run["duplicates"] + run["dead_letters"],
        "touchpoints": run["touchpoints"],
        "journeys": run["journeys"],
        "customers_found": run["customers"],
        "limit_events": limit_events,
        "limit_s": round(limit_s, 3),
        "limit_events_per_s": round(limit_per_s),
        "limit_mb_per_s": round(limit_bytes / 1e6 / limit_s, 1),
        "share_of_limit": round(per_s / limit_per_s, 4),
        "clickhouse": run["clickhouse"],
    }


def inspect_database(args: dict[str, Any]) -> dict[str, Any]:
    """(child step) The last run's accounting and what the database now holds."""
    from processors.storage import connect

    client = connect(args["dsn"])
    row = client.query(
        "SELECT records_read, touchpoints_new, duplicates, dead_letters, journeys_written, "
        "dateDiff('millisecond', started_at, finished_at) / 1000 FROM runs ORDER BY started_at DESC LIMIT 1"
    ).result_rows[0]
    counts = client.query(
        "SELECT (SELECT count() FROM touchpoints), (SELECT count() FROM journeys), "
        "(SELECT uniqExact(customer_id) FROM journeys), version()"
    ).result_rows[0]
    return {
        "records_read": int(row[0]),
        "touchpoints_new": int(row[1]),
        "duplicates": int(row[2]),
        "dead_letters": int(row[3]),
        "journeys_written": int(row[4]),
        "run_s": float(row[5]),
        "touchpoints": int(counts[0]),
        "journeys": int(counts[1]),
        "customers": int(counts[2]),
        "clickhouse": str(counts[3]),
    }
