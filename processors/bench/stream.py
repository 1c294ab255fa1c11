"""Stream and latency benchmarks: one `journeys worker` process against a real Kafka-protocol broker.

Both measurements start their own Tansu broker (`processors.stream.broker`),
a `journeys worker` process and a ClickHouse sink process, and read ClickHouse
only inside that sink process: chDB lets one process hold a data path, and the
process running the benchmark (pytest, `journeys bench`) may already hold one.

The dataset's raw records are produced in one of two orders (`BenchContext.replay`,
`--replay`), chosen and paid for before any clock starts (`replay_records`):

- `time` (the default): every file's records merged into one sequence by event
  time (`ingest.producer.records_in_event_time`), as a live feed arrives;
- `files`: one file after another (web, email, phone, calls, social), as
  `journeys produce` replays exports, so each customer's later channels arrive
  behind its whole web history. Every figure before round 5 used this order.

**stream** (`measure_stream`): the dataset is produced to the raw topics with
the project's producer (`ingest.producer.produce_sequence`) before any clock
starts. Then, in the same run:

1. a bare aiokafka consumer (no group, partitions assigned) reads every raw
   record and decodes it with orjson: records/s from the first record it
   received to the last;
2. the sink process and one worker start; the clock runs from the first record
   the worker read (it logs the moment once, `first record read`) to the
   moment the sink's insert that made the last event visible returned. The
   worker's start-up and group join come before that first record and are
   reported on their own (`startup_s`).

The ratio is the worker's raw records/s over the bare consumer's on the same
topics. "Every event arrived" is checked against the worker's own counters and
the dataset: every leaf event left the normalise stage as a touchpoint or a
dead letter, and the ClickHouse `events` and `touchpoints` views hold exactly
the events the reconstruct stage admitted (neither duplicates nor refusals).

**latency** (`measure_latency`): with the worker and sink running and warmed
up (a first slice of the records, in the replay order, made visible), the
records after it are produced at a steady rate for a fixed time. The producer
stamps each record's `received_at` header when it hands it to the Kafka
client; that stamp travels with the touchpoint into ClickHouse. The sink
process wraps its real ClickHouse client (`ObservedClient`) and, when an
insert into `touchpoint_versions` (the rows of the `touchpoints` view, written
together with their `journeys` rows) returns, takes `now - received_at` for
each event seen there for the first time: the moment the insert returns the
rows are visible to any query. This costs a set lookup per row, so the
measurement itself does not poll ClickHouse or slow the sink. Producer and
sink run on the same machine, so both stamps come from one clock. p50/p95/p99
are over every event produced in the steady window; events not visible by the
end are reported (`missing`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from processors.bench.harness import DEFAULT_REPLAY, REPLAYS
from processors.stream.metrics import parse_metrics

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from ingest.context import IngestContext
    from ingest.records import RawRecord
    from ingest.topics import Topics
    from processors.bench.harness import BenchContext

DATASET_FILES = ("web.jsonl", "email.jsonl", "twilio.jsonl", "calls.csv", "social.jsonl")
# Faust's default group timeouts make the first join take about 30 s on Tansu; these take a few.
GROUP_TIMEOUTS = {"--session-timeout": "4", "--heartbeat-interval": "1", "--rebalance-timeout": "4"}
LATENCY_RATE = 5000  # events/s the latency target is set at
LATENCY_SECONDS = 10.0
QUICK_RATE = 300
QUICK_SECONDS = 3.0
WARMUP_RECORDS = 200  # produced and made visible before the latency clock starts
SINK_MAX_SECONDS = 0.25  # the sink's longest wait before writing a partial batch
RATE_ENV = "JOURNEYS_BENCH_LATENCY_RATE"  # events/s of the latency run, instead of the target's
PROFILE_ENV = "JOURNEYS_BENCH_PROFILE"  # a directory: run the worker and sink under `py-spy record` into it
WORKER_ARGS_ENV = "JOURNEYS_BENCH_WORKER_ARGS"  # extra `journeys worker` options, for trying settings
WORKERS_ENV = "JOURNEYS_BENCH_WORKERS"  # worker processes in the stream run (default 1: the target's)


def py_spy() -> str:
    """The py-spy executable: beside this interpreter (a venv not on PATH), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError(f"${PROFILE_ENV} is set but py-spy is not installed: pip install py-spy")
    return found


