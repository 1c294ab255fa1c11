"""Structured logs: one parseable JSON object per record, extras included, tracebacks kept."""

from __future__ import annotations

import logging

import orjson
import pytest

from processors.logs import JsonFormatter, log_format_from_env, logging_config


def test_json_lines_carry_level_logger_message_and_extras() -> None:
    record = logging.LogRecord("journeys.sink", logging.WARNING, __file__, 1, "retry in %.1f s", (2.0,), None)
    record.batch_size = 500
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "journeys.sink"
    assert entry["message"] == "retry in 2.0 s" and entry["batch_size"] == 500
    assert entry["ts"].endswith("+00:00")


def test_a_traceback_stays_inside_the_json_object() -> None:
    try:
        raise RuntimeError("ClickHouse went away")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = orjson.loads(JsonFormatter().format(record))
    assert "RuntimeError: ClickHouse went away" in entry["exc"]


def test_the_format_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEYS_LOG_FORMAT", "JSON")
    assert log_format_from_env() == "json"
    assert log_format_from_env("text") == "text"
    with pytest.raises(ValueError, match="one of text, json"):
        log_format_from_env("xml")
    assert logging_config("json")["formatters"]["default"] == {"()": "processors.logs.JsonFormatter"}
