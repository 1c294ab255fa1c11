"""Identity graph: stitching rules, event-time determinism, late data, unlinks."""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.identity import (
    IdentityConflict,
    IdentityGraph,
    IdentityMerge,
    IdentityPolicy,
    Key,
    Observation,
    customer_id_for,
    micros,
)
from journeys.store import EventIds

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def anon(value: str) -> Key:
    return ("anonymous_id", value)


def user(value: str) -> Key:
    return ("user_id", value)


def email(value: str) -> Key:
    return ("email", value)


def cid(identifier: Key) -> str:
    return customer_id_for(identifier)


def snapshot(
    graph: IdentityGraph,
) -> tuple[dict[Key, str], tuple[IdentityMerge, ...], tuple[IdentityConflict, ...]]:
    return graph.assignment(), graph.merges, graph.conflicts


def feed(graph: IdentityGraph, observations: Iterable[Observation]) -> IdentityGraph:
    for event_id, occurred_at, identifiers in observations:
        graph.observe(event_id, occurred_at, identifiers)
    return graph


# -- an independent, deliberately naive model of the rules ---------------------------


def reference(
    observations: Iterable[Observation], unlinks: Iterable[Key], policy: IdentityPolicy
) -> tuple[dict[Key, str], tuple[IdentityMerge, ...], tuple[IdentityConflict, ...]]:
    """Fold the sorted observations with plain sets: the specification of the graph."""
    unlinked = set(unlinks)
    unique: dict[str, Observation] = {}
    for observation in observations:
        unique.setdefault(observation[0], observation)
    ordered = sorted(unique.values(), key=lambda o: (o[1], o[0]))

    def strength(key: Key) -> tuple[int, str, str]:
        return (policy.rank(key[0]), key[0], key[1])

    first: dict[Key, tuple[datetime, str]] = {}
    for event_id, occurred_at, identifiers in ordered:
        for key in identifiers:
            if not policy.is_junk(key[1]):
                first.setdefault(key, (occurred_at, event_id))

    def age(key: Key) -> tuple[tuple[datetime, str], Key]:
        return (first[key], key)

    group_of: dict[Key, frozenset[Key]] = {}
    merges: list[IdentityMerge] = []
    conflicts: list[IdentityConflict] = []
    for event_id, occurred_at, identifiers in ordered:
        usable = sorted({k for k in identifiers if not policy.is_junk(k[1])}, key=strength)
        for key in usable:
            group_of.setdefault(key, frozenset({key}))
        linkable = [k for k in usable if k not in unlinked]
        for key in linkable[1:]:
            anchor = linkable[0]
            group_a, group_b = group_of[key], group_of[anchor]
            if group_a == group_b:
                continue
            root_a, root_b = min(group_a, key=age), min(group_b, key=age)
            values_a = {t: v for t, v in group_a if t in policy.unique_types}
            values_b = {t: v for t, v in group_b if t in policy.unique_types}
            clashes = sorted(t for t in values_a.keys() & values_b.keys() if values_a[t] != values_b[t])
            reason = f"unique_type:{clashes[0]}" if clashes else None
            if reason is None and len(group_a) + len(group_b) > policy.max_group_size:
                reason = "group_size_cap"
            if reason:
                conflicts.append(
                    IdentityConflict(event_id, occurred_at, (key, anchor), (cid(root_a), cid(root_b)), reason)
                )
                continue
            survivor, absorbed = sorted([root_a, root_b], key=age)
            if first[absorbed] != (occurred_at, event_id):
                merges.append(
                    IdentityMerge(event_id, occurred_at, cid(survivor), cid(absorbed), (key, anchor))
                )
            merged = group_a | group_b
            for member in merged:
                group_of[member] = merged
    assignment = {key: cid(min(group, key=age)) for key, group in group_of.items()}
    return assignment, tuple(merges), tuple(conflicts)


# -- customer ids -------------------------------------------------------------------------


