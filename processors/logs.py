"""Log output for the long-running commands (worker, sink, collector): text or one JSON object per line.

`JOURNEYS_LOG_FORMAT=json` (or `--log-format json`) gives structured logs a
log shipper can index without parsing: `ts`, `level`, `logger`, `message`,
`process`, any `extra={...}` fields, and `exc` for a traceback. Messages never
carry raw records or personal data; the stages log counts, topics and reasons.
"""

from __future__ import annotations

import logging
import logging.config
import os
from datetime import UTC, datetime
from typing import Any

import orjson

LOG_FORMAT_ENV = "JOURNEYS_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_format_from_env(value: str | None = None) -> str:
    chosen = (value or os.environ.get(LOG_FORMAT_ENV, "") or "text").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {chosen!r}")
    return chosen


def logging_config(log_format: str = "text", level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for stderr in the given format (Faust's worker takes it too)."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure(log_format: str = "text", level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(log_format, level))