def dataset_inputs(dataset: Path) -> list[Path]:
    """The dataset's provider files in the order an ingest run reads them."""
    found = [dataset / name for name in DATASET_FILES if (dataset / name).exists()]
    if not found:
        raise FileNotFoundError(f"no demo input files ({', '.join(DATASET_FILES)}) in {dataset}")
    return found


def replay_records(ctx: BenchContext) -> Iterable[RawRecord]:
    """The dataset's raw records in the order the measurements produce them (`ctx.replay`).

    `files`: lazily, one file after another. `time`: ordered by event time, a
    list: the sort reads and parses every record first (for 1M events about
    850 MB and 25 s, `records_in_event_time`), so call this before any clock.
    """
    from ingest.files import read_records
    from ingest.producer import records_in_event_time

    paths = dataset_inputs(ctx.dataset)
    if ctx.replay == "files":
        return (record for path in paths for record in read_records(path))
    if ctx.replay == "time":
        return records_in_event_time(paths, worker_context(ctx.pii_key))
    raise ValueError(f"unknown replay order {ctx.replay!r}; choose one of {', '.join(REPLAYS)}")


def leaf_events(record: RawRecord, context: IngestContext) -> int:
    """The leaf events of one record, as `journeys run` counts records read: every touchpoint and
    dead letter the pipeline makes of it (a SendGrid POST holds several, a broken record one)."""
    from ingest.pipeline import parse_records

    return sum(1 for _ in parse_records((record,), context))


def worker_context(pii_key: str) -> IngestContext:
    """The ingest context the benchmark's worker parses with: the settings it loads, under `pii_key`."""
    from processors.config import Settings
    from processors.embedded import ingest_context

    return ingest_context(Settings.load(dsn="chdb://unused"), create_key=False, pii_key=pii_key.encode())


# --------------------------------------------------------------------------- the bare consumer


async def _bare_consume(
    bootstrap: str, topics: list[str], expected: int, timeout: float
) -> tuple[int, float]:
    """Read and orjson-decode every record of `topics`; (records, seconds from the first to the last)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata for every topic
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # The clock starts before the first fetch: the consumer prefetches whole partitions in
        # the background, so starting at the first record received would leave the fetching
        # out and time only the decoding.
        count, first, last = 0, time.perf_counter(), 0.0
        deadline = time.monotonic() + timeout
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)  # the worker's batch size
            if not batches:
                continue
            for records in batches.values():
                for record in records:
                    # Call-centre CSV rows, form-encoded Twilio bodies and the dataset's broken
                    # records are not JSON: the decoder still reads them, as a worker's would.
                    with contextlib.suppress(orjson.JSONDecodeError):
                        orjson.loads(record.value)
                count += len(records)
            last = time.perf_counter()
    finally:
        await consumer.stop()
    return count, last - first


def bare_consumer_rate(bootstrap: str, topics: list[str], expected: int, timeout: float = 120.0) -> dict:
    """The bare aiokafka consumer's figures on these topics (records it read, seconds, records/s)."""
    count, seconds = asyncio.run(_bare_consume(bootstrap, topics, expected, timeout))
    if count < expected:
        raise RuntimeError(f"the bare consumer read {count:,} of {expected:,} records in {timeout:.0f} s")
    return {"bare_records": count, "bare_seconds": seconds, "bare_records_per_s": count / max(seconds, 1e-9)}


# --------------------------------------------------------------------------- the sink process