def test_customer_id_is_sha256_of_type_and_value() -> None:
    expected = "cus_" + hashlib.sha256(b"user_id\x1fu-1").hexdigest()[:16]
    assert customer_id_for(user("u-1")) == expected
    assert re.fullmatch(r"cus_[0-9a-f]{16}", expected)


# -- linking shapes -------------------------------------------------------------------------


def test_chain_links_into_one_customer_named_after_the_oldest_identifier() -> None:
    graph = feed(
        IdentityGraph(),
        [
            ("e1", at(1), [anon("a"), anon("b")]),
            ("e2", at(2), [anon("b"), anon("c")]),
            ("e3", at(3), [anon("c"), anon("d")]),
        ],
    )
    # a and b are both first seen in e1; the tie is broken by (type, value).
    assert {graph.customer_of(anon(v)) for v in "abcd"} == {cid(anon("a"))}
    assert graph.members(cid(anon("a"))) == tuple(anon(v) for v in "abcd")
    assert graph.customers() == frozenset({cid(anon("a"))})
    assert graph.merges == ()  # every link brought in a newcomer: no customer was absorbed


def test_fan_in_many_anonymous_ids_to_one_user() -> None:
    graph = IdentityGraph()
    for i in range(10):
        graph.observe(f"page-{i}", at(i), [anon(f"a{i}")])
    graph.drain_changes()
    for i in range(10):
        graph.observe(f"identify-{i}", at(100 + i), [anon(f"a{i}"), user("u")])
    customer = cid(anon("a0"))  # the oldest identifier, not the user_id
    assert graph.drain_changes() == {
        user("u"): (None, customer),
        **{anon(f"a{i}"): (cid(anon(f"a{i}")), customer) for i in range(1, 10)},
    }
    assert graph.customer_of(user("u")) == customer
    assert {graph.customer_of(anon(f"a{i}")) for i in range(10)} == {customer}
    assert len(graph.members(customer)) == 11
    assert [m.absorbed_customer_id for m in graph.merges] == [cid(anon(f"a{i}")) for i in range(1, 10)]
    assert {m.surviving_customer_id for m in graph.merges} == {customer}


def test_diamond_closes_without_a_second_merge() -> None:
    graph = IdentityGraph()
    for event_id, minute, value in [("s1", 1, "a"), ("s2", 2, "b"), ("s3", 3, "c"), ("s4", 4, "d")]:
        graph.observe(event_id, at(minute), [anon(value)])
    feed(
        graph,
        [
            ("l1", at(10), [anon("a"), anon("b")]),
            ("l2", at(11), [anon("a"), anon("c")]),
            ("l3", at(12), [anon("b"), anon("d")]),
            ("l4", at(13), [anon("c"), anon("d")]),
        ],
    )
    assert {graph.customer_of(anon(v)) for v in "abcd"} == {cid(anon("a"))}
    assert [m.event_id for m in graph.merges] == ["l1", "l2", "l3"]
    assert graph.conflicts == ()


def test_oldest_root_survives_even_when_its_group_arrives_last() -> None:
    graph = IdentityGraph()
    graph.observe("x1", at(10), [anon("x1"), anon("x2")])
    graph.observe("link", at(20), [anon("x2"), anon("y2")])
    assert graph.customer_of(anon("y2")) == cid(anon("x1"))
    graph.observe("y1", at(5), [anon("y1"), anon("y2")])  # late: y's group is older
    assert {graph.customer_of(anon(v)) for v in ("x1", "x2", "y1", "y2")} == {cid(anon("y1"))}
    assert graph.merges == (
        IdentityMerge("link", at(20), cid(anon("y1")), cid(anon("x1")), (anon("y2"), anon("x2"))),
    )
    assert snapshot(graph) == snapshot(IdentityGraph.rebuild(_observations_of_root_case()))


def _observations_of_root_case() -> list[Observation]:
    return [
        ("x1", at(10), [anon("x1"), anon("x2")]),
        ("link", at(20), [anon("x2"), anon("y2")]),
        ("y1", at(5), [anon("y1"), anon("y2")]),
    ]


