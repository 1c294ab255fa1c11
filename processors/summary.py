"""The headline figures of a reconstruction, read back from ClickHouse.

These are the same queries an analyst would run against the documented views;
the demo and `journeys summary` print them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.touchpoint import PHASE_ORDER, Channel


@dataclass(frozen=True)
class FunnelStep:
    phase: str
    journeys: int
    share_of_all: float
    conversion_from_previous: float | None


@dataclass(frozen=True)
class DropOffPoint:
    phase: str
    channel: str
    action: str
    journeys: int
    share_of_dropped: float


@dataclass(frozen=True)
class Summary:
    journeys: int
    customers: int
    touchpoints: int
    status_counts: dict[str, int]
    funnel: list[FunnelStep]
    dropoffs: list[DropOffPoint]
    switch_matrix: dict[tuple[str, str], tuple[int, float]]  # (from, to) -> (switches, share after failure)
    dead_letters: int
    moments: list[dict[str, Any]] = field(default_factory=list)  # moments_of_truth, strongest first
    emails: list[dict[str, Any]] = field(default_factory=list)  # email_progress, least progress first


def phase_funnel(client: Client) -> list[FunnelStep]:
    rows = client.query(
        "SELECT phase, count() FROM journeys ARRAY JOIN phases_reached AS phase GROUP BY phase"
    ).result_rows
    reached = {phase: count for phase, count in rows}
    total = client.query("SELECT count() FROM journeys").result_rows[0][0]
    steps, previous = [], None
    for phase in PHASE_ORDER:
        count = reached.get(phase.value, 0)
        steps.append(
            FunnelStep(
                phase=phase.value,
                journeys=count,
                share_of_all=count / total if total else 0.0,
                conversion_from_previous=(count / previous) if previous else None,
            )
        )
        previous = count
    return steps


def top_dropoffs(client: Client, limit: int = 10) -> list[DropOffPoint]:
    rows = client.query(
        """
        SELECT dropoff_phase, dropoff_channel, dropoff_action, count() AS n,
               n / sum(n) OVER () AS share
        FROM journeys
        WHERE status = 'dropped'
        GROUP BY dropoff_phase, dropoff_channel, dropoff_action
        ORDER BY n DESC, dropoff_phase, dropoff_channel, dropoff_action
        LIMIT {limit:UInt32}
        """,
        parameters={"limit": limit},
    ).result_rows
    return [DropOffPoint(p, c, a, n, float(s)) for p, c, a, n, s in rows]


def switch_matrix(client: Client) -> dict[tuple[str, str], tuple[int, float]]:
    rows = client.query(
        "SELECT from_channel, to_channel, count(), avg(after_failure) FROM channel_switches GROUP BY ALL"
    ).result_rows
    return {(f, t): (n, float(share)) for f, t, n, share in rows}


def summarize(client: Client) -> Summary:
    statuses = dict(client.query("SELECT status, count() FROM journeys GROUP BY status").result_rows)
    journeys, customers = client.query("SELECT count(), uniqExact(customer_id) FROM journeys").result_rows[0]
    return Summary(
        journeys=journeys,
        customers=customers,
        touchpoints=client.query("SELECT count() FROM touchpoints").result_rows[0][0],
        status_counts=statuses,
        funnel=phase_funnel(client),
        dropoffs=top_dropoffs(client),
        switch_matrix=switch_matrix(client),
        dead_letters=client.query("SELECT count() FROM dead_letters").result_rows[0][0],
        moments=_rows(client, "SELECT * FROM moments_of_truth LIMIT 5"),
        emails=_rows(client, "SELECT * FROM email_progress WHERE journeys_opened >= 10 LIMIT 5"),
    )


def _rows(client: Client, query: str) -> list[dict[str, Any]]:
    result = client.query(query)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


CHANNELS = [c.value for c in Channel]
