"""The `journeys` command line, run in-process against the session's chDB."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from processors.cli import app

runner = CliRunner()
COMMANDS = [
    "run",
    "demo",
    "sql",
    "summary",
    "migrate",
    "unlink",
    "produce",
    "collect",
    "worker",
    "sink",
    "serve",
    "report",
]

ORDER = [
    {
        "type": "page",
        "name": "Home",
        "messageId": "c-1",
        "anonymousId": "anon-1",
        "timestamp": "2026-09-01T10:00:00.000Z",
        "properties": {"path": "/"},
    },
    {
        "type": "track",
        "event": "Order Completed",
        "messageId": "c-2",
        "anonymousId": "anon-1",
        "userId": "u-7",
        "timestamp": "2026-09-01T10:20:00.000Z",
        "properties": {"order_id": "o-7", "revenue": 25.5, "currency": "EUR"},
    },
]


@pytest.fixture
def web_file(tmp_path: Path) -> Path:
    path = tmp_path / "web.jsonl"
    path.write_bytes(b"".join(orjson.dumps(call) + b"\n" for call in ORDER))
    return path


def test_help_on_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, command
        assert "Usage" in sub.output


def test_run_then_query_in_every_output_format(web_file: Path, dsn: str) -> None:
    result = runner.invoke(app, ["run", str(web_file), "--db", dsn])
    assert result.exit_code == 0, result.output
    assert "2 new touchpoints" in result.stderr

    query = "SELECT event_id, phase, occurred_at FROM touchpoints ORDER BY event_id"
    as_json = runner.invoke(app, ["sql", query, "--db", dsn, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert [orjson.loads(line) for line in as_json.stdout.splitlines()] == [
        {"event_id": "c-1", "phase": "orientation", "occurred_at": "2026-09-01T10:00:00+00:00"},
        {"event_id": "c-2", "phase": "purchase", "occurred_at": "2026-09-01T10:20:00+00:00"},
    ]
    as_csv = runner.invoke(app, ["sql", query, "--db", dsn, "--format", "csv"])
    assert next(csv.reader(io.StringIO(as_csv.stdout))) == ["event_id", "phase", "occurred_at"]
    as_table = runner.invoke(app, ["sql", "SELECT status FROM journeys", "--db", dsn])
    assert "converted" in as_table.stdout


def test_run_without_input_rewrites_every_journey_from_the_log(web_file: Path, dsn: str) -> None:
    assert runner.invoke(app, ["run", str(web_file), "--db", dsn]).exit_code == 0
    query = "SELECT journey_id, path_steps, status FROM journeys"
    before = runner.invoke(app, ["sql", query, "--db", dsn, "--format", "json"]).stdout
    rebuilt = runner.invoke(app, ["run", "--db", dsn])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert runner.invoke(app, ["sql", query, "--db", dsn, "--format", "json"]).stdout == before
    versions = runner.invoke(
        app, ["sql", "SELECT uniqExact(version) FROM journey_versions", "--db", dsn, "--format", "csv"]
    )
    assert versions.stdout.splitlines()[1] == "2"


def test_sql_error_is_reported_not_raised(dsn: str) -> None:
    result = runner.invoke(app, ["sql", "SELECT nope FROM journeys", "--db", dsn])
    assert result.exit_code == 2
    assert "error" in result.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE journey_versions",
        "INSERT INTO runs (run_id) VALUES ('forged')",
        "ALTER TABLE journey_versions DELETE WHERE 1",
        "CREATE TABLE forged (a Int8) ENGINE = Memory",
        "SELECT count() FROM journeys SETTINGS readonly = 0",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    ],
)
def test_sql_is_read_only(web_file: Path, dsn: str, statement: str) -> None:
    assert runner.invoke(app, ["run", str(web_file), "--db", dsn]).exit_code == 0
    before = runner.invoke(app, ["sql", "SELECT count() FROM journeys", "--db", dsn, "--format", "csv"])
    refused = runner.invoke(app, ["sql", statement, "--db", dsn])
    assert refused.exit_code == 2
    assert "readonly" in refused.stderr.lower()
    after = runner.invoke(app, ["sql", "SELECT count() FROM journeys", "--db", dsn, "--format", "csv"])
    assert after.stdout == before.stdout, after.stderr
    tables = runner.invoke(app, ["sql", "EXISTS TABLE forged", "--db", dsn, "--format", "csv"])
    assert tables.stdout.splitlines()[1] == "0"


def test_run_with_unknown_format_or_missing_file(web_file: Path, dsn: str) -> None:
    bad_format = runner.invoke(app, ["run", str(web_file), "--format", "xml", "--db", dsn])
    assert bad_format.exit_code == 2
    assert "unknown --format" in bad_format.stderr
    missing = runner.invoke(app, ["run", str(web_file.with_name("nope.jsonl")), "--db", dsn])
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr


def test_run_where_every_record_is_rejected_exits_1(tmp_path: Path, dsn: str) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n{}\n")
    result = runner.invoke(app, ["run", str(junk), "--db", dsn])
    assert result.exit_code == 1
    assert "every record was rejected" in result.stderr


def test_fail_on_dead_letters(tmp_path: Path, web_file: Path, dsn: str) -> None:
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(web_file.read_bytes() + b"{broken\n")
    assert runner.invoke(app, ["run", str(mixed), "--db", dsn]).exit_code == 0
    assert runner.invoke(app, ["run", str(mixed), "--db", dsn, "--fail-on-dead-letters"]).exit_code == 1


def test_migrate_and_summary(web_file: Path, dsn: str) -> None:
    first = runner.invoke(app, ["migrate", "--db", dsn])
    assert first.exit_code == 0 and "applied 0001_core" in first.stdout
    assert "up to date" in runner.invoke(app, ["migrate", "--db", dsn]).stdout
    runner.invoke(app, ["run", str(web_file), "--db", dsn])
    summary = runner.invoke(app, ["summary", "--db", dsn])
    assert summary.exit_code == 0
    assert "Phase funnel" in summary.stdout and "converted 1" in summary.stdout


def test_unlink_command(web_file: Path, dsn: str) -> None:
    runner.invoke(app, ["run", str(web_file), "--db", dsn])
    result = runner.invoke(app, ["unlink", "anonymous_id", "anon-1", "--reason", "shared kiosk", "--db", dsn])
    assert result.exit_code == 0, result.output
    assert "journeys rewritten: 2" in result.stdout
    unknown = runner.invoke(app, ["unlink", "user_id", "nobody", "--db", dsn])
    assert unknown.exit_code == 2 and "nothing to unlink" in unknown.stderr


def test_bad_config_file_is_a_usage_error(tmp_path: Path, dsn: str) -> None:
    config = tmp_path / "journeys.yaml"
    config.write_text("identiy: {}\n")
    result = runner.invoke(app, ["summary", "--db", dsn, "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown section" in result.stderr


def test_produce_replays_files_into_the_raw_topics(
    web_file: Path, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_TOPIC_PREFIX", topic_prefix)
    result = runner.invoke(app, ["produce", str(web_file), "--kafka", kafka_bootstrap])
    assert result.exit_code == 0, result.output
    assert "produced 2 records" in result.output
    assert f"{topic_prefix}.raw.web: 2" in result.output


def test_produce_without_kafka_says_so(web_file: Path, topic_prefix: str) -> None:
    result = runner.invoke(app, ["produce", str(web_file), "--bootstrap", "127.0.0.1:9", "--timeout", "1"])
    assert result.exit_code == 1
    assert "Kafka at 127.0.0.1:9" in result.output


def test_produce_refuses_an_unknown_format(web_file: Path) -> None:
    result = runner.invoke(app, ["produce", str(web_file), "--format", "mailchimp"])
    assert result.exit_code == 2 and "unknown --format" in result.output


@pytest.mark.parametrize("command", ["produce", "collect", "worker"])
def test_kafka_commands_without_a_pii_key_say_so(
    command: str, web_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys and dead letters need the deployment's PII key: never a throwaway one, never a traceback."""
    monkeypatch.delenv("JOURNEYS_PII_KEY")
    monkeypatch.chdir(tmp_path)  # no local .journeys/pii.key either
    monkeypatch.setattr("processors.logs.configure", lambda *_: None)  # keep pytest's log handlers
    args = [str(web_file)] if command == "produce" else []
    result = runner.invoke(app, [command, *args, "--kafka", "127.0.0.1:9"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "JOURNEYS_PII_KEY" in result.output
    assert not (tmp_path / ".journeys" / "pii.key").exists()


def test_summary_shows_the_moments_of_truth_and_dead_end_emails(mining_demo: Any, chdb_path: Path) -> None:
    result = runner.invoke(app, ["summary", "--db", f"chdb://{chdb_path}?database=mining_demo"])
    assert result.exit_code == 0, result.output
    assert "Moments of truth" in result.stdout and "call.abandoned" in result.stdout
    emails = result.stdout.split("Emails and the progress after them", 1)[1]
    assert emails.strip().splitlines()[3].split("│")[1].strip() == "spring-nurture"  # least progress first
