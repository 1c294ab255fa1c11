"""The aggregate's columnar storage gives back exactly what was admitted, and the aggregate
decides duplicates and conflicts as it did when it kept the touchpoints themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys import store
from journeys.fold import ClassifiedTouchpoint
from journeys.phases import Classification
from journeys.reconstruct import Admission, Reconstruction
from journeys.store import EventIds, TouchpointColumns
from journeys.touchpoint import Channel, CompactTouchpoint, Phase, properties_json

PROPERTY_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])
TIMES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=ZONES
)  # aware, any precision, in and out of UTC
FLOATS = st.none() | st.floats(-1e12, 1e12, allow_nan=False) | st.sampled_from([0.0, -0.0])
TEXTS = st.none() | st.text(max_size=8)
IDENTIFIERS = st.lists(
    st.tuples(
        st.sampled_from(["user_id", "email", "anonymous_id"]),
        st.from_regex(r"[a-z][0-9]{2,5}", fullmatch=True),
    ),
    min_size=1,
    max_size=3,
).map(tuple)
CLASSIFICATIONS = st.builds(
    Classification,
    phase=st.none() | st.sampled_from(Phase),
    rule=TEXTS,
    failure=st.booleans(),
    failure_rule=TEXTS,
    passive=st.booleans(),
    sentiment=st.none() | st.floats(-1, 1) | st.sampled_from([0.0, -0.0, 0]),
    conversion=st.booleans(),
)
COMPACT = st.builds(
    CompactTouchpoint,
    event_id=st.text(min_size=1, max_size=20),
    occurred_at=TIMES,
    received_at=st.none() | TIMES,
    channel=st.sampled_from(Channel),
    source=st.sampled_from(["segment", "sendgrid", "twilio"]),
    action=st.text(min_size=1, max_size=10),
    identifiers=IDENTIFIERS,
    properties_json=st.dictionaries(st.text(max_size=6), PROPERTY_VALUES, max_size=3).map(properties_json),
    persona=TEXTS,
    sentiment=st.none() | st.floats(-1, 1),
    value=FLOATS,
    currency=st.none() | st.sampled_from(["EUR", "USD"]),
)
STEPS = st.builds(ClassifiedTouchpoint, COMPACT, CLASSIFICATIONS)


def _same_types(kept: CompactTouchpoint, given: CompactTouchpoint) -> bool:
    return all(type(a) is type(b) for a, b in zip(kept, given, strict=True))


def _exactly(kept: ClassifiedTouchpoint, given: ClassifiedTouchpoint) -> bool:
    """Equal, and alike where equality is blind: the sign of a zero (storage writes -0 as "-0")."""
    times = ("occurred_at", "received_at")  # equal instants, possibly in another zone: compared by ==
    return (
        kept == given
        and repr(kept.classification) == repr(given.classification)
        and all(
            repr(getattr(kept.touchpoint, name)) == repr(getattr(given.touchpoint, name))
            for name in CompactTouchpoint._fields
            if name not in times
        )
    )


@settings(max_examples=300)
@given(steps=st.lists(STEPS, max_size=12, unique_by=lambda step: step.touchpoint.event_id))
def test_every_row_gives_back_the_step_that_was_appended(steps: list[ClassifiedTouchpoint]) -> None:
    columns = TouchpointColumns()
    rows = [columns.append(step) for step in steps]
    assert rows == list(range(len(steps)))
    assert len(columns) == len(steps)
    assert list(columns.event_ids()) == [step.touchpoint.event_id for step in steps]
    for row, step in zip(rows, steps, strict=True):
        kept = columns.step(row)
        assert _exactly(kept, step)  # every field, the classification included
        assert _same_types(kept.touchpoint, step.touchpoint)
        assert kept.touchpoint.occurred_at.tzinfo is UTC
        assert columns.identifiers(row) == step.touchpoint.identifiers
        assert columns.row_of(step.touchpoint.event_id) == row
        assert step.touchpoint.event_id in columns
    assert columns.row_of("no such event") is None


@given(at=TIMES)
def test_timestamps_go_through_microseconds_exactly(at: datetime) -> None:
    step = ClassifiedTouchpoint(
        CompactTouchpoint(
            "e", at, at, Channel.WEB, "segment", "Page Viewed", (("anonymous_id", "a"),), "{}",
            None, None, None, None,
        ),
        Classification(),
    )  # fmt: skip
    columns = TouchpointColumns()
    kept = columns.step(columns.append(step)).touchpoint
    assert kept.occurred_at == at and kept.received_at == at


def test_zero_keeps_its_sign_and_none_stays_none() -> None:
    step = ClassifiedTouchpoint(
        CompactTouchpoint(
            "e", datetime(2026, 1, 1, tzinfo=UTC), None, Channel.WEB, "segment", "Page Viewed",
            (("anonymous_id", "a"),), "{}", None, -0.0, None, None,
        ),
        Classification(),
    )  # fmt: skip
    columns = TouchpointColumns()
    kept = columns.step(columns.append(step)).touchpoint
    assert kept.sentiment == 0.0 and str(kept.sentiment) == "-0.0"
    assert kept.value is None and kept.received_at is None and kept.persona is None


def test_identical_identifier_sets_and_properties_are_kept_once() -> None:
    columns = TouchpointColumns()
    for index in range(3):
        identifiers = (("anonymous_id", "a" + str(1)),)  # equal, made anew each time
        properties = properties_json({"path": "/p/" + str(7)})
        columns.append(
            ClassifiedTouchpoint(
                CompactTouchpoint(
                    f"e{index}", datetime(2026, 1, 1, tzinfo=UTC), None, Channel.WEB, "segment",
                    "Page Viewed", identifiers, properties, None, None, None, None,
                ),
                Classification(),
            )
        )  # fmt: skip
    first, second = columns.step(0).touchpoint, columns.step(2).touchpoint
    assert first.identifiers is second.identifiers
    assert first.properties_json == second.properties_json == '{"path":"/p/7"}'
    assert len(columns._property_texts) == 1  # the text is kept once, as UTF-8


@settings(max_examples=100)
@given(
    texts=st.lists(st.sampled_from(['{"a":1}', '{"a":2}', "{}", '{"é":"\\ud800"}', '{"b":[]}']), max_size=30)
)
def test_properties_come_back_when_the_sharing_table_starts_again(texts: list[str]) -> None:
    """A table of two: texts past it are kept again (memory, never a result)."""
    columns = TouchpointColumns()
    base = ClassifiedTouchpoint(
        CompactTouchpoint(
            "", datetime(2026, 1, 1, tzinfo=UTC), None, Channel.WEB, "segment", "Page Viewed",
            (("anonymous_id", "a"),), "{}", None, None, None, None,
        ),
        Classification(),
    )  # fmt: skip
    original = store._MAX_SHARED_TEXTS
    store._MAX_SHARED_TEXTS = 2
    try:
        for index, text in enumerate(texts):
            columns.append(
                base._replace(touchpoint=base.touchpoint._replace(event_id=f"e{index}", properties_json=text))
            )
    finally:
        store._MAX_SHARED_TEXTS = original
    assert [columns.step(row).touchpoint.properties_json for row in range(len(texts))] == texts


@settings(max_examples=300)
@given(first=STEPS, second=COMPACT, data=st.data())
def test_duplicates_and_conflicts_are_decided_on_the_whole_content(
    first: ClassifiedTouchpoint, second: CompactTouchpoint, data: st.DataObject
) -> None:
    """The second delivery of an event id: a copy with some fields of another touchpoint."""
    original = first.touchpoint
    changed = data.draw(st.sets(st.sampled_from(CompactTouchpoint._fields[1:])), label="changed fields")
    again = original._replace(**{name: getattr(second, name) for name in changed})
    reconstruction = Reconstruction(rules=None)  # type: ignore[arg-type]  # admit_classified needs none
    assert reconstruction.admit_classified(first) is Admission.NEW
    expected = Admission.DUPLICATE if original.same_event(again) else Admission.CONFLICT
    assert reconstruction.admit_classified(ClassifiedTouchpoint(again, first.classification)) is expected
    assert reconstruction.step(original.event_id) == first  # the first one stays
    assert len(reconstruction) == 1


def test_event_ids_are_found_after_the_table_grows() -> None:
    columns = TouchpointColumns()
    base = ClassifiedTouchpoint(
        CompactTouchpoint(
            "", datetime(2026, 1, 1, tzinfo=UTC), None, Channel.EMAIL, "sendgrid", "open",
            (("email", "h1"),), "{}", None, None, None, None,
        ),
        Classification(),
    )  # fmt: skip
    event_ids = [f"sg-{index}" for index in range(5000)]  # the table starts at 1,024 slots
    for event_id in event_ids:
        columns.append(base._replace(touchpoint=base.touchpoint._replace(event_id=event_id)))
    assert [columns.row_of(event_id) for event_id in event_ids] == list(range(5000))
    assert columns.row_of("sg-5000") is None and "sg-5000" not in columns and 5 not in columns
    assert columns.step(4321).touchpoint.event_id == "sg-4321"


def test_classifications_that_differ_only_in_the_sign_of_zero_are_kept_apart() -> None:
    columns = TouchpointColumns()
    touchpoint = CompactTouchpoint(
        "e0", datetime(2026, 1, 1, tzinfo=UTC), None, Channel.SOCIAL, "social", "social.mention",
        (("social_handle", "x:a"),), "{}", None, None, None, None,
    )  # fmt: skip
    for index, sentiment in enumerate([0.0, -0.0, 0, -0.0]):
        columns.append(
            ClassifiedTouchpoint(
                touchpoint._replace(event_id=f"e{index}"), Classification(sentiment=sentiment)
            )
        )
    kept = [columns.step(row).classification.sentiment for row in range(4)]
    assert [repr(value) for value in kept] == ["0.0", "-0.0", "0", "-0.0"]


# Any str at all, lone surrogates and characters outside the BMP included (the model does not
# restrict event ids), and long enough to span many probes of the table.
EVENT_IDS = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)


@settings(max_examples=300)
@given(event_ids=st.lists(EVENT_IDS, unique=True, max_size=40), absent=EVENT_IDS)
def test_event_ids_come_back_as_given_and_are_found_by_row(event_ids: list[str], absent: str) -> None:
    table = EventIds()
    assert [table.append(event_id) for event_id in event_ids] == list(range(len(event_ids)))
    assert len(table) == len(event_ids)
    assert list(table) == event_ids
    assert [table[row] for row in range(len(event_ids))] == event_ids
    assert [table.row_of(event_id) for event_id in event_ids] == list(range(len(event_ids)))
    if absent not in event_ids:
        assert table.row_of(absent) is None and absent not in table


@settings(max_examples=50)
@given(
    stems=st.lists(st.text(st.characters(codec=None, exclude_categories=()), max_size=4), min_size=1),
    count=st.integers(1000, 3000),
)
def test_event_ids_sharing_prefixes_are_found_after_the_table_grows(stems: list[str], count: int) -> None:
    """Ids alike but for their ends (and of equal length), past the first doubling (1,024 slots):
    every lookup compares the whole encoded id, not a prefix or the length."""
    event_ids = list(dict.fromkeys(f"{stems[index % len(stems)]}-{index:05d}" for index in range(count)))
    table = EventIds()
    for event_id in event_ids:
        table.append(event_id)
    assert [table.row_of(event_id) for event_id in event_ids] == list(range(len(event_ids)))
    assert table.row_of(event_ids[-1] + "0") is None and table.row_of(event_ids[0][:-1]) is None
    assert table[len(event_ids) - 1] == event_ids[-1] and table[0] == event_ids[0]


def test_event_ids_past_the_narrow_offsets_keep_their_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets are 4 bytes until the ids pass 4 GiB, 8 from then on (here: past 100 bytes)."""
    monkeypatch.setattr(store, "_MAX_NARROW_END", 100)
    event_ids = [f"event-{index:03d}" for index in range(40)]  # 9 bytes each
    table = EventIds()
    for event_id in event_ids:
        table.append(event_id)
    assert list(table) == event_ids
    assert [table.row_of(event_id) for event_id in event_ids] == list(range(40))
    assert table[11] == "event-011" and table[12] == "event-012"  # either side of the switch
    assert table._ends.itemsize == 8  # an array('I') would wrap past 4 GiB