def test_late_first_sighting_makes_an_identifier_the_root() -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(10), [anon("a"), anon("b")])
    assert graph.customer_of(anon("b")) == cid(anon("a"))
    graph.drain_changes()
    graph.observe("e0", at(5), [anon("b")])  # b was seen before a after all
    assert graph.customer_of(anon("a")) == cid(anon("b"))
    assert graph.drain_changes() == {
        anon("a"): (cid(anon("a")), cid(anon("b"))),
        anon("b"): (cid(anon("a")), cid(anon("b"))),
    }


# -- policy ----------------------------------------------------------------------------------


def test_unique_type_conflict_is_refused_recorded_and_assigned_by_priority() -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(1), [user("u1"), anon("a")])
    graph.observe("e2", at(2), [anon("a"), user("u2")])
    assert graph.customer_of(user("u1")) == graph.customer_of(anon("a")) == cid(anon("a"))
    assert graph.customer_of(user("u2")) == cid(user("u2"))
    assert graph.conflicts == (
        IdentityConflict(
            "e2", at(2), (anon("a"), user("u2")), (cid(anon("a")), cid(user("u2"))), "unique_type:user_id"
        ),
    )
    assert graph.merges == ()
    # The touchpoint carrying the refused pair goes to its user_id's customer.
    assert graph.customer_for([anon("a"), user("u2")]) == cid(user("u2"))


def test_two_user_ids_on_one_touchpoint_conflict_but_other_ids_still_link() -> None:
    graph = IdentityGraph()
    graph.observe("alias", at(1), [user("u2"), user("u1"), email("h")])
    assert graph.conflicts[0].reason == "unique_type:user_id"
    assert graph.conflicts[0].identifiers == (user("u2"), user("u1"))  # anchor u1: value order
    assert graph.customer_of(email("h")) == graph.customer_of(user("u1"))
    assert graph.customer_of(user("u2")) == cid(user("u2"))


def test_same_user_id_value_is_no_conflict() -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(1), [user("u1"), anon("a")])
    graph.observe("e2", at(2), [user("u1"), anon("b")])
    graph.observe("e3", at(3), [anon("a"), anon("b")])
    assert graph.conflicts == ()
    assert len(graph.members(cid(anon("a")))) == 3


def test_extra_unique_types_are_configurable() -> None:
    graph = IdentityGraph(IdentityPolicy(unique_types=frozenset({"user_id", "email"})))
    graph.observe("e1", at(1), [email("h1"), anon("a")])
    graph.observe("e2", at(2), [email("h2"), anon("a")])
    assert graph.conflicts[0].reason == "unique_type:email"


@pytest.mark.parametrize("junk", [anon("undefined"), user("0"), user("null"), anon("  NULL "), anon("")])
def test_junk_values_are_ignored(junk: Key) -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(1), [junk, anon("a")])
    graph.observe("e2", at(2), [junk, anon("b")])
    assert graph.customer_of(junk) is None
    assert graph.customer_of(anon("a")) != graph.customer_of(anon("b"))
    assert len(graph) == 2
    assert graph.customer_for([junk, anon("a")]) == cid(anon("a"))
    with pytest.raises(ValueError, match="no usable identifier"):
        graph.customer_for([junk])
    with pytest.raises(ValueError):
        graph.customer_for([])


def test_only_junk_observation_changes_nothing() -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(1), [user("null"), anon("undefined")])
    assert len(graph) == 0
    assert graph.drain_changes() == {}


def test_group_size_cap_refuses_and_records() -> None:
    graph = IdentityGraph(IdentityPolicy(max_group_size=3))
    feed(
        graph,
        [
            ("e1", at(1), [anon("a"), anon("b")]),
            ("e2", at(2), [anon("b"), anon("c")]),
            ("e3", at(3), [anon("c"), anon("d")]),
        ],
    )
    assert graph.members(cid(anon("a"))) == (anon("a"), anon("b"), anon("c"))
    assert graph.customer_of(anon("d")) == cid(anon("d"))
    assert graph.conflicts == (
        IdentityConflict(
            "e3", at(3), (anon("d"), anon("c")), (cid(anon("d")), cid(anon("a"))), "group_size_cap"
        ),
    )


