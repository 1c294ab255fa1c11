"""The `journeys` command line.

Commands: `demo`, `run`, `sql`, `summary`, `migrate`, `unlink`, `bench`, … Every command
works on the embedded default (chDB under `./.journeys/`) unless `--db` or
`JOURNEYS_DB` names another database.
"""

from __future__ import annotations

import csv
import io
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.demo import DEFAULT_CUSTOMERS
from processors.config import ConfigError, Settings
from processors.runtime import WORKER_YOUNG_THRESHOLD, tune_gc_for_bulk
from processors.storage import StorageError, connect, json_default, migrate, plain_value

app = typer.Typer(
    name="journeys",
    help="Reconstruct multi-channel customer journeys (web, email, phone, social) into ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages carry paths and DSNs: never wrap them
out = Console()

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="DSN: chdb:///path?database=NAME, chdb://memory or http(s)://user:pw@host:port/db. "
        "Default: $JOURNEYS_DB or embedded chDB under ./.journeys/.",
    ),
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (identity, journeys, ingest sections).")
]
RulesOption = Annotated[
    Path | None, typer.Option("--rules", help="Phase rules YAML file (default: packaged rules).")
]


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _settings(db: str | None, config: Path | None, rules: Path | None = None) -> Settings:
    try:
        return Settings.load(config_path=config, dsn=db, rules_path=rules)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def run(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="JSON-lines, JSON or CSV files; .gz too. None: replay the stored event log and rewrite "
            "every journey (after an upgrade that adds journey columns).",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="segment, sendgrid, twilio, callcsv, social or meta (default: detect per record).",
        ),
    ] = None,
    rules: RulesOption = None,
    db: DbOption = None,
    config: ConfigOption = None,
    fail_on_dead_letters: Annotated[
        bool,
        typer.Option(help="Exit 1 when any record was dead-lettered (for pipelines that must be clean)."),
    ] = False,
) -> None:
    """Reconstruct journeys from files into ClickHouse.

    Exit codes: 0 all records accounted for; 1 records were dead-lettered and
    --fail-on-dead-letters was given, or every record was rejected; 2 usage or configuration error.
    """
    from ingest.pipeline import FORMATS
    from processors.embedded import run as run_files

    if format is not None and format not in FORMATS:
        _fail(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    settings = _settings(db, config, rules)
    try:
        with _progress() as progress:
            task = progress.add_task("records", total=None)
            summary = run_files(
                inputs or [], settings, format=format, progress=lambda n: progress.advance(task, n)
            )
    except (FileNotFoundError, ConfigError, StorageError) as exc:
        _fail(str(exc))
    _print_run(summary, settings.dsn)
    if summary.records_read and summary.dead_letters == summary.records_read:
        console.print("[bold red]every record was rejected[/]: check --format and the dead_letters table")
        raise typer.Exit(1)
    if fail_on_dead_letters and summary.dead_letters:
        raise typer.Exit(1)


@app.command()
def demo(
    customers: Annotated[
        int, typer.Option(help="How many customers to simulate.", min=10)
    ] = DEFAULT_CUSTOMERS,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 7,
    db: Annotated[
        str | None,
        typer.Option("--db", help="DSN (default: database `demo` in the embedded chDB under ./.journeys/)."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where the generated input files go.")] = Path(
        ".journeys/demo"
    ),
) -> None:
    """Generate a realistic multi-channel dataset, reconstruct it, and show where customers leave."""
    from processors.demo import run_demo

    settings = _settings(db or _demo_dsn(), None)
    try:
        result = run_demo(settings, customers=customers, seed=seed, directory=out_dir)
    except (ConfigError, StorageError) as exc:
        _fail(str(exc))
    _print_run(result.run, settings.dsn)
    from processors.summary import summarize

    _print_summary(summarize(connect(settings.dsn)))
    out.print(
        f"\n[bold]Ground truth[/]: stitching precision {result.precision:.4f}, recall {result.recall:.4f} "
        f"(event level, B-cubed); planted pain points found at drop-off ranks {result.pain_point_ranks}."
    )
    out.print(
        f"\nInputs: {out_dir}/  ·  Database: {settings.dsn}\n"
        'Query it:  journeys sql "SELECT status, count() FROM journeys GROUP BY status" '
        f"--db '{settings.dsn}'\n"
        f"See it:    journeys serve --db '{settings.dsn}'   (or journeys report --db … --out report.html)\n"
        "Schema, mining views and tested queries: docs/schema.md, docs/cookbook.md"
    )


def _demo_dsn() -> str:
    from processors.storage import default_dsn

    return default_dsn().replace("database=journeys", "database=demo")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A SQL query; the database's tables and views are in scope.")],
    db: DbOption = None,
    config: ConfigOption = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
) -> None:
    """Run a read-only SQL query against the journeys database and print the result.

    The query runs with ClickHouse's readonly=1: writes, DDL and settings changes are refused.
    """
    settings = _settings(db, config)
    try:
        result = connect(settings.dsn, read_only=True).query(query)
    except StorageError as exc:
        _fail(str(exc))
    except Exception as exc:  # ClickHouse's own message is the useful part
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    names, rows = list(result.column_names), result.result_rows
    if format is OutputFormat.json:
        for row in rows:
            record = dict(zip(names, row, strict=True))
            line = orjson.dumps(record, default=json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
            sys.stdout.write(line.decode() + "\n")
    elif format is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(names)
        writer.writerows([[plain_value(v) for v in row] for row in rows])
        sys.stdout.write(buffer.getvalue())
    else:
        table = Table(*names)
        for row in rows:
            table.add_row(*(str(plain_value(v)) for v in row))
        out.print(table)


@app.command()
def summary(db: DbOption = None, config: ConfigOption = None) -> None:
    """Print the phase funnel, drop-off points, channel switches, moments of truth and email progress."""
    from processors.summary import summarize

    settings = _settings(db, config)
    try:
        _print_summary(summarize(connect(settings.dsn)))
    except StorageError as exc:
        _fail(str(exc))


@app.command(name="migrate")
def migrate_command(db: DbOption = None, config: ConfigOption = None) -> None:
    """Create or upgrade the ClickHouse schema (tables and views)."""
    settings = _settings(db, config)
    try:
        applied = migrate(connect(settings.dsn))
    except StorageError as exc:
        _fail(str(exc))
    if applied:
        for migration in applied:
            out.print(f"applied {migration.version:04d}_{migration.name}")
    else:
        out.print("schema is up to date")


@app.command()
def unlink(
    identifier_type: Annotated[
        str, typer.Argument(help="Identifier type, e.g. anonymous_id, email, user_id.")
    ],
    value: Annotated[
        str, typer.Argument(help="The raw value (emails and phones are hashed with the PII key).")
    ],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Unmerge: stop an identifier from linking customers, and rebuild the affected journeys."""
    from processors.embedded import unlink_identifier

    settings = _settings(db, config)
    try:
        summary = unlink_identifier(settings, identifier_type, value, reason)
    except (ConfigError, StorageError, ValueError) as exc:
        _fail(str(exc))
    out.print(
        f"unlinked {identifier_type}; journeys rewritten: {summary.journeys_written}, "
        f"removed: {summary.journeys_deleted}"
    )


KafkaOption = Annotated[
    str | None,
    typer.Option("--kafka", help="Kafka bootstrap HOST:PORT (default: $JOURNEYS_KAFKA or localhost:9092)."),
]


LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format", help="text or json (one object per line); default $JOURNEYS_LOG_FORMAT or text."
    ),
]


def _log_format(value: str | None) -> str:
    from processors.logs import log_format_from_env

    try:
        return log_format_from_env(value)
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def worker(
    kafka: KafkaOption = None,
    config: ConfigOption = None,
    rules: RulesOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Port of /metrics (Prometheus); default $JOURNEYS_METRICS_PORT or 9108."),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Faust's local data directory.")] = Path(".journeys/worker"),
    partitions: Annotated[
        int | None,
        typer.Option(help="Partitions of missing raw/dead-letter topics ($JOURNEYS_PARTITIONS or 6).", min=1),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Records per batch through the core.", min=1)] = 2000,
    fold_size: Annotated[int, typer.Option(help="Most touchpoints per reconstruct fold.", min=1)] = 50_000,
    batch_seconds: Annotated[
        float, typer.Option(help="Longest wait for a batch to fill (latency at low rates).", min=0.01)
    ] = 0.25,
    align: Annotated[
        bool,
        typer.Option(
            help="Fold touchpoints in event-time order across raw partitions (docs/stream.md, alignment)."
        ),
    ] = True,
    align_across_workers: Annotated[
        bool,
        typer.Option(
            help="Pace raw partitions by other workers' positions too (the progress topic), "
            "not only by this worker's own."
        ),
    ] = True,
    align_idle_seconds: Annotated[
        float, typer.Option(help="A raw partition not reported this long holds nothing back.", min=0.1)
    ] = 5.0,
    align_max_held: Annotated[
        int, typer.Option(help="Most touchpoints held for alignment; past it the earliest go.", min=0)
    ] = 200_000,
    session_timeout: Annotated[float | None, typer.Option(help="Kafka group session timeout, s.")] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(help="Kafka group heartbeat, s.")] = None,
    rebalance_timeout: Annotated[float | None, typer.Option(help="Kafka group rebalance timeout, s.")] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run the stream processors (normalise, reconstruct) as a Faust worker; start several to scale."""
    import dataclasses
    import os

    import faust
    from kafka.errors import KafkaError

    from ingest.kafka import TopicLayoutError, ensure_topics, replication_from_env
    from ingest.pii import PiiKeyError
    from ingest.topics import Topics, bootstrap_from_env
    from processors.logs import logging_config
    from processors.stream.app import StreamConfig, create_app

    settings = _settings(None, config, rules)
    try:
        settings.pii_key()
    except (ConfigError, PiiKeyError) as exc:
        _fail(str(exc))
    timeouts = (session_timeout, heartbeat_interval, rebalance_timeout)
    port = metrics_port if metrics_port is not None else int(os.environ.get("JOURNEYS_METRICS_PORT", "9108"))
    stream_config = StreamConfig(
        bootstrap=kafka or bootstrap_from_env(),
        topics=Topics.from_env(),
        batch_size=batch_size,
        batch_seconds=batch_seconds,
        fold_size=fold_size,
        align=align,
        align_across_workers=align_across_workers,
        align_idle_seconds=align_idle_seconds,
        align_max_held=align_max_held,
        web_port=port or None,
        data_dir=str(data_dir),
        group_timeouts=None if None in timeouts else timeouts,  # type: ignore[arg-type]
    )
    try:
        counts = ensure_topics(stream_config.bootstrap, stream_config.topics, partitions)
    except (KafkaError, TopicLayoutError) as exc:
        _fail(f"Kafka at {stream_config.bootstrap}: {exc}")
    stream_config = dataclasses.replace(
        stream_config,
        partitions=counts[stream_config.topics.raw("web")],
        raw_partitions={topic: counts[topic] for topic in stream_config.topics.all_raw},
        replication_factor=replication_from_env(),
    )
    faust_app = create_app(settings, stream_config)
    tune_gc_for_bulk(WORKER_YOUNG_THRESHOLD, freeze=True)
    faust.Worker(
        faust_app, loglevel="INFO", logging_config=logging_config(_log_format(log_format))
    ).execute_from_commandline()


@app.command()
def sink(
    kafka: KafkaOption = None,
    db: DbOption = None,
    config: ConfigOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Port of /metrics (Prometheus); default $JOURNEYS_METRICS_PORT or 9109."),
    ] = None,
    max_messages: Annotated[int, typer.Option(help="Most messages per ClickHouse write.", min=1)] = 5000,
    max_megabytes: Annotated[
        int, typer.Option(help="Most megabytes of messages per ClickHouse write (decoded: about 5x).", min=1)
    ] = 64,
    max_seconds: Annotated[float, typer.Option(help="Longest wait before a partial batch is written.")] = 1.0,
    idle_exit: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without messages (replays).")
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Write the stream processors' output to ClickHouse (the only writer of an embedded database)."""
    import os

    from ingest.topics import Topics, bootstrap_from_env
    from processors.logs import configure as configure_logs
    from processors.stream.sink import SinkConfig, run_sink

    configure_logs(_log_format(log_format))
    settings = _settings(db, config)
    port = metrics_port if metrics_port is not None else int(os.environ.get("JOURNEYS_METRICS_PORT", "9109"))
    try:
        client = connect(settings.dsn)
        migrate(client)
    except StorageError as exc:
        _fail(str(exc))
    sink_config = SinkConfig(
        bootstrap=kafka or bootstrap_from_env(),
        topics=Topics.from_env(),
        max_messages=max_messages,
        max_bytes=max_megabytes * 1024 * 1024,
        max_seconds=max_seconds,
        idle_exit=idle_exit,
        metrics_port=port or None,
    )
    summary = run_sink(lambda: client, sink_config)
    console.print(
        f"sink: {summary.messages:,} messages in {summary.batches:,} batches; {summary.events:,} events, "
        f"{summary.journeys_written:,} journey rows, {summary.journeys_deleted:,} deleted, "
        f"{summary.dead_letters:,} dead letters, {summary.retries} retries"
    )


@app.command()
def produce(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Files or directories (JSON lines, JSON, CSV; .gz too).", show_default=False),
    ],
    kafka: KafkaOption = None,
    bootstrap: Annotated[str | None, typer.Option("--bootstrap", help="Alias of --kafka.")] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="Force one format for every record (default: detect per record)."
        ),
    ] = None,
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kafka before giving up.")] = 30.0,
) -> None:
    """Replay files into the raw Kafka topics (idempotent, acks=all, keyed by source identity)."""
    from kafka.errors import KafkaError

    from ingest.kafka import TopicLayoutError
    from ingest.pii import PiiHasher, PiiKeyError
    from ingest.pipeline import FORMATS
    from ingest.producer import ProduceError, produce_files
    from ingest.topics import Topics, bootstrap_from_env
    from processors.embedded import expand_inputs

    if format is not None and format not in FORMATS:
        _fail(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    settings = _settings(None, config)
    target = kafka or bootstrap or bootstrap_from_env()
    try:
        files = expand_inputs(inputs)
        hasher = PiiHasher(settings.pii_key())
        with _progress() as progress:

            def next_file(path: Path) -> None:
                if progress.tasks:  # the previous file is done: its bar shows full
                    done = progress.tasks[-1]
                    progress.update(done.id, total=done.completed)
                progress.add_task(path.name, total=None)

            summary = produce_files(
                files,
                target,
                Topics.from_env(),
                hasher,
                format=format,
                progress=lambda n: progress.advance(progress.tasks[-1].id, n),
                on_file=next_file,
                timeout=timeout,
            )
    except (FileNotFoundError, ConfigError, PiiKeyError) as exc:
        _fail(str(exc))
    except (KafkaError, TopicLayoutError, ProduceError) as exc:
        _fail(f"Kafka at {target}: {exc}", code=1)
    console.print(f"produced [bold]{summary.records:,}[/] records to Kafka at {target}")
    for topic, count in sorted(summary.by_topic.items()):
        console.print(f"  {topic}: {count:,}")
    if summary.too_large:
        console.print(
            f"  [yellow]{summary.too_large:,} over Kafka's message size[/] "
            "(sent to the dead-letter topic with the reason)"
        )
    if summary.unplaced:
        console.print(
            f"  [yellow]{summary.unplaced:,} of unknown format[/] (sent to the web topic; "
            "the worker dead-letters them with the reason)"
        )


@app.command()
def collect(
    kafka: KafkaOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(envvar="JOURNEYS_COLLECTOR_PORT", help="Port to listen on.", min=1)
    ] = 8080,
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Receive webhooks (Segment, SendGrid, Twilio, social, Meta) and put them on the raw topics.

    Every enabled endpoint needs its credential (docs/ingest.md); without one it exits 2.
    """
    from kafka.errors import KafkaError

    from ingest.collector import CollectorConfig, CollectorConfigError, run_collector
    from ingest.kafka import TopicLayoutError
    from ingest.pii import PiiKeyError
    from processors.embedded import ingest_context
    from processors.logs import configure as configure_logs

    configure_logs(_log_format(log_format))
    settings = _settings(None, config)
    try:
        context = ingest_context(settings, create_key=False)
    except (ConfigError, PiiKeyError) as exc:
        _fail(str(exc))
    overrides = {"bootstrap": kafka} if kafka else {}
    try:
        collector_config = CollectorConfig.from_env(**overrides)
        run_collector(collector_config, context, host, port)
    except CollectorConfigError as exc:
        _fail(str(exc))
    except (KafkaError, TopicLayoutError) as exc:
        _fail(f"Kafka at {collector_config.bootstrap}: {exc}")


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1)] = 8050,
    config: ConfigOption = None,
) -> None:
    """Serve the page for product teams: funnel, flows, drop-off points, switches, emotion, moments."""
    from aiohttp import web as aiohttp_web

    from processors.web import create_web_app

    settings = _settings(db, config)
    client = _page_client(settings.dsn)
    console.print(
        f"journeys page on [bold]http://{host}:{port}/[/] (database {settings.dsn}); Ctrl-C stops it"
    )
    aiohttp_web.run_app(create_web_app(client), host=host, port=port, print=None)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the page as one self-contained HTML file (no server, no network needed to open it)."""
    from processors.web import report_html

    settings = _settings(db, config)
    client = _page_client(settings.dsn)
    try:
        html = report_html(client)
    except StorageError as exc:
        _fail(str(exc))
    out.write_text(html, encoding="utf-8")
    console.print(f"wrote [bold]{out}[/] ({len(html.encode()) / 1e6:.1f} MB); open it in any browser")


@app.command()
def bench(
    events: Annotated[
        str, typer.Option("--events", "-n", help="Demo events to generate: 200k, 1M (default), 10M, …")
    ] = "1M",
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated measurements, e.g. embedded,queries (default: all available)."),
    ] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the results JSON.")] = Path(
        "bench/results.json"
    ),
    workdir: Annotated[
        Path | None,
        typer.Option(help="Scratch directory (chDB paths, logs); default a temporary one under bench/."),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory (chDB databases, logs).")] = False,
    cache: Annotated[Path, typer.Option(help="Where generated datasets are kept between runs.")] = Path(
        "bench/data"
    ),
    seed: Annotated[int, typer.Option(help="Demo generator seed.")] = 7,
    mix: Annotated[
        str | None,
        typer.Option(
            help="Population mix: demo (about 30.7 events per customer) or short (about 10); "
            "default short from 10M events on (the scale target's 1M customers), demo below."
        ),
    ] = None,
    query_touchpoints: Annotated[
        str | None,
        typer.Option(help="Touchpoints the query measurement replicates to (default 10M)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Tiny run for the test suite: two copies for queries, fewer repeats.")
    ] = False,
    replay: Annotated[
        str,
        typer.Option(
            help="Order the stream measurements produce the records in: time (merged by event time, "
            "as a live feed) or files (one provider file after another)."
        ),
    ] = "time",
) -> None:
    """Benchmark: end-to-end throughput, analyst queries and the pm4py peer; writes bench/results.json."""
    from processors.bench.harness import parse_count, run_bench

    try:
        count = parse_count(events)
        touchpoints = parse_count(query_touchpoints) if query_touchpoints else None
        selected = [name.strip() for name in only.split(",") if name.strip()] if only else None
        run_bench(
            count,
            only=selected,
            out=out_path,
            workdir=workdir,
            cache=cache,
            keep=keep,
            seed=seed,
            mix=mix,
            quick=quick,
            query_touchpoints=touchpoints,
            replay=replay,
            console=out,
        )
    except ValueError as exc:
        _fail(str(exc))


