"""Prometheus metrics in the text exposition format, without a client library.

A handful of counters and gauges with labels is all the workers and the sink
need; the text format (version 0.0.4) is stable and small.
"""

from __future__ import annotations

import threading
from collections import defaultdict

_HELP = {
    "journeys_records_in_total": ("counter", "Records taken in, per stage"),
    "journeys_records_out_total": ("counter", "Records sent on, per stage"),
    "journeys_dead_letters_total": ("counter", "Records refused with a reason, per stage"),
    "journeys_duplicates_total": ("counter", "Events dropped as exact redeliveries of an admitted event"),
    "journeys_open_journeys": ("gauge", "Journeys currently open (not converted, not dropped)"),
    "journeys_sink_batches_total": ("counter", "Batches written to ClickHouse"),
    "journeys_sink_batch_size": ("gauge", "Messages in the last batch written"),
    "journeys_sink_batch_seconds": ("gauge", "Seconds the last batch took to write"),
    "journeys_sink_retries_total": ("counter", "Failed ClickHouse writes that were retried"),
    "journeys_consumer_lag": ("gauge", "Messages not yet consumed, per topic partition"),
    "journeys_rebalance_rewinds_total": (
        "counter",
        "Partitions read again from where they must start: records were skipped, or a commit was held",
    ),
    "journeys_skipped_acks_refused_total": (
        "counter",
        "Acknowledgements of records Faust skipped (never processed) kept from counting toward a commit",
    ),
    "journeys_late_events_total": ("counter", "Touchpoints behind what was published: journeys corrected"),
    "journeys_published_journeys_total": ("counter", "Journeys sent to the sink, by how (new, whole, ...)"),
    "journeys_published_touchpoint_rows_total": ("counter", "Touchpoint rows sent to the sink"),
    "journeys_held_touchpoints": ("gauge", "Touchpoints held for event-time alignment"),
    "journeys_alignment_overflow_total": (
        "counter",
        "Touchpoints folded before every partition passed them, because the hold was full",
    ),
    "journeys_alignment_pauses_total": ("counter", "Raw partitions paused for running ahead in event time"),
    "journeys_alignment_peer_pauses_total": (
        "counter",
        "Raw partitions paused for running ahead of another worker's slowest partition",
    ),
    "journeys_alignment_lapses_total": (
        "counter",
        "Raw partitions the reconstruct stage stopped waiting for, not caught up (idle or stalled)",
    ),
    "journeys_paused_partitions": ("gauge", "Raw partitions paused for running ahead, now"),
    "journeys_bad_progress_reports_total": (
        "counter",
        "Malformed progress headers or worker positions ignored",
    ),
}


class Metrics:
    """Thread-safe counters and gauges keyed by (name, labels)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in items:
            if name not in seen:
                seen.add(name)
                kind, text = _HELP.get(name, ("untyped", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus text page as {series with labels: value} (for the tests and the benchmarks)."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series