def test_customer_for_uses_priority_then_value_and_unknown_ids_stand_alone() -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(1), [anon("a"), email("h")])
    assert graph.customer_for([anon("a"), email("h")]) == cid(anon("a"))
    assert graph.customer_for([anon("zz"), email("h")]) == cid(anon("a"))  # email outranks anonymous_id
    assert graph.customer_for([anon("b"), anon("a")]) == cid(anon("a"))  # value tie-break
    assert graph.customer_for([user("new")]) == cid(user("new"))


# -- event time and late data ----------------------------------------------------------------


def test_late_link_rewrites_history_and_reports_changes() -> None:
    graph = IdentityGraph()
    feed(
        graph,
        [
            ("p1", at(1), [anon("a")]),
            ("p2", at(2), [anon("b")]),
            ("login", at(3), [user("u"), anon("b")]),
            ("other", at(4), [user("v"), anon("c")]),
        ],
    )
    assert graph.customer_of(user("u")) == cid(anon("b"))
    first_drain = graph.drain_changes()
    assert first_drain[user("u")] == (None, cid(anon("b")))
    assert graph.drain_changes() == {}

    graph.observe("late", at(2.5), [anon("b"), anon("a")])
    assert graph.customer_of(user("u")) == graph.customer_of(anon("b")) == cid(anon("a"))
    assert graph.merges == (
        IdentityMerge("late", at(2.5), cid(anon("a")), cid(anon("b")), (anon("b"), anon("a"))),
    )
    assert graph.drain_changes() == {
        anon("b"): (cid(anon("b")), cid(anon("a"))),
        user("u"): (cid(anon("b")), cid(anon("a"))),
    }
    assert graph.customer_of(user("v")) == cid(anon("c"))


def test_late_observation_can_turn_an_accepted_link_into_a_conflict() -> None:
    graph = IdentityGraph()
    graph.observe("e10", at(10), [user("u1"), anon("x")])
    graph.drain_changes()
    graph.observe("e5", at(5), [user("u2"), anon("x")])  # u2 claimed x first
    assert graph.customer_of(user("u2")) == graph.customer_of(anon("x")) == cid(anon("x"))
    assert graph.customer_of(user("u1")) == cid(user("u1"))
    assert [(c.event_id, c.reason) for c in graph.conflicts] == [("e10", "unique_type:user_id")]
    assert graph.drain_changes() == {
        user("u1"): (cid(anon("x")), cid(user("u1"))),
        user("u2"): (None, cid(anon("x"))),
    }


def test_late_refusal_can_free_a_later_link() -> None:
    graph = IdentityGraph(IdentityPolicy(max_group_size=2))
    graph.observe("e2", at(2), [anon("a"), anon("b")])
    graph.observe("e3", at(3), [anon("b"), anon("c")])  # refused: cap
    assert graph.customer_of(anon("c")) == cid(anon("c"))
    graph.observe("e1", at(1), [anon("b"), anon("c")])  # b-c is older: a-b is refused instead
    assert graph.customer_of(anon("c")) == cid(anon("b"))
    assert graph.customer_of(anon("a")) == cid(anon("a"))
    assert [c.event_id for c in graph.conflicts] == ["e2"]