def _page_client(dsn: str) -> Any:
    """A read-only client of `dsn` for the page, the schema brought up to date first; exit 2 on failure."""
    try:
        migrate(connect(dsn))
        return connect(dsn, read_only=True)
    except StorageError as exc:
        _fail(str(exc))


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _print_run(summary: Any, dsn: str) -> None:
    console.print(
        f"[bold]{summary.records_read:,}[/] records read → "
        f"[green]{summary.touchpoints_new:,}[/] new touchpoints, "
        f"{summary.duplicates:,} exact duplicates, [yellow]{summary.dead_letters:,}[/] dead letters "
        f"({summary.replayed:,} stored events replayed) in {summary.seconds:.1f}s"
    )
    if summary.late_events:
        console.print(
            f"  {summary.late_events:,} late events (behind the stored watermark): "
            "the journeys they belong to were corrected"
        )
    if summary.dead_letter_reasons:
        reasons = ", ".join(
            f"{k} ×{v}" for k, v in sorted(summary.dead_letter_reasons.items(), key=lambda x: -x[1])
        )
        console.print(f"  dead letters by reason: {reasons}  (SELECT * FROM dead_letters)")
    console.print(
        f"  journeys written: {summary.journeys_written:,}, "
        f"removed by rewrites: {summary.journeys_deleted:,}; "
        f"watermark {summary.watermark:%Y-%m-%d %H:%M} UTC"
        if summary.watermark
        else ""
    )
    if not summary.accounted:
        console.print("[bold red]accounting mismatch[/]: records read ≠ stored + duplicates + dead letters")


