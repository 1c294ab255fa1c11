"""The benchmark runner: context, measurements, targets, the table and `bench/results.json`.

A measurement is a function `measure_x(ctx: BenchContext) -> dict[str, Any]`
returning flat figures. The harness runs the selected ones in order, in one
run on one dataset; a measurement that raises is recorded with its error and
the run goes on. Each target of the issue is then judged against the figures
(pass / fail, or n/a with the reason when the run could not measure it, e.g.
the 10M-event scale target on a 1M-event run), printed beside its figure and
written to results.json together with the machine and the versions, so a
figure is never read without knowing where it came from.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from processors.bench.dataset import Dataset, mix_for, prepare

SCHEMA = "journeys.bench/v1"
# The orders the stream measurements produce the dataset in (`processors.bench.stream.replay_records`):
# by event time, as a live feed arrives, or one provider file after another (every run before round 5).
REPLAYS = ("time", "files")
DEFAULT_REPLAY = "time"
FULL_QUERY_TOUCHPOINTS = 10_000_000
PACKAGES = (
    "journeys",
    "chdb",
    "chdb-core",
    "clickhouse-connect",
    "pydantic",
    "orjson",
    "faust-streaming",
    "kafka-python",
    "pm4py",
    "pandas",
    "numpy",
    "typer",
    "rich",
)


@dataclass
class BenchContext:
    """What every measurement of one run shares (the contract with `processors/bench/stream.py`)."""

    events: int  # events requested (N)
    workdir: Path  # scratch directory of this run (datasets, chDB paths, logs)
    dataset: Path  # directory holding the generated demo input files
    records: int  # raw records (lines/rows) in the dataset
    leaf_events: int  # events in the dataset (a SendGrid POST line holds several; what `journeys run` counts)
    customers: int
    pii_key: str
    quick: bool  # tiny run for the test suite
    mix: str = "demo"  # the demo generator's population mix (`ingest.demo.MIXES`)
    replay: str = DEFAULT_REPLAY  # the order the stream measurements produce the records in (REPLAYS)


Measure = Callable[[BenchContext], dict[str, Any]]


def measurements(query_touchpoints: int | None = None) -> dict[str, Measure]:
    """The measurements in run order; the stream ones only where `processors/bench/stream.py` exists.

    `query_touchpoints` sizes the queries measurement's table (default: 10M, or two copies when quick).
    """
    from processors.bench.embedded import measure_embedded
    from processors.bench.peer import measure_peer
    from processors.bench.queries import measure_queries

    found: dict[str, Measure] = {"embedded": measure_embedded}
    try:
        from processors.bench.stream import measure_latency, measure_stream
    except ImportError:
        pass
    else:
        found["stream"] = measure_stream
        found["latency"] = measure_latency
    found["queries"] = functools.partial(measure_queries, touchpoints=query_touchpoints)
    found["peer"] = measure_peer
    return found


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | n/a
    value: Any = None
    note: str = ""


@dataclass(frozen=True)
class BenchTarget:
    """One target of the issue, judged from the figures of one run."""

    name: str
    measurement: str
    figure: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str
    judge: Callable[[BenchTarget, dict[str, dict[str, Any]], BenchContext], Verdict] | None = None

    def verdict(self, results: dict[str, dict[str, Any]], ctx: BenchContext) -> Verdict:
        if self.judge is not None:
            return self.judge(self, results, ctx)
        return self.compare(results.get(self.measurement, {}).get(self.figure))

    def compare(self, value: Any, note: str = "") -> Verdict:
        if not isinstance(value, int | float):
            return Verdict("n/a", value, note or f"{self.measurement}.{self.figure} was not measured")
        ok = value >= self.threshold if self.op == ">=" else value <= self.threshold
        return Verdict("pass" if ok else "fail", value, note)


SCALE_EVENTS = 10_000_000
SCALE_CUSTOMERS = 1_000_000


def _at_scale(target: BenchTarget, results: dict[str, dict[str, Any]], ctx: BenchContext) -> Verdict:
    value = results.get(target.measurement, {}).get(target.figure)
    if ctx.leaf_events < SCALE_EVENTS * 0.95:
        return Verdict("n/a", value, f"run had {ctx.leaf_events:,} events; the target is at 10M")
    if ctx.customers < SCALE_CUSTOMERS * 0.9:
        return Verdict(
            "n/a", value, f"run had {ctx.customers:,} customers; the target is 1M (use --mix short)"
        )
    return target.compare(value, f"{ctx.leaf_events:,} events from {ctx.customers:,} customers")


def _one_worker(target: BenchTarget, results: dict[str, dict[str, Any]], ctx: BenchContext) -> Verdict:
    figures = results.get(target.measurement, {})
    workers = figures.get("workers", 1)
    if workers != 1:
        return Verdict("n/a", figures.get(target.figure), f"run had {workers} workers; the target is one's")
    return target.compare(figures.get(target.figure))


def _at_query_scale(target: BenchTarget, results: dict[str, dict[str, Any]], ctx: BenchContext) -> Verdict:
    figures = results.get("queries", {})
    value = figures.get(target.figure)
    touchpoints = figures.get("touchpoints")
    if not isinstance(touchpoints, int) or touchpoints < FULL_QUERY_TOUCHPOINTS * 0.95:
        return Verdict("n/a", value, f"measured at {touchpoints or 0:,} touchpoints; the target is at 10M")
    return target.compare(value, f"at {touchpoints:,} touchpoints")


def _beats_peer(target: BenchTarget, results: dict[str, dict[str, Any]], ctx: BenchContext) -> Verdict:
    ours = results.get("embedded", {}).get("events_per_s")
    theirs = results.get("peer", {}).get("pm4py_events_per_s")
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float):
        return Verdict("n/a", None, "needs both embedded and peer in the same run")
    return target.compare(round(ours / theirs, 3), f"{ours:,.0f} vs pm4py {theirs:,.0f} events/s")


LATENCY_RATE = 5_000


def _at_latency_rate(target: BenchTarget, results: dict[str, dict[str, Any]], ctx: BenchContext) -> Verdict:
    figures = results.get("latency", {})
    rate = figures.get("rate")
    achieved = figures.get("achieved_rate")
    value = figures.get(target.figure)
    if not isinstance(rate, int | float) or rate < LATENCY_RATE:
        return Verdict("n/a", value, f"measured at {rate or 0:,.0f} events/s; the target is at 5,000")
    # A producer that fell behind the pace measured a lighter load than the target's.
    if isinstance(achieved, int | float) and achieved < 0.95 * LATENCY_RATE:
        return Verdict("n/a", value, f"the producer held {achieved:,.0f} events/s; the target is at 5,000")
    return target.compare(value, f"at {rate:,.0f} events/s (held {achieved or 0:,.0f})")


QUERY_NAMES = ("funnel", "dropoff", "channel_switch", "path_variants", "moments_of_truth")

TARGETS: tuple[BenchTarget, ...] = (
    BenchTarget("embedded end to end ≥ 200k events/s", "embedded", "events_per_s", ">=", 200_000, "events/s"),
    BenchTarget(
        "10M events from 1M customers ≤ 2 min", "embedded", "wall_s", "<=", 120, "s", judge=_at_scale
    ),
    BenchTarget(
        "10M events ≤ 4 GB peak RSS", "embedded", "tree_peak_rss_mb", "<=", 4096, "MB", judge=_at_scale
    ),
    # The stream targets (processors/bench/stream.py, docs/bench-stream.md); n/a where it is absent.
    BenchTarget(
        "one worker ≥ 50% of the bare consumer", "stream", "ratio", ">=", 0.5, "×", judge=_one_worker
    ),
    BenchTarget(
        "p95 latency ≤ 2 s at 5,000 events/s", "latency", "p95_ms", "<=", 2000, "ms", judge=_at_latency_rate
    ),
    *(
        BenchTarget(
            f"{name} query ≤ 1 s at 10M touchpoints",
            "queries",
            f"{name}_median_s",
            "<=",
            1.0,
            "s",
            judge=_at_query_scale,
        )
        for name in QUERY_NAMES
    ),
    BenchTarget(
        "faster than pm4py on the same log (ratio ≥ 1)", "peer", "speedup", ">=", 1.0, "×", judge=_beats_peer
    ),
)


# ------------------------------------------------------------------ machine and versions


def machine() -> dict[str, Any]:
    """Where the figures came from: CPU, cores, memory, OS, Python, and how busy the machine was."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    memory_gb = None
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.M)
        memory_gb = round(int(match.group(1)) / 1024 / 1024, 1) if match else None
    except OSError:
        pass
    return {
        "cpu_model": model or platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit(repo: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


# ------------------------------------------------------------------ the run


@dataclass
class BenchRun:
    """Everything one `journeys bench` produced."""

    ctx: BenchContext
    dataset: Dataset
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: list[tuple[BenchTarget, Verdict]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)


def parse_count(text: str) -> int:
    """`1M`, `10M`, `200k`, `2,000`, `1.5m` or a plain number."""
    cleaned = text.strip().replace(",", "").replace("_", "").lower()
    factor = 1
    if cleaned and cleaned[-1] in "kmg":
        factor = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}[cleaned[-1]]
        cleaned = cleaned[:-1]
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not a count (use e.g. 200k, 1M, 10M)") from None
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return round(value * factor)


def run_bench(
    events: int,
    *,
    only: Sequence[str] | None = None,
    out: Path = Path("bench/results.json"),
    workdir: Path | None = None,
    cache: Path = Path("bench/data"),
    keep: bool = False,
    seed: int = 7,
    mix: str | None = None,
    quick: bool = False,
    query_touchpoints: int | None = None,
    replay: str = DEFAULT_REPLAY,
    console: Console | None = None,
    repo: Path | None = None,
) -> BenchRun:
    """Generate (or reuse) the dataset, run the selected measurements, judge the targets, write `out`.

    `mix` is the demo generator's population mix; None: `short` (about 10 events
    per customer) from 10M events on, as the scale target says, else `demo`.
    `replay` is the order the stream measurements produce the records in (`REPLAYS`).
    """
    console = console or Console()
    available = measurements(query_touchpoints)
    selected = list(available) if not only else list(only)
    unknown = [name for name in selected if name not in available]
    if unknown:
        raise ValueError(f"unknown measurement(s) {unknown}; choose from {', '.join(available)}")
    if replay not in REPLAYS:
        raise ValueError(f"unknown replay order {replay!r}; choose one of {', '.join(REPLAYS)}")
    mix = mix_for(events, mix)
    started_at = datetime.now(UTC)
    machine_info = machine()
    own_workdir = workdir is None
    if workdir is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="work-", dir=out.parent))
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"bench: preparing about {events:,} demo events, {mix} mix (cache {cache}) …")
    dataset = prepare(events, cache.absolute(), seed=seed, mix=mix)
    console.print(
        f"bench: {dataset.leaf_events:,} events in {dataset.records:,} records from {dataset.customers:,} "
        f"customers ({'cached' if dataset.cached else f'generated in {dataset.generation_s:.1f}s'})"
    )
    ctx = BenchContext(
        events=events,
        workdir=workdir,
        dataset=dataset.directory,
        records=dataset.records,
        leaf_events=dataset.leaf_events,
        customers=dataset.customers,
        pii_key=secrets.token_hex(32),
        quick=quick,
        mix=mix,
        replay=replay,
    )
    run = BenchRun(ctx=ctx, dataset=dataset)
    try:
        for name in selected:
            console.print(f"bench: {name} …")
            began = time.perf_counter()
            try:
                figures = available[name](ctx)
            except Exception as exc:  # one failing measurement must not lose the others
                figures = {"error": f"{type(exc).__name__}: {exc}"}
                console.print(f"[bold red]bench: {name} failed[/]: {figures['error']}")
            figures["harness_s"] = round(time.perf_counter() - began, 3)
            run.results[name] = figures
    finally:
        if own_workdir and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    run.verdicts = [(target, target.verdict(run.results, ctx)) for target in TARGETS]
    machine_info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run.document = {
        "schema": SCHEMA,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "command": _command(events, selected, quick, mix, replay),
        "git": git_commit(repo or Path(__file__).resolve().parents[2]),
        "machine": machine_info,
        "versions": versions(),
        "config": {
            "events": events,
            "seed": seed,
            "mix": mix,
            "replay": replay,
            "quick": quick,
            "measurements": selected,
            "workdir": str(workdir) if keep or not own_workdir else None,
        },
        "dataset": {k: v for k, v in asdict(dataset).items() if k != "directory"}
        | {"directory": str(dataset.directory)},
        "measurements": run.results,
        "targets": [
            {
                "name": target.name,
                "measurement": target.measurement,
                "figure": target.figure,
                "op": target.op,
                "threshold": target.threshold,
                "unit": target.unit,
                "value": verdict.value,
                "status": verdict.status,
                "note": verdict.note,
            }
            for target, verdict in run.verdicts
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(run.document, option=orjson.OPT_INDENT_2) + b"\n")
    print_tables(run, console)
    console.print(f"bench: wrote {out}")
    return run


def _command(events: int, selected: Sequence[str], quick: bool, mix: str, replay: str) -> str:
    parts = ["journeys", "bench", "--events", str(events)]
    if mix != mix_for(events):
        parts += ["--mix", mix]
    if replay != DEFAULT_REPLAY:
        parts += ["--replay", replay]
    if selected != list(measurements()):
        parts += ["--only", ",".join(selected)]
    if quick:
        parts.append("--quick")
    return " ".join(parts)


# ------------------------------------------------------------------ output


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.2f}"
        return f"{value:.4f}"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def print_tables(run: BenchRun, console: Console) -> None:
    """The figures of every measurement, then each target with its verdict."""
    machine_info = run.document.get("machine", {})
    figures = Table(
        "measurement",
        "figure",
        "value",
        title=(
            f"journeys bench: {run.ctx.leaf_events:,} events, {run.ctx.customers:,} customers "
            f"({run.ctx.mix} mix) on "
            f"{machine_info.get('cores')} cores ({machine_info.get('cpu_model')})"
        ),
    )
    for name, values in run.results.items():
        for key, value in values.items():
            figures.add_row(name, key, _fmt(value))
    console.print(figures)
    targets = Table("target", "measured", "threshold", "status", "note", title="Targets")
    colours = {"pass": "green", "fail": "red", "n/a": "yellow"}
    for target, verdict in run.verdicts:
        targets.add_row(
            target.name,
            _fmt(verdict.value),
            f"{target.op} {_fmt(target.threshold)} {target.unit}",
            f"[{colours[verdict.status]}]{verdict.status}[/]",
            verdict.note,
        )
    console.print(targets)