def test_in_order_stream_never_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = IdentityGraph._replay

    def counting(self: IdentityGraph, rep: int, **kwargs: object) -> None:
        calls.append(rep)
        original(self, rep, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(IdentityGraph, "_replay", counting)
    graph = IdentityGraph()
    for i in range(500):
        graph.observe(f"e{i}", at(i), [anon(f"a{i}"), user(f"u{i % 50}")])
    # Globally late, but later than everything in the components it touches.
    graph.observe("other", at(0.5), [anon("fresh1"), anon("fresh2")])
    assert calls == []
    graph.observe("late", at(0.5), [anon("a3"), anon("fresh9")])
    assert len(calls) == 1


def test_duplicates_are_idempotent() -> None:
    observations: list[Observation] = [
        ("p1", at(1), [anon("a")]),
        ("login", at(3), [user("u"), anon("a")]),
        ("clash", at(4), [user("v"), anon("a")]),
        ("late", at(2), [anon("a"), anon("b")]),
    ]
    once = feed(IdentityGraph(), observations)
    twice = feed(IdentityGraph(), observations + observations[::-1])
    assert snapshot(twice) == snapshot(once)
    assert len(twice.conflicts) == 1


# -- unlink ----------------------------------------------------------------------------------


def test_unlink_stands_the_identifier_alone_and_rebuilds_the_group() -> None:
    observations: list[Observation] = [
        ("e1", at(1), [user("u"), anon("a")]),
        ("e2", at(2), [user("u"), anon("b")]),
        ("e3", at(3), [anon("b"), anon("c")]),
    ]
    graph = feed(IdentityGraph(), observations)
    assert graph.customers() == frozenset({cid(anon("a"))})
    graph.drain_changes()
    changed = graph.unlink(anon("b"))
    assert changed == frozenset({cid(anon("a")), cid(anon("b")), cid(anon("c"))})
    assert graph.members(cid(anon("a"))) == (anon("a"), user("u"))
    assert graph.customer_of(anon("b")) == cid(anon("b"))
    assert graph.customer_of(anon("c")) == cid(anon("c"))
    assert set(graph.drain_changes()) == {anon("b"), anon("c")}
    assert graph.unlinked == frozenset({anon("b")})
    # Later observations do not link through it either.
    graph.observe("e4", at(4), [anon("b"), anon("d")])
    assert graph.customer_of(anon("d")) == cid(anon("d"))
    assert snapshot(graph) == snapshot(
        IdentityGraph.rebuild([*observations, ("e4", at(4), [anon("b"), anon("d")])], [anon("b")])
    )
    assert graph.unlink(anon("b")) == frozenset()


def test_unlink_recomputes_merges_and_conflicts() -> None:
    observations: list[Observation] = [
        ("p1", at(1), [anon("a")]),
        ("p2", at(2), [user("u")]),
        ("join", at(3), [user("u"), anon("a")]),
        ("clash", at(4), [user("v"), anon("a")]),
    ]
    graph = feed(IdentityGraph(), observations)
    assert [m.event_id for m in graph.merges] == ["join"]
    assert [c.event_id for c in graph.conflicts] == ["clash"]
    graph.unlink(anon("a"))
    assert graph.merges == () and graph.conflicts == ()
    assert snapshot(graph) == snapshot(IdentityGraph.rebuild(observations, [anon("a")]))


def test_unlinking_the_anchor_keeps_the_other_identifiers_linked() -> None:
    graph = IdentityGraph()
    graph.observe("e1", at(1), [user("u"), anon("a"), anon("b")])
    graph.unlink(user("u"))
    assert graph.customer_of(anon("b")) == graph.customer_of(anon("a")) == cid(anon("a"))
    assert graph.customer_of(user("u")) == cid(user("u"))


def test_unlink_before_first_sighting_applies_when_it_arrives() -> None:
    graph = IdentityGraph()
    assert graph.unlink(("device_id", "shared-kiosk")) == frozenset()
    graph.observe("e1", at(1), [("device_id", "shared-kiosk"), anon("a")])
    graph.observe("e2", at(2), [("device_id", "shared-kiosk"), anon("b")])
    assert graph.customer_of(anon("a")) != graph.customer_of(anon("b"))


# -- properties ------------------------------------------------------------------------------

ALPHABET: list[Key] = [
    *(anon(f"a{i}") for i in range(5)),
    *(user(f"u{i}") for i in range(3)),
    *(email(f"e{i}") for i in range(2)),
    ("device_id", "d0"),
    anon("null"),
    user("0"),
]
POLICIES = [
    IdentityPolicy(),
    IdentityPolicy(max_group_size=3),
    IdentityPolicy(unique_types=frozenset({"user_id", "email"}), max_group_size=4),
]


@st.composite
def observation_sets(draw: st.DrawFn) -> list[Observation]:
    rows = draw(
        st.lists(
            st.tuples(st.integers(0, 6), st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=3)),
            max_size=14,
        )
    )
    return [(f"ev{i:02d}", at(minute), identifiers) for i, (minute, identifiers) in enumerate(rows)]


