"""The product questions as parameterised ClickHouse queries, for `journeys serve` and `journeys report`.

Every query reads the current-state and mining views and takes the same
filters (period of journey start, persona, entry channel) as query
parameters, never as SQL text. Results are plain dicts and lists, ready for
JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from clickhouse_connect.driver.client import Client

from journeys.touchpoint import Channel

PHASES = ("orientation", "consideration", "purchase", "usage", "retention")
PHASE_LABELS = {
    "orientation": "Orientation (Oriëntatie)",
    "consideration": "Consideration (Afweging)",
    "purchase": "Purchase (Aanschaf)",
    "usage": "Usage (Gebruik)",
    "retention": "Retention (Retentie–loyaliteit)",
}
CHANNELS = tuple(channel.value for channel in Channel)


class FilterError(ValueError):
    """A filter value the page or a caller sent that cannot be used."""


@dataclass(frozen=True)
class Filters:
    """Which journeys to look at: started in [start, end), of a persona, entering on a channel."""

    start: date | None = None
    end: date | None = None
    persona: str | None = None
    channel: str | None = None

    @classmethod
    def parse(cls, values: dict[str, str]) -> Filters:
        def day(name: str) -> date | None:
            raw = (values.get(name) or "").strip()
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                raise FilterError(f"{name} must be a date like 2026-10-01, got {raw!r}") from None

        channel = (values.get("channel") or "").strip() or None
        if channel is not None and channel not in CHANNELS:
            raise FilterError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
        persona = (values.get("persona") or "").strip() or None
        return cls(day("start"), day("end"), persona, channel)

    def where(self) -> tuple[str, dict[str, Any]]:
        """A condition on `journeys` columns and its parameters."""
        parts, parameters = ["1"], {}
        if self.start is not None:
            parts.append("started_at >= {start:Date}")
            parameters["start"] = self.start
        if self.end is not None:
            parts.append("started_at < {end:Date}")
            parameters["end"] = self.end
        if self.persona is not None:
            parts.append("persona = {persona:String}")
            parameters["persona"] = self.persona
        if self.channel is not None:
            parts.append("entry_channel = {channel:String}")
            parameters["channel"] = self.channel
        return " AND ".join(parts), parameters

    def journeys(self) -> tuple[str, dict[str, Any]]:
        """`journey_id IN (…)` for the row-level views."""
        condition, parameters = self.where()
        return f"journey_id IN (SELECT journey_id FROM journeys WHERE {condition})", parameters


def _rows(client: Client, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(query, parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def overview(client: Client, filters: Filters) -> dict[str, Any]:
    condition, parameters = filters.where()
    (row,) = _rows(
        client,
        "SELECT count() AS journeys, uniqExact(customer_id) AS customers, "
        "countIf(converted = 1) AS converted, "
        f"countIf(status = 'dropped') AS dropped, countIf(status = 'open') AS open "
        f"FROM journeys WHERE {condition}",
        parameters,
    )
    return row


def funnel(client: Client, filters: Filters) -> list[dict[str, Any]]:
    """Journeys reaching each phase, conversion to the next, median days to it, and drop-offs there."""
    condition, parameters = filters.journeys()
    reached = {
        r["phase"]: r
        for r in _rows(
            client,
            "SELECT phase, uniqExact(journey_id) AS journeys, "
            "countIf(seconds_to_next IS NOT NULL) AS reached_next, "
            "quantileExactIf(0.5)(seconds_to_next, seconds_to_next IS NOT NULL) / 86400 "
            "AS median_days_to_next "
            f"FROM journey_phases WHERE {condition} GROUP BY phase",
            parameters,
        )
    }
    dropped = dict(
        client.query(
            f"SELECT dropoff_phase, count() FROM journeys WHERE status = 'dropped' AND {condition} "
            "GROUP BY dropoff_phase",
            parameters=parameters,
        ).result_rows
    )
    steps = []
    for phase in PHASES:
        row = reached.get(phase, {"journeys": 0, "reached_next": 0, "median_days_to_next": None})
        journeys = row["journeys"]
        steps.append(
            {
                "phase": phase,
                "label": PHASE_LABELS[phase],
                "journeys": journeys,
                "reached_next": row["reached_next"],
                "conversion_to_next": round(row["reached_next"] / journeys, 4) if journeys else None,
                "median_days_to_next": _round(row["median_days_to_next"], 1),
                "dropped_here": dropped.get(phase, 0),
            }
        )
    return steps


def dropoff_points(client: Client, filters: Filters, limit: int = 10) -> list[dict[str, Any]]:
    """Where dropped journeys were left, biggest first, with what the customers did just before."""
    condition, parameters = filters.where()
    return _rows(
        client,
        "SELECT d.phase AS phase, d.channel AS channel, d.action AS action, d.detail AS detail, "
        "count() AS dropped_journeys, "
        "topK(3)(concat(d.previous_channel, ': ', d.previous_action)) AS did_just_before "
        "FROM (SELECT journey_id, dropoff_event_id FROM journeys "
        f"      WHERE status = 'dropped' AND {condition}) AS j "
        "INNER JOIN touchpoint_details AS d ON d.event_id = j.dropoff_event_id "
        "GROUP BY phase, channel, action, detail "
        "ORDER BY dropped_journeys DESC, phase, channel, action, detail LIMIT {limit:UInt32}",
        parameters | {"limit": limit},
    )


def flows(client: Client, filters: Filters) -> dict[str, Any]:
    """Sankey links: phase to next phase reached, and the last phase to how the journey ended."""
    condition, parameters = filters.journeys()
    links = _rows(
        client,
        "SELECT from_phase AS source, to_phase AS target, count() AS journeys "
        f"FROM phase_transitions WHERE {condition} GROUP BY source, target ORDER BY source, target",
        parameters,
    )
    where, parameters = filters.where()
    ends = _rows(
        client,
        "SELECT phases_reached[-1] AS source, status AS target, count() AS journeys "
        f"FROM journeys WHERE {where} AND length(phases_reached) > 0 "
        "GROUP BY source, target ORDER BY source, target",
        parameters,
    )
    return {"links": links + ends}


def switch_matrix(client: Client, filters: Filters) -> list[dict[str, Any]]:
    condition, parameters = filters.journeys()
    return _rows(
        client,
        "SELECT from_channel, to_channel, count() AS switches, "
        "round(avg(after_failure), 4) AS share_after_failure, "
        f"quantileExact(0.5)(gap_seconds) / 3600 AS median_gap_hours FROM channel_switches WHERE {condition} "
        "GROUP BY from_channel, to_channel ORDER BY from_channel, to_channel",
        parameters,
    )


def emotion_line(client: Client, filters: Filters) -> list[dict[str, Any]]:
    """Mean sentiment per phase (the line) with the lowest and highest touchpoint type in it."""
    condition, parameters = filters.journeys()
    rows = _rows(
        client,
        "SELECT phase, round(avg(sentiment), 3) AS mean_sentiment, count() AS touchpoints, "
        "argMin(concat(channel, ': ', action), sentiment) AS low_point, "
        "round(toFloat64(min(sentiment)), 3) AS low, "
        "argMax(concat(channel, ': ', action), sentiment) AS high_point, "
        "round(toFloat64(max(sentiment)), 3) AS high "
        f"FROM touchpoints WHERE sentiment IS NOT NULL AND {condition} GROUP BY phase",
        parameters,
    )
    by_phase = {r["phase"]: r for r in rows}
    return [by_phase[phase] | {"label": PHASE_LABELS[phase]} for phase in PHASES if phase in by_phase]


def moments_of_truth(client: Client, limit: int = 10) -> list[dict[str, Any]]:
    """Over all journeys (the minimum-support guard needs the whole population)."""
    return _rows(
        client,
        "SELECT channel, action, journeys_with, conversion_with, conversion_lift, dropoff_with, dropoff_lift "
        "FROM moments_of_truth LIMIT {limit:UInt32}",
        {"limit": limit},
    )


def dropoff_examples(
    client: Client, filters: Filters, point: dict[str, str], limit: int = 20
) -> list[dict[str, Any]]:
    """Journeys dropped at one point (phase, channel, action, detail), most recent first."""
    condition, parameters = filters.where()
    for key in ("phase", "channel", "action", "detail"):
        if key not in point:
            raise FilterError(f"a drop-off point needs {key}")
    return _rows(
        client,
        "SELECT j.customer_id AS customer_id, j.journey_id AS journey_id, j.persona AS persona, "
        "j.ended_at AS ended_at, j.touchpoint_count AS touchpoints "
        f"FROM (SELECT * FROM journeys WHERE status = 'dropped' AND {condition}) AS j "
        "INNER JOIN touchpoint_details AS d ON d.event_id = j.dropoff_event_id "
        "WHERE d.phase = {phase:String} AND d.channel = {point_channel:String} "
        "AND d.action = {action:String} AND d.detail = {detail:String} "
        "ORDER BY j.ended_at DESC, j.journey_id LIMIT {limit:UInt32}",
        parameters
        | {
            "phase": point["phase"],
            "point_channel": point["channel"],
            "action": point["action"],
            "detail": point["detail"],
            "limit": limit,
        },
    )


def timeline(client: Client, customer_id: str) -> list[dict[str, Any]]:
    """One customer's touchpoints across channels, in event time."""
    return _rows(
        client,
        "SELECT occurred_at, journey_id, channel, action, phase, detail, sentiment, is_failure, is_passive "
        "FROM touchpoint_details WHERE customer_id = {customer:String} ORDER BY occurred_at, seq",
        {"customer": customer_id},
    )


def filter_options(client: Client) -> dict[str, Any]:
    personas = [
        row[0] for row in client.query("SELECT DISTINCT persona FROM journeys ORDER BY persona").result_rows
    ]
    first, last = client.query("SELECT min(started_at), max(started_at) FROM journeys").result_rows[0]
    return {
        "personas": [p for p in personas if p],
        "channels": list(CHANNELS),
        "first_day": first.date().isoformat() if first else None,
        "last_day": last.date().isoformat() if last else None,
    }


def everything(client: Client, filters: Filters) -> dict[str, Any]:
    """All panels at once: what the page loads and what the report embeds."""
    return {
        "overview": overview(client, filters),
        "funnel": funnel(client, filters),
        "dropoffs": dropoff_points(client, filters),
        "flows": flows(client, filters),
        "switches": switch_matrix(client, filters),
        "emotion": emotion_line(client, filters),
        "moments": moments_of_truth(client),
    }


def _round(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)
