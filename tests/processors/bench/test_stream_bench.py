"""The stream and latency benchmarks on a tiny demo dataset: sane figures, and every event arrived.

Real processes throughout: a Tansu broker, a `journeys worker` and the probe
sink (which holds the benchmark's chDB path, so this pytest process never opens
it). The expected events come from the pure core run here over the same
records, independently of the worker's own counters the benchmark uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from ingest.files import read_records
from ingest.pipeline import parse_records
from ingest.records import RawRecord
from journeys.live import LiveReconstruction
from journeys.reconstruct import Admission, Reconstruction
from journeys.touchpoint import Touchpoint
from processors.bench.stream import (
    LocalContext,
    ObservedClient,
    dataset_inputs,
    local_context,
    measure_latency,
    measure_stream,
    py_spy,
    replay_records,
    steady_window,
    worker_context,
)
from processors.config import Settings
from processors.embedded import ingest_context
from processors.sinks import clickhouse as tables
from processors.storage import connect, migrate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> LocalContext:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JOURNEYS_PII_KEY", "test-pii-key-0123456789abcdef")
        return local_context(tmp_path_factory.mktemp("bench"), customers=60, quick=True)


def new_events(ctx: LocalContext) -> int:
    """Events the core admits as new from the dataset: what must be visible in ClickHouse."""
    settings = Settings.load(dsn="chdb://unused")
    records = [record for path in dataset_inputs(ctx.dataset) for record in read_records(path)]
    touchpoints = [
        outcome
        for outcome in parse_records(records, ingest_context(settings, create_key=False))
        if isinstance(outcome, Touchpoint)
    ]
    reconstruction = Reconstruction(settings.rules(), settings.identity, settings.journey)
    return reconstruction.admit_all(touchpoints)[Admission.NEW]


def test_the_time_replay_is_the_file_replay_in_event_time_order(ctx: LocalContext) -> None:
    by_files = list(replay_records(dataclasses.replace(ctx, replay="files")))  # type: ignore[arg-type]
    by_time = list(replay_records(dataclasses.replace(ctx, replay="time")))  # type: ignore[arg-type]

    # The same records, broken ones included, each exactly once; in another order.
    assert Counter(by_time) == Counter(by_files) and len(by_time) == ctx.records
    assert by_time != by_files
    context = worker_context(ctx.pii_key)

    def event_time(record: RawRecord) -> datetime | None:
        outcomes = parse_records([record], context)
        return min((o.occurred_at for o in outcomes if isinstance(o, Touchpoint)), default=None)

    times = [event_time(record) for record in by_time]
    timed = [moment for moment in times if moment is not None]
    assert timed == sorted(timed)
    # The demo's broken records (no event time): each right behind the record before it in its
    # file, or, first in its file, ahead of every timed record.
    broken = [record for record, moment in zip(by_time, times, strict=True) if moment is None]
    assert len(broken) >= 3
    before = {
        record: previous
        for path in dataset_inputs(ctx.dataset)
        for previous, record in pairwise(read_records(path))
    }
    first_timed = next(index for index, moment in enumerate(times) if moment is not None)
    for record in broken:
        index = by_time.index(record)
        if record in before:
            assert by_time[index - 1] == before[record], record.origin
        else:
            assert index < first_timed, record.origin


def test_one_worker_streams_every_event_into_clickhouse(ctx: LocalContext, pii_key: str) -> None:
    figures = measure_stream(ctx)  # type: ignore[arg-type]

    expected = new_events(ctx)
    assert expected > 0
    assert figures["events_visible"] == figures["touchpoints_visible"] == figures["touchpoints"] == expected
    assert figures["replay"] == "time" and figures["order_s"] > 0
    assert figures["accounted"] is True
    assert figures["journeys_visible"] > 0
    assert figures["workers"] == 1
    assert figures["records"] == ctx.records and figures["events"] == ctx.leaf_events
    for name in ("seconds", "startup_s", "events_per_s", "bare_events_per_s", "ratio"):
        assert 0 < figures[name] < math.inf, name
    assert figures["records_per_s"] == pytest.approx(figures["ratio"] * figures["bare_events_per_s"])
    assert (
        0 < figures["reconstruct_busy_s"] < figures["seconds"]
        and figures["reconstruct_touchpoints_per_s"] > 0
    )


def test_several_workers_stream_every_event_into_clickhouse_together(
    ctx: LocalContext, pii_key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """JOURNEYS_BENCH_WORKERS=2: both workers' counters count, and what is visible is what the core
    admits, as with one."""
    monkeypatch.setenv("JOURNEYS_BENCH_WORKERS", "2")
    own = dataclasses.replace(ctx, workdir=tmp_path)  # a chDB path of its own: a run counts all it holds
    figures = measure_stream(own)  # type: ignore[arg-type]

    assert figures["workers"] == 2 and figures["assignments"] >= 2
    assert figures["events_visible"] == figures["touchpoints"] == new_events(ctx)
    assert figures["accounted"] is True and figures["records"] == ctx.records
    logs = sorted(path.name for path in (tmp_path / "stream-throughput").glob("worker*.log"))
    assert logs == ["worker-2.log", "worker.log"]


def test_latency_is_measured_for_every_event_produced_at_the_steady_rate(
    ctx: LocalContext, pii_key: str
) -> None:
    figures = measure_latency(ctx)  # type: ignore[arg-type]

    assert figures["missing"] == 0 and figures["replay"] == "time"
    assert figures["latency_records"] > 0 and figures["latency_events"] >= figures["latency_records"] // 2
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    # Paced in leaf events, not records: the producer holds the rate it was asked for.
    assert figures["achieved_rate"] == pytest.approx(figures["rate"], rel=0.1)
    assert figures["latency_events"] / figures["latency_seconds"] == pytest.approx(figures["rate"], rel=0.25)


def test_the_latency_window_is_paced_in_events_not_records() -> None:
    records = [RawRecord(raw=str(n).encode(), origin=f"t:{n}") for n in range(6)]
    events = {b"0": 1, b"1": 5, b"2": 1, b"3": 1, b"4": 2, b"5": 1}

    window, due, total = steady_window(records, rate=2.0, seconds=4.0, events_of=lambda r: events[r.raw])

    assert [r.raw for r in window] == [b"0", b"1", b"2", b"3"]  # 8 events: 4 s at 2 events/s
    assert due == [0.0, 0.5, 3.0, 3.5] and total == 8


def test_the_dataset_files_are_read_in_ingest_order(tmp_path: Path) -> None:
    for name in ("social.jsonl", "web.jsonl", "calls.csv"):
        (tmp_path / name).write_text("")
    assert [path.name for path in dataset_inputs(tmp_path)] == ["web.jsonl", "calls.csv", "social.jsonl"]
    with pytest.raises(FileNotFoundError):
        dataset_inputs(tmp_path / "nothing")


def test_an_event_counts_as_visible_once_its_journey_row_is_in(dsn: str, tmp_path: Path) -> None:
    """The sink writes a batch's touchpoints before the journey rows that count them: the latency of
    an event is taken when the journey rows are in, not at its touchpoint row."""
    visit = Touchpoint(
        event_id="v-1",
        occurred_at=datetime(2026, 9, 1, tzinfo=UTC),
        received_at=datetime.now(UTC),
        channel="web",
        source="segment",
        action="Page Viewed",
        identifiers=[{"type": "anonymous_id", "value": "a-1"}],
    )
    settings = Settings.load(dsn="chdb://unused")
    live = LiveReconstruction(Reconstruction(settings.rules(), settings.identity, settings.journey))
    ((journey,),) = live.admit_batch([visit]).journeys.values()
    now = datetime.now(UTC)
    client = connect(dsn)
    migrate(client)
    observed = ObservedClient(client, tmp_path / "progress.jsonl")
    store = tables.InsertContexts(observed)  # as the sink inserts: through reused insert contexts

    tables._insert(
        store,
        "touchpoint_versions",
        tables.TOUCHPOINT_COLUMNS,
        tables.touchpoint_rows(live.reconstruction, journey, 1, now),
    )
    assert observed.touchpoints == {"v-1"} and observed.latencies == []
    tables._insert(store, "journey_versions", tables.JOURNEY_COLUMNS, [tables.journey_row(journey, 1, now)])
    ((received_at, latency_ms),) = observed.latencies
    assert received_at == tables._ms(visit.received_at) and latency_ms >= 0


def test_the_profiler_is_found_beside_the_interpreter_or_its_absence_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv-bin"
    venv.mkdir()
    monkeypatch.setattr("sys.executable", str(venv / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="JOURNEYS_BENCH_PROFILE is set but py-spy is not installed"):
        py_spy()
    (venv / "py-spy").write_text("")
    assert py_spy() == str(venv / "py-spy")  # a venv's tools need not be on PATH