def apply_with_drains(
    graph: IdentityGraph, steps: Sequence[Observation | Key], drains: Sequence[bool]
) -> dict[Key, str]:
    """Run steps, draining changes at random points into a consumer's view, and check it."""
    view: dict[Key, str] = {}
    for step, drain in zip(steps, drains, strict=True):
        if len(step) == 3:
            graph.observe(*step)  # type: ignore[misc]
        else:
            graph.unlink(step)  # type: ignore[arg-type]
        if drain:
            for identifier, (old, new) in graph.drain_changes().items():
                assert view.get(identifier) == old
                view[identifier] = new
            assert view == graph.assignment()
    for identifier, (old, new) in graph.drain_changes().items():
        assert view.get(identifier) == old
        view[identifier] = new
    assert view == graph.assignment()
    return view


@settings(max_examples=300, deadline=None)
@given(observations=observation_sets(), policy=st.sampled_from(POLICIES), data=st.data())
def test_any_arrival_order_gives_the_sorted_result(
    observations: list[Observation], policy: IdentityPolicy, data: st.DataObject
) -> None:
    arrival = data.draw(st.permutations(observations))
    drains = data.draw(st.lists(st.booleans(), min_size=len(arrival), max_size=len(arrival)))
    graph = IdentityGraph(policy)
    apply_with_drains(graph, arrival, drains)
    expected = reference(observations, (), policy)
    assert snapshot(graph) == expected
    assert snapshot(IdentityGraph.rebuild(observations, (), policy)) == expected
    assert snapshot(feed(IdentityGraph(policy), sorted(observations, key=lambda o: (o[1], o[0])))) == expected


@settings(max_examples=200, deadline=None)
@given(observations=observation_sets(), policy=st.sampled_from(POLICIES), data=st.data())
def test_redelivery_changes_nothing(
    observations: list[Observation], policy: IdentityPolicy, data: st.DataObject
) -> None:
    repeats = data.draw(st.lists(st.sampled_from(observations), max_size=6)) if observations else []
    arrival = data.draw(st.permutations(observations + repeats))
    graph = feed(IdentityGraph(policy), arrival)
    assert snapshot(graph) == snapshot(IdentityGraph.rebuild(observations, (), policy))


@settings(max_examples=200, deadline=None)
@given(observations=observation_sets(), policy=st.sampled_from(POLICIES), data=st.data())
def test_incremental_equals_rebuild(
    observations: list[Observation], policy: IdentityPolicy, data: st.DataObject
) -> None:
    arrival = data.draw(st.permutations(observations))
    graph = feed(IdentityGraph(policy), arrival)
    rebuilt = IdentityGraph.rebuild(observations, (), policy)
    assert snapshot(graph) == snapshot(rebuilt)
    assert graph.customers() == rebuilt.customers()
    for customer in rebuilt.customers():
        assert graph.members(customer) == rebuilt.members(customer)
    for _, _, identifiers in observations:
        usable = [k for k in identifiers if not policy.is_junk(k[1])]
        if usable:
            assert graph.customer_for(identifiers) == rebuilt.customer_for(identifiers)