def _print_summary(summary: Any) -> None:
    out.print(
        f"\n[bold]{summary.journeys:,}[/] journeys of {summary.customers:,} customers, "
        f"{summary.touchpoints:,} touchpoints; "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.status_counts.items()))
    )
    funnel = Table("phase", "journeys", "% of all", "→ from previous", title="Phase funnel")
    for step in summary.funnel:
        conversion = (
            f"{step.conversion_from_previous:.0%}" if step.conversion_from_previous is not None else ""
        )
        funnel.add_row(step.phase, f"{step.journeys:,}", f"{step.share_of_all:.0%}", conversion)
    out.print(funnel)
    drops = Table("phase", "channel", "action", "journeys", "% of dropped", title="Top drop-off points")
    for d in summary.dropoffs:
        drops.add_row(d.phase, d.channel, d.action, f"{d.journeys:,}", f"{d.share_of_dropped:.0%}")
    out.print(drops)
    from processors.summary import CHANNELS

    matrix = Table("from \\ to", *CHANNELS, title="Channel switches (count, % after a failure)")
    for source in CHANNELS:
        cells = []
        for target in CHANNELS:
            n, share = summary.switch_matrix.get((source, target), (0, 0.0))
            cells.append(f"{n:,} ({share:.0%})" if n else "·")
        matrix.add_row(source, *cells)
    out.print(matrix)
    if summary.moments:
        moments = Table(
            "channel",
            "action",
            "journeys",
            "converted",
            "lift",
            "dropped",
            "lift",
            title="Moments of truth (lift 1 = no effect)",
        )
        for m in summary.moments:
            moments.add_row(
                m["channel"],
                m["action"],
                f"{m['journeys_with']:,}",
                f"{m['conversion_with']:.0%}",
                f"{m['conversion_lift']:.2f}",
                f"{m['dropoff_with']:.0%}",
                f"{m['dropoff_lift']:.2f}",
            )
        out.print(moments)
    if summary.emails:
        emails = Table("campaign", "sent", "opened", "progressed", title="Emails and the progress after them")
        for e in summary.emails:
            emails.add_row(
                e["campaign"],
                f"{e['journeys_sent']:,}",
                f"{e['journeys_opened']:,}",
                f"{e['journeys_progressed']:,} ({e['progress_rate']:.0%})",
            )
        out.print(emails)


if __name__ == "__main__":
    app()