class ObservedClient:
    """The sink's real ClickHouse client, noting what each insert made visible and when.

    Every insert is passed through unchanged; after it returns, the distinct
    event ids written to `events` and `touchpoint_versions` and the dead-letter
    rows are counted, a progress line is appended to `progress` (for the
    benchmark to see how far the stream has got without querying ClickHouse),
    and the latency of each event seen in `touchpoint_versions` for the first
    time is taken from its `received_at` column, at the end of the next insert
    into `journey_versions`: the sink writes a batch's touchpoints before the
    journey rows that count them, and an event is visible in `journeys` once
    both are in.
    """

    def __init__(self, client: Client, progress: Path) -> None:
        self._client = client
        self._progress = progress.open("a", buffering=1)
        self.events: set[str] = set()
        self.touchpoints: set[str] = set()
        self.dead_letters = 0
        self.latencies: list[tuple[int, int]] = []  # (received_at ms, ms until visible), first sight only
        self._unjourneyed: list[int] = []  # received_at ms of touchpoints whose journey rows are not in yet

    def insert(
        self, table: str | None = None, data: Any = None, column_names: Any = None, **kwargs: Any
    ) -> Any:
        context = kwargs.get("context")
        if context is not None:  # the sink's reused insert context (`InsertContexts`) names the table, quoted
            table, column_names = context.table.rsplit(".", 1)[-1].strip("`"), context.column_names
            kwargs["column_oriented"] = context.column_oriented
        columns = list(column_names or ())
        # What to count, read before the insert (the sink hands over columns, which a store may empty).
        if kwargs.get("column_oriented"):
            named = dict(zip(columns, data, strict=True))
            rows = len(data[0]) if data else 0
        else:
            named = {name: [row[i] for row in data] for i, name in enumerate(columns)}
            rows = len(data)
        event_ids = list(named.get("event_id", ()))
        received_at = list(named.get("received_at", ()))
        if context is not None:
            result = self._client.insert(data=data, context=context)
        else:
            result = self._client.insert(table, data, column_names=column_names, **kwargs)
        now_ms = time.time() * 1000
        if table == "events":
            self.events.update(event_ids)
        elif table == "touchpoint_versions":
            seen = self.touchpoints
            for event_id, received in zip(event_ids, received_at, strict=True):
                if event_id not in seen:
                    seen.add(event_id)
                    self._unjourneyed.append(received)
        elif table == "journey_versions":
            self.latencies += [(received, round(now_ms - received)) for received in self._unjourneyed]
            self._unjourneyed.clear()
            return result
        elif table == "dead_letter_log":
            self.dead_letters += rows
        else:
            return result
        line = {
            "t": now_ms / 1000,
            "events": len(self.events),
            "touchpoints": len(self.touchpoints),
            "dead_letters": self.dead_letters,
        }
        self._progress.write(json.dumps(line) + "\n")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def run_probe_sink(dsn: str, bootstrap: str, prefix: str, out: Path) -> None:
    """`journeys sink` with an `ObservedClient` until SIGTERM; then counts the views and writes a summary.

    Writes `out/progress.jsonl` while running and `out/summary.json` at the end
    (the sink's figures, the views' row counts and the latencies).
    """
    from ingest.topics import Topics
    from processors.logs import configure
    from processors.storage import connect, migrate
    from processors.stream.sink import SinkConfig, run_sink

    configure("json")  # the sink's own lines (batches written, retries) in sink.log
    out.mkdir(parents=True, exist_ok=True)
    client = connect(dsn)
    migrate(client)
    observed = ObservedClient(client, out / "progress.jsonl")
    config = SinkConfig(
        bootstrap=bootstrap,
        topics=Topics(prefix),
        max_seconds=SINK_MAX_SECONDS,
        metrics_port=None,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    (out / "ready").touch()
    summary = run_sink(lambda: observed, config)  # type: ignore[arg-type,return-value]

    def scalar(query: str) -> int:
        return int(client.query(query).result_rows[0][0])

    figures = {
        "sink_messages": summary.messages,
        "sink_batches": summary.batches,
        "events_visible": scalar("SELECT count() FROM events"),
        "touchpoints_visible": scalar("SELECT uniqExact(event_id) FROM touchpoints"),
        "journeys_visible": scalar("SELECT count() FROM journeys"),
        "dead_letters_visible": scalar("SELECT count() FROM dead_letters"),
        "latencies": observed.latencies,
    }
    (out / "summary.json").write_bytes(orjson.dumps(figures))


# --------------------------------------------------------------------------- processes


@dataclass
class Stack:
    """A worker and a probe sink on one broker and topic prefix, with their logs under `workdir`."""

    bootstrap: str
    prefix: str
    pii_key: str
    workdir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)
    sink: subprocess.Popen | None = None
    worker_ports: list[int] = field(default_factory=list)
    worker_started: float = 0.0  # when the first worker was started
    profilers: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    @property
    def sink_dir(self) -> Path:
        return self.workdir / "sink"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env |= {"JOURNEYS_TOPIC_PREFIX": self.prefix, "JOURNEYS_PII_KEY": self.pii_key}
        for name in ("JOURNEYS_DB", "JOURNEYS_PII_KEY_FILE", "JOURNEYS_METRICS_PORT"):
            env.pop(name, None)
        return env

    def _log(self, name: str) -> Any:
        handle = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(handle)
        return handle

    def start_sink(self) -> None:
        """The probe sink on its own chDB path; returns once it has opened and migrated it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        dsn = f"chdb://{self.workdir / 'chdb'}?database=bench"
        command = [sys.executable, "-m", "processors.bench.stream", "probe-sink"]
        command += ["--dsn", dsn, "--bootstrap", self.bootstrap, "--prefix", self.prefix]
        command += ["--out", str(self.sink_dir)]
        log = self._log("sink")
        self.sink = subprocess.Popen(command, env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        self._wait(lambda: (self.sink_dir / "ready").exists(), 60, "the sink to open ClickHouse")
        self._profile("sink", self.sink)

    @staticmethod
    def worker_name(index: int) -> str:
        """`worker`, then `worker-2`, `worker-3` …: their logs are `<name>.log`."""
        return "worker" if index == 0 else f"worker-{index + 1}"

    @property
    def worker_names(self) -> list[str]:
        return [self.worker_name(index) for index in range(len(self.workers))]

    def start_workers(self, count: int = 1) -> None:
        """`count` worker processes at once (one group generation, not a rebalance per late joiner)."""
        from processors.stream.broker import free_port

        if count < 1:
            raise ValueError(f"a stream run needs at least one worker, not {count}")
        self.worker_started = time.time()
        for index in range(len(self.workers), len(self.workers) + count):
            name = self.worker_name(index)
            port = free_port()
            command = [sys.executable, "-c", "from processors.cli import app; app()", "worker"]
            command += ["--kafka", self.bootstrap, "--metrics-port", str(port)]
            command += ["--data-dir", str(self.workdir / name), "--log-format", "json"]
            command += [part for option in GROUP_TIMEOUTS.items() for part in option]
            command += shlex.split(os.environ.get(WORKER_ARGS_ENV, ""))
            process = subprocess.Popen(
                command, env=self._env(), stdout=self._log(name), stderr=subprocess.STDOUT
            )
            self.workers.append(process)
            self.worker_ports.append(port)
            self._profile(name, process)

    def _profile(self, name: str, process: subprocess.Popen) -> None:
        """With $JOURNEYS_BENCH_PROFILE set, py-spy samples the process until it exits (collapsed stacks)."""
        directory = os.environ.get(PROFILE_ENV)
        if directory:
            output = Path(directory) / f"{self.workdir.name}-{name}.txt"
            spy = [py_spy(), "record", "--format", "raw", "--rate", "100", "-o", str(output)]
            self.profilers.append(
                subprocess.Popen(
                    [*spy, "--pid", str(process.pid)],
                    stdout=self._log(f"py-spy-{name}"),
                    stderr=subprocess.STDOUT,
                )
            )

    def _wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for name, process in (*zip(self.worker_names, self.workers, strict=True), ("sink", self.sink)):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(
                        f"the {name} exited ({process.returncode}) waiting for {what}\n" + self.log_tail()
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.workdir.glob("*.log"))
        )

    def metrics(self) -> dict[str, float]:
        """The workers' Prometheus pages as {series: value}, summed over the workers; empty until
        every worker's web server is up."""
        total: dict[str, float] = {}
        for port in self.worker_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                    text = page.read().decode()
            except OSError:
                return {}
            for series, value in parse_metrics(text).items():
                total[series] = total.get(series, 0.0) + value
        return total

    def _worker_lines(self) -> Iterator[str]:
        for name in self.worker_names:
            yield from (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()

    def progress(self) -> list[dict[str, float]]:
        path = self.sink_dir / "progress.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def first_read_at(self) -> float:
        """When a worker first read a record (each logs `first record read` once)."""
        firsts = [
            float(orjson.loads(line)["first_read_at"])
            for line in self._worker_lines()
            if '"first record read"' in line
        ]
        if not firsts:
            raise RuntimeError("no worker logged its first record\n" + self.log_tail())
        return min(firsts)

    def assignments(self) -> int:
        """Partition assignments the workers logged: one each, unless the group rebalanced."""
        return sum(1 for line in self._worker_lines() if "assigned partitions:" in line)

    def reconstruct_busy(self) -> tuple[int, float]:
        """(touchpoints, seconds) the reconstruct stage spent folding and publishing, from its log lines."""
        touchpoints, seconds = 0, 0.0
        for line in self._worker_lines():
            if '"fold_s"' in line:
                entry = orjson.loads(line)
                touchpoints += entry["touchpoints"]
                seconds += entry["fold_s"] + entry["publish_s"]
        return touchpoints, seconds

    def wait_drained(self, raw_records: int, timeout: float) -> tuple[dict[str, float], dict[str, float]]:
        """Wait until every produced raw record went through both stages and the sink wrote the result.

        Returns the worker's final counters and the first progress line at
        which the sink had made everything visible (its `t` is when).
        """
        found: dict[str, Any] = {}

        def done() -> bool:
            m = self.metrics()
            counters = _counters(m)
            if (
                counters["normalise_in"] < raw_records
                or counters["reconstruct_in"] < counters["normalise_out"]
            ):
                return False
            for line in self.progress():
                if (
                    line["events"] >= counters["admitted"]
                    and line["touchpoints"] >= counters["admitted"]
                    and line["dead_letters"] >= counters["dead_letters"]
                ):
                    found.update(counters=counters, line=line)
                    return True
            return False

        self._wait(done, timeout, f"{raw_records:,} raw records to be visible in ClickHouse")
        return found["counters"], found["line"]

    def stop(self) -> dict[str, Any]:
        """Stop the workers, then the sink; returns the sink's summary (views' counts, latencies)."""
        for process in (*self.workers, self.sink):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for profiler in self.profilers:
            profiler.wait(timeout=30)  # writes its output once its process has exited
        for handle in self.logs:
            handle.close()
        summary = self.sink_dir / "summary.json"
        if not summary.exists():
            raise RuntimeError("the sink wrote no summary\n" + self.log_tail())
        return orjson.loads(summary.read_bytes())


def _counters(metrics: dict[str, float]) -> dict[str, float]:
    def get(name: str, stage: str) -> float:
        return metrics.get(f'{name}{{stage="{stage}"}}', 0.0)

    normalise_in = get("journeys_records_in_total", "normalise")
    reconstruct_in = get("journeys_records_in_total", "reconstruct")
    letters_normalise = get("journeys_dead_letters_total", "normalise")
    letters_reconstruct = get("journeys_dead_letters_total", "reconstruct")
    duplicates = get("journeys_duplicates_total", "reconstruct")
    return {
        "normalise_in": normalise_in,
        "normalise_out": get("journeys_records_out_total", "normalise"),
        "reconstruct_in": reconstruct_in,
        "duplicates": duplicates,
        "dead_letters_normalise": letters_normalise,
        "dead_letters": letters_normalise + letters_reconstruct,
        # Every touchpoint the reconstruct stage took is new, a duplicate, or refused (a dead letter).
        "admitted": reconstruct_in - duplicates - letters_reconstruct,
    }


@contextlib.contextmanager
def _stack(ctx: BenchContext, name: str) -> Iterator[tuple[Stack, Topics]]:
    """A broker with this measurement's topics, and a Stack (not started) on them."""
    from ingest.kafka import ensure_topics
    from ingest.topics import Topics
    from processors.stream.broker import tansu_broker

    with tansu_broker() as bootstrap:
        topics = Topics(f"bench-{name}")
        ensure_topics(bootstrap, topics)
        stack = Stack(bootstrap, topics.prefix, ctx.pii_key, ctx.workdir / f"stream-{name}")
        try:
            yield stack, topics
        finally:
            for process in (*stack.workers, stack.sink):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()


# --------------------------------------------------------------------------- the measurements


def measure_stream(ctx: BenchContext) -> dict[str, Any]:
    """One worker's events/s from the broker into ClickHouse beside a bare consumer's on the same topics
    ($JOURNEYS_BENCH_WORKERS workers' instead, to see how the stack scales; the target is one's)."""
    from ingest.pii import PiiHasher
    from ingest.producer import produce_sequence

    began = time.perf_counter()
    records = replay_records(ctx)
    order_seconds = time.perf_counter() - began
    with _stack(ctx, "throughput") as (stack, topics):
        began = time.perf_counter()
        produced = produce_sequence(records, stack.bootstrap, topics, PiiHasher(ctx.pii_key))
        produce_seconds = time.perf_counter() - began
        del records  # a time-ordered list holds the whole dataset: not while the worker runs
        raw_records = sum(produced.by_topic.values())
        bare = bare_consumer_rate(stack.bootstrap, list(topics.all_raw), raw_records)

        workers = int(os.environ.get(WORKERS_ENV, "1"))
        stack.start_sink()
        stack.start_workers(workers)
        counters, line = stack.wait_drained(raw_records, timeout=120 + raw_records / 200)
        first = stack.first_read_at()
        views = stack.stop()
        folded, busy = stack.reconstruct_busy()
        assignments = stack.assignments()
    seconds = line["t"] - first
    records_per_s = raw_records / seconds
    return {
        "replay": ctx.replay,
        "workers": workers,
        # One per worker when they joined the group together; more: a rebalance moved partitions.
        "assignments": assignments,
        "events": ctx.leaf_events,
        "records": raw_records,
        "touchpoints": int(counters["admitted"]),
        "duplicates": int(counters["duplicates"]),
        "dead_letters": int(counters["dead_letters"]),
        "order_s": order_seconds,
        "produce_seconds": produce_seconds,
        "startup_s": first - stack.worker_started,
        "seconds": seconds,
        "events_per_s": ctx.leaf_events / seconds,
        "records_per_s": records_per_s,
        "touchpoints_per_s": counters["admitted"] / seconds,
        "bare_events_per_s": bare["bare_records_per_s"],
        "bare_seconds": bare["bare_seconds"],
        "ratio": records_per_s / bare["bare_records_per_s"],
        # The reconstruct stage has one owner, so its own rate is the deployment's ceiling
        # however many workers normalise (docs/stream.md): touchpoints per second of its
        # fold + publish time.
        "reconstruct_busy_s": busy,
        "reconstruct_touchpoints_per_s": folded / busy if busy else math.nan,
        "events_visible": views["events_visible"],
        "touchpoints_visible": views["touchpoints_visible"],
        "journeys_visible": views["journeys_visible"],
        # Every leaf event left normalise as a touchpoint or a dead letter, and ClickHouse holds
        # exactly the events the reconstruct stage admitted.
        "accounted": (
            counters["normalise_out"] + counters["dead_letters_normalise"] == ctx.leaf_events
            and views["events_visible"] == counters["admitted"]
            and views["touchpoints_visible"] == counters["admitted"]
        ),
    }


def steady_window(
    records: Iterable[RawRecord], rate: float, seconds: float, events_of: Callable[[RawRecord], int]
) -> tuple[list[RawRecord], list[float], int]:
    """The first records that make `seconds` at `rate` leaf events/s, the second each is due at, and
    their events.

    Records carry different numbers of events (a SendGrid POST several, a page view one), so each
    is due when the events before it are. Paced by the dataset's average events per record
    instead, a window of page views ran at about 3,500 events/s when 5,000 were asked for."""
    window: list[RawRecord] = []
    due: list[float] = []
    events = 0
    for record in records:
        if events >= rate * seconds:
            break
        window.append(record)
        due.append(events / rate)
        events += events_of(record)
    return window, due, events


def paced(records: Iterable[RawRecord], due: Iterable[float], started: float) -> Iterator[RawRecord]:
    """The records, each handed on no earlier than its `due` second after `started`."""
    for record, at in zip(records, due, strict=True):
        ahead = started + at - time.perf_counter()
        if ahead > 0.002:  # sleep in slices of a few ms: sub-ms sleeps cost more than they pace
            time.sleep(ahead)
        yield record


def percentile(values: list[int], q: float) -> float:
    """The q-th percentile (nearest rank) of values; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))])


def measure_latency(ctx: BenchContext) -> dict[str, Any]:
    """Produced → visible in ClickHouse `journeys`: p50/p95/p99 at a steady rate (method: module doc)."""
    from ingest.kafka import make_producer
    from ingest.pii import PiiHasher
    from ingest.producer import ProduceSummary, produce_records

    rate = float(os.environ.get(RATE_ENV) or (QUICK_RATE if ctx.quick else LATENCY_RATE))
    wanted_seconds = QUICK_SECONDS if ctx.quick else LATENCY_SECONDS
    began = time.perf_counter()
    records = list(replay_records(ctx))
    order_seconds = time.perf_counter() - began
    warmup = records[:WARMUP_RECORDS]
    context = worker_context(ctx.pii_key)
    steady, due, steady_events = steady_window(
        records[WARMUP_RECORDS:], rate, wanted_seconds, lambda record: leaf_events(record, context)
    )
    if not steady:
        raise ValueError(f"the dataset has {len(records)} records: too few for a latency run")
    hasher, summary = PiiHasher(ctx.pii_key), ProduceSummary()
    with _stack(ctx, "latency") as (stack, topics):
        stack.start_sink()
        stack.start_workers()
        producer = make_producer(stack.bootstrap)
        try:
            produce_records(warmup, producer, topics, hasher, summary)
            producer.flush()
            stack.wait_drained(sum(summary.by_topic.values()), timeout=120)
            started = time.perf_counter()
            steady_from_ms = time.time() * 1000
            produce_records(paced(steady, due, started), producer, topics, hasher, summary)
            producer.flush()
            produce_seconds = time.perf_counter() - started
        finally:
            producer.close()
        raw_records = sum(summary.by_topic.values())
        counters, _ = stack.wait_drained(raw_records, timeout=120 + raw_records / 200)
        views = stack.stop()
    if summary.failed:
        raise RuntimeError(f"{summary.failed} records were not acknowledged: {summary.first_error}")
    latencies = [ms for received_at, ms in views["latencies"] if received_at >= steady_from_ms - 1]
    steady_admitted = int(counters["admitted"]) - sum(
        1 for received_at, _ in views["latencies"] if received_at < steady_from_ms - 1
    )
    return {
        "replay": ctx.replay,
        "order_s": order_seconds,
        "rate": rate,
        "achieved_rate": steady_events / produce_seconds,
        "latency_seconds": produce_seconds,
        "latency_records": len(steady),
        "latency_events": len(latencies),
        "missing": max(0, steady_admitted - len(latencies)),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": float(max(latencies, default=math.nan)),
    }


# --------------------------------------------------------------------------- running alone


@dataclass(frozen=True)
class LocalContext:
    """The harness's BenchContext fields, for running this module on its own (`python -m ...`)."""

    events: int
    workdir: Path
    dataset: Path
    records: int
    leaf_events: int
    customers: int
    pii_key: str
    quick: bool
    replay: str = DEFAULT_REPLAY


def local_context(
    workdir: Path, customers: int, quick: bool = False, seed: int = 7, replay: str = DEFAULT_REPLAY
) -> LocalContext:
    """A demo dataset of `customers` people under `workdir`, counted the way `journeys run` counts it."""
    from ingest.demo import generate
    from ingest.files import read_records
    from ingest.pipeline import parse_records
    from processors.config import Settings
    from processors.embedded import ingest_context

    pii_key = os.environ.get("JOURNEYS_PII_KEY") or "bench-pii-key-0123456789abcdef"
    os.environ["JOURNEYS_PII_KEY"] = pii_key
    files = generate(customers=customers, seed=seed).write(workdir / "dataset")
    records = [record for path in files.inputs() for record in read_records(path)]
    leaves = sum(
        1
        for _ in parse_records(records, ingest_context(Settings.load(dsn="chdb://unused"), create_key=False))
    )
    return LocalContext(
        leaves, workdir, files.directory, len(records), leaves, customers, pii_key, quick, replay
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m processors.bench.stream", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="generate a demo dataset and run both measurements")
    run.add_argument("--customers", type=int, default=1000)
    run.add_argument("--workdir", type=Path, default=Path(".journeys/bench-stream"))
    run.add_argument("--quick", action="store_true")
    run.add_argument("--only", choices=("stream", "latency"))
    run.add_argument(
        "--replay",
        choices=REPLAYS,
        default=DEFAULT_REPLAY,
        help="the order the records are produced in: by event time, or one file after another",
    )
    sink = commands.add_parser("probe-sink", help="(internal) the sink process of a measurement")
    sink.add_argument("--dsn", required=True)
    sink.add_argument("--bootstrap", required=True)
    sink.add_argument("--prefix", required=True)
    sink.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "probe-sink":
        run_probe_sink(args.dsn, args.bootstrap, args.prefix, args.out)
        return
    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)
    ctx = local_context(args.workdir, args.customers, args.quick, replay=args.replay)
    print(
        f"dataset: {ctx.records:,} records, {ctx.leaf_events:,} events, {ctx.customers:,} customers; "
        f"replay order: {ctx.replay}"
    )
    results: dict[str, Any] = {}
    if args.only in (None, "stream"):
        results["stream"] = measure_stream(ctx)  # type: ignore[arg-type]
        print(json.dumps(results["stream"], indent=1))
    if args.only in (None, "latency"):
        results["latency"] = measure_latency(ctx)  # type: ignore[arg-type]
        print(json.dumps(results["latency"], indent=1))
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