@settings(max_examples=300, deadline=None)
@given(observations=observation_sets(), policy=st.sampled_from(POLICIES), data=st.data())
def test_unlinks_at_any_point_equal_rebuild(
    observations: list[Observation], policy: IdentityPolicy, data: st.DataObject
) -> None:
    unlinks = data.draw(st.lists(st.sampled_from(ALPHABET), max_size=3))
    steps: list[Observation | Key] = data.draw(st.permutations([*observations, *unlinks]))
    drains = data.draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    graph = IdentityGraph(policy)
    apply_with_drains(graph, steps, drains)
    expected = reference(observations, unlinks, policy)
    assert snapshot(graph) == expected
    assert snapshot(IdentityGraph.rebuild(observations, unlinks, policy)) == expected
    assert graph.unlinked == frozenset(unlinks)


@settings(max_examples=300, deadline=None)
@given(observations=observation_sets(), policy=st.sampled_from(POLICIES), data=st.data())
def test_a_graph_over_the_aggregates_event_table_equals_the_reference(
    observations: list[Observation], policy: IdentityPolicy, data: st.DataObject
) -> None:
    """The aggregate's way in: events named by their row in a shared event id table, appended in
    arrival order (so row order is not event-time or event-id order), times in microseconds;
    redeliveries, unlinks and drains at any point."""
    unlinks = data.draw(st.lists(st.sampled_from(ALPHABET), max_size=2))
    repeats = data.draw(st.lists(st.sampled_from(observations), max_size=3)) if observations else []
    steps: list[Observation | Key] = data.draw(st.permutations([*observations, *repeats, *unlinks]))
    drains = data.draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    table, times = EventIds(), array("q")
    graph = IdentityGraph(policy, events=table, times=times)
    view: dict[Key, str] = {}
    for step, drain in zip(steps, drains, strict=True):
        if len(step) == 3:
            event_id, occurred_at, identifiers = step  # type: ignore[misc]
            usable = graph.usable(identifiers)
            if usable and event_id not in table:
                times.append(micros(occurred_at))
                graph.observe_row(table.append(event_id), usable)
        else:
            graph.unlink(step)  # type: ignore[arg-type]
        if drain:
            for identifier, (old, new) in graph.drain_changes().items():
                assert view.get(identifier) == old
                view[identifier] = new
            assert view == graph.assignment()
    assert snapshot(graph) == reference(observations, unlinks, policy)
    for merge in graph.merges:  # records name the event by its id and time, as given
        assert merge.occurred_at.tzinfo is UTC


def test_a_shared_event_table_takes_no_event_ids_from_observe() -> None:
    graph = IdentityGraph(events=EventIds(), times=array("q"))
    with pytest.raises(KeyError):
        graph.observe("e1", at(0), [anon("a1"), user("u1")])


def test_a_rebuilt_graph_reports_only_what_changes_after_it() -> None:
    graph = IdentityGraph.rebuild([("e1", at(0), [anon("a1"), user("u1")]), ("e2", at(1), [anon("a2")])])
    assert graph.drain_changes() == {}
    graph.observe("e3", at(2), [anon("a2"), user("u1"), email("m1")])
    assert graph.drain_changes() == {
        anon("a2"): (cid(anon("a2")), cid(anon("a1"))),  # merged into the older customer
        email("m1"): (None, cid(anon("a1"))),  # new
    }
    assert graph.drain_changes() == {}


def test_identifiers_are_found_after_the_identifier_table_grows() -> None:
    """Hundreds of identifiers (the table starts at 64 slots), out of order: the same as the
    reference model, and every identifier is found again."""
    observations: list[Observation] = [
        (
            f"ev{index:04d}",
            at((index * 37) % 101),
            [anon(f"a{index}"), user(f"u{index // 4}"), email(f"e{index % 7}")],
        )
        for index in range(400)
    ]
    policy = IdentityPolicy(max_group_size=6)
    graph = feed(IdentityGraph(policy), reversed(observations))
    assert snapshot(graph) == reference(observations, (), policy)
    assert all(graph.customer_of(anon(f"a{index}")) is not None for index in range(400))
    assert graph.customer_of(anon("a400")) is None and len(graph) == 400 + 100 + 7
