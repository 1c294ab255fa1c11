"""`journeys demo`: generate the demo dataset, reconstruct it, and score it against its ground truth.

The demo is the product's smoke test as much as its showcase: the generator
knows who every event really belongs to (`truth.json`), so the run can say how
well stitching recovered people (B-cubed precision and recall at the event
level) and where the planted pain points rank among the drop-off points.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from ingest.demo import DEFAULT_CUSTOMERS, generate
from processors.config import Settings
from processors.embedded import RunSummary, run
from processors.storage import Target, connect
from processors.summary import top_dropoffs


@dataclass(frozen=True)
class StitchingScore:
    """B-cubed scores of predicted customers against true persons, over events."""

    precision: float
    recall: float
    events: int


@dataclass(frozen=True)
class DemoResult:
    run: RunSummary
    precision: float
    recall: float
    scored_events: int
    pain_point_ranks: dict[str, int | None]
    truth: dict[str, Any]


def bcubed(pairs: Iterable[tuple[str, str]]) -> StitchingScore:
    """B-cubed precision/recall of (predicted cluster, true cluster) per event.

    For each event: precision is the share of its predicted customer's events
    that truly belong to its person; recall the share of its person's events
    that landed in its predicted customer. Both are averaged over events, so a
    wrongly merged crowd or a person split in two both cost in proportion.
    """
    joint: Counter[tuple[str, str]] = Counter(pairs)
    predicted: Counter[str] = Counter()
    true: Counter[str] = Counter()
    for (p, t), n in joint.items():
        predicted[p] += n
        true[t] += n
    events = sum(joint.values())
    if events == 0:
        return StitchingScore(1.0, 1.0, 0)
    precision = sum(n * n / predicted[p] for (p, _), n in joint.items()) / events
    recall = sum(n * n / true[t] for (_, t), n in joint.items()) / events
    return StitchingScore(precision, recall, events)


def score_stitching(client: Client, truth_events: dict[str, str]) -> StitchingScore:
    """Score the stored `touchpoints` (event_id -> customer_id) against the truth map.

    An event the truth knows but storage lacks counts as its own singleton
    customer, so a lost event lowers recall rather than vanishing from the score.
    """
    stored = dict(client.query("SELECT event_id, customer_id FROM touchpoints").result_rows)
    pairs = (
        (stored.get(event_id, f"missing:{event_id}"), person) for event_id, person in truth_events.items()
    )
    return bcubed(pairs)


def pain_point_ranks(client: Client, truth: dict[str, Any], depth: int = 10) -> dict[str, int | None]:
    """1-based rank of each planted pain point among the top drop-off points (None: not in the top)."""
    ranked = [(point.phase, point.channel, point.action) for point in top_dropoffs(client, limit=depth)]
    ranks: dict[str, int | None] = {}
    for pain in truth["pain_points"]:
        key = (pain["dropoff_key"]["phase"], pain["dropoff_key"]["channel"], pain["dropoff_key"]["action"])
        ranks[pain["name"]] = ranked.index(key) + 1 if key in ranked else None
    return ranks


def reset_database(dsn: str) -> None:
    """Drop the demo's database so a demo run always starts from nothing."""
    target = Target.parse(dsn)
    client = connect(dsn)
    client.command(f"DROP DATABASE IF EXISTS `{target.database}`")
    connect(dsn)


def run_demo(
    settings: Settings,
    *,
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = 7,
    directory: Path = Path(".journeys/demo"),
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Generate, reconstruct into `settings.dsn` (after emptying it) and score the result."""
    files = generate(customers=customers, seed=seed).write(directory)
    reset_database(settings.dsn)
    summary = run(list(files.inputs()), settings, command="demo", progress=progress)
    truth = orjson.loads(files.truth.read_bytes())
    client = connect(settings.dsn)
    score = score_stitching(client, truth["events"])
    return DemoResult(
        run=summary,
        precision=score.precision,
        recall=score.recall,
        scored_events=score.events,
        pain_point_ranks=pain_point_ranks(client, truth),
        truth=truth,
    )
