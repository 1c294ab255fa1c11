"""Phase rules: every section, every condition type, validation, and the packaged defaults."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.fold import ClassifiedTouchpoint, JourneyPolicy, fold_journey
from journeys.phases import Classification, PhaseRules, RulesError, parse_phase
from journeys.touchpoint import Channel, CompactTouchpoint, Identifier, Phase, Touchpoint

SOURCES = {"web": "segment", "email": "sendgrid", "phone": "twilio", "social": "social"}


def tp(
    channel: str = "web",
    action: str = "Page Viewed",
    properties: dict[str, Any] | None = None,
    *,
    source: str | None = None,
    sentiment: float | None = None,
) -> Touchpoint:
    return Touchpoint(
        event_id="e1",
        occurred_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        channel=Channel(channel),
        source=source or SOURCES[channel],
        action=action,
        identifiers=[Identifier(type="user_id", value="u1")],
        properties=properties or {},
        sentiment=sentiment,
    )


def rules(**sections: Any) -> PhaseRules:
    return PhaseRules.from_mapping(sections)


def phase_rule(name: str, phase: str, **when: Any) -> dict[str, Any]:
    return {"name": name, "phase": phase, "when": when}


def matches(when: dict[str, Any], touchpoint: Touchpoint) -> bool:
    """Whether a single phase rule with this `when` matches the touchpoint."""
    return rules(phases=[{"name": "r", "phase": "usage", "when": when}]).classify(touchpoint).rule == "r"


@pytest.fixture(scope="module")
def default_rules() -> PhaseRules:
    text = (resources.files("infra") / "rules" / "default.yaml").read_text(encoding="utf-8")
    return PhaseRules.from_mapping(yaml.safe_load(text))


# ── sections ────────────────────────────────────────────────────────────────


def test_empty_rules_classify_nothing() -> None:
    for data in (None, {}, {"phases": None, "sentiment": []}):
        assert PhaseRules.from_mapping(data).classify(tp()) == Classification()


def test_phases_first_match_wins() -> None:
    r = rules(
        phases=[
            phase_rule("checkout-page", "purchase", action="Page Viewed", properties={"path": "/checkout"}),
            phase_rule("any-page", "orientation", action="Page Viewed"),
            phase_rule("also-checkout", "usage", properties={"path": "/checkout"}),
        ]
    )
    assert r.classify(tp(properties={"path": "/checkout"})).rule == "checkout-page"
    assert r.classify(tp(properties={"path": "/checkout"})).phase is Phase.PURCHASE
    assert r.classify(tp(properties={"path": "/"})).phase is Phase.ORIENTATION
    other = r.classify(tp(action="Signed In"))
    assert (other.phase, other.rule) == (None, None)


def test_failure_signals_any_match_names_the_first() -> None:
    r = rules(
        failure_signals=[
            {"name": "bounce", "when": {"action": "bounce"}},
            {"name": "any-email", "when": {"channel": "email"}},
        ]
    )
    bounced = r.classify(tp("email", "bounce"))
    assert (bounced.failure, bounced.failure_rule) == (True, "bounce")
    assert r.classify(tp("email", "open")).failure_rule == "any-email"
    assert r.classify(tp("web", "bounce")).failure_rule == "bounce"
    assert not r.classify(tp("web")).failure


def test_passive_and_conversions() -> None:
    r = rules(
        passive=[{"name": "delivered", "when": {"action": "delivered"}}],
        conversions=[{"name": "order", "when": {"action": "Order Completed"}}],
    )
    assert r.classify(tp("email", "delivered")).passive
    assert not r.classify(tp("email", "open")).passive
    assert r.classify(tp("web", "Order Completed")).conversion
    assert not r.classify(tp("web", "Checkout Started")).conversion


def test_sentiment_first_match_and_own_sentiment_wins() -> None:
    r = rules(
        sentiment=[
            {
                "name": "low",
                "sentiment": -0.6,
                "when": {"action": "Product Reviewed", "properties": {"rating": [1, 2]}},
            },
            {"name": "review", "sentiment": 0.3, "when": {"action": "Product Reviewed"}},
            {"name": "never", "sentiment": 1, "when": {"action": "Product Reviewed"}},
        ]
    )
    assert r.classify(tp(action="Product Reviewed", properties={"rating": 2})).sentiment == -0.6
    assert r.classify(tp(action="Product Reviewed", properties={"rating": 5})).sentiment == 0.3
    assert r.classify(tp(action="Product Reviewed", sentiment=0.9)).sentiment == 0.9
    assert r.classify(tp(action="Product Reviewed", properties={"rating": 1}, sentiment=0.0)).sentiment == 0.0
    assert r.classify(tp(action="Signed In")).sentiment is None
    assert r.classify(tp(action="Signed In", sentiment=-0.1)).sentiment == -0.1


def test_when_empty_matches_everything() -> None:
    r = rules(phases=[phase_rule("catch-all", "usage")])
    for channel in SOURCES:
        assert r.classify(tp(channel, "anything")).phase is Phase.USAGE


def test_classification_is_frozen_and_slotted() -> None:
    result = Classification(phase=Phase.USAGE)
    with pytest.raises(AttributeError):
        result.phase = Phase.PURCHASE  # type: ignore[misc]
    assert not hasattr(result, "__dict__")


# ── conditions ──────────────────────────────────────────────────────────────


def test_channel_one_or_list_case_insensitive() -> None:
    assert matches({"channel": "email"}, tp("email", "open"))
    assert not matches({"channel": "email"}, tp("web"))
    assert matches({"channel": ["Phone", "social"]}, tp("social", "social.mention"))
    assert not matches({"channel": ["phone", "social"]}, tp("web"))


def test_source_one_or_list() -> None:
    call = tp("phone", "call.answered", source="contact_centre")
    assert matches({"source": "contact_centre"}, call)
    assert matches({"source": ["twilio", "contact_centre"]}, call)
    assert not matches({"source": "twilio"}, call)


def test_action_exact() -> None:
    assert matches({"action": "Order Completed"}, tp(action="Order Completed"))
    assert matches({"action": ["Order Updated", "Order Completed"]}, tp(action="Order Completed"))
    assert not matches({"action": "Order Completed"}, tp(action="order completed"))
    assert not matches({"action": "Order"}, tp(action="Order Completed"))


def test_action_regex_searches() -> None:
    assert matches({"action_regex": "Failed$"}, tp(action="Payment Failed"))
    assert matches({"action_regex": "(?i)^call\\.(busy|failed)$"}, tp("phone", "call.BUSY"))
    assert not matches({"action_regex": "^Failed"}, tp(action="Payment Failed"))


def test_action_and_action_regex_must_both_hold() -> None:
    when = {"action": ["Payment Failed", "Signed In"], "action_regex": "Failed"}
    assert matches(when, tp(action="Payment Failed"))
    assert not matches(when, tp(action="Signed In"))
    assert not matches(when, tp(action="Checkout Failed"))


def test_properties_exact_match_and_lists_of_accepted_values() -> None:
    when = {"properties": {"queue": ["sales", "presales"]}}
    assert matches(when, tp("phone", "call.completed", {"queue": "sales"}))
    assert matches(when, tp("phone", "call.completed", {"queue": "presales"}))
    assert not matches(when, tp("phone", "call.completed", {"queue": "Sales"}))
    assert not matches(when, tp("phone", "call.completed", {}))
    assert not matches(when, tp("phone", "call.completed", {"queue": None}))


def test_all_property_conditions_must_hold() -> None:
    when = {"properties": {"queue": "sales", "direction": "inbound"}}
    assert matches(when, tp("phone", "call.completed", {"queue": "sales", "direction": "inbound"}))
    assert not matches(when, tp("phone", "call.completed", {"queue": "sales", "direction": "outbound-api"}))


def test_list_valued_property_matches_if_any_element_matches() -> None:
    when = {"properties": {"category": "newsletter"}}
    assert matches(when, tp("email", "open", {"category": ["2024-05", "newsletter"]}))
    assert not matches(when, tp("email", "open", {"category": ["2024-05", "nurture"]}))
    assert not matches(when, tp("email", "open", {"category": []}))
    assert matches(
        {"property_regex": {"category": "^news"}}, tp("email", "open", {"category": ["x", "newsy"]})
    )


def test_numbers_compare_as_numbers() -> None:
    when = {"properties": {"rating": 5}}
    assert matches(when, tp(action="Product Reviewed", properties={"rating": 5}))
    assert matches(when, tp(action="Product Reviewed", properties={"rating": 5.0}))
    assert matches(when, tp(action="Product Reviewed", properties={"rating": "5"}))
    assert matches(when, tp(action="Product Reviewed", properties={"rating": "5.00"}))
    assert not matches(when, tp(action="Product Reviewed", properties={"rating": 4.5}))
    assert not matches(when, tp(action="Product Reviewed", properties={"rating": "five"}))
    # A numeric string in the rule compares as a number too; booleans are not numbers.
    assert matches({"properties": {"status": "404"}}, tp(properties={"status": 404}))
    assert not matches({"properties": {"flag": 1}}, tp(properties={"flag": True}))
    assert matches({"properties": {"flag": True}}, tp(properties={"flag": True}))
    assert not matches({"properties": {"flag": True}}, tp(properties={"flag": "true"}))


def test_dotted_keys_reach_into_nested_dicts() -> None:
    when = {"properties": {"context.page.type": "pdp"}}
    assert matches(when, tp(properties={"context": {"page": {"type": "pdp"}}}))
    assert not matches(when, tp(properties={"context": {"page": "pdp"}}))
    assert not matches(when, tp(properties={"context": {"other": 1}}))
    # A literal dotted key wins over the path.
    assert matches(when, tp(properties={"context.page.type": "pdp"}))
    # Lists along the path fan out (e.g. Segment's `products` array).
    products = {"products": [{"category": "shoes"}, {"category": "socks"}]}
    assert matches({"properties": {"products.category": "socks"}}, tp(properties=products))
    assert not matches({"properties": {"products.category": "hats"}}, tp(properties=products))


def test_property_regex_on_strings_and_numbers() -> None:
    when = {"property_regex": {"status": "^5\\d\\d$"}}
    assert matches(when, tp(properties={"status": 503}))
    assert matches(when, tp(properties={"status": 500.0}))
    assert matches(when, tp(properties={"status": "502"}))
    assert not matches(when, tp(properties={"status": 404}))
    assert not matches(when, tp(properties={"status": {"code": 500}}))
    assert matches({"property_regex": {"a.b": "x"}}, tp(properties={"a": {"b": "xyz"}}))
    assert matches({"property_regex": {"flag": "^true$"}}, tp(properties={"flag": True}))


def test_property_exists() -> None:
    when = {"property_exists": ["coupon", "order.id"]}
    assert matches(when, tp(properties={"coupon": "", "order": {"id": 0}}))
    assert not matches(when, tp(properties={"coupon": "SUMMER"}))
    assert not matches(when, tp(properties={"coupon": None, "order": {"id": 1}}))
    assert matches({"property_exists": "coupon"}, tp(properties={"coupon": []}))


def test_not_must_not_hold() -> None:
    when = {"channel": "phone", "not": {"property_regex": {"direction": "^outbound"}}}
    assert matches(when, tp("phone", "call.busy", {"direction": "inbound"}))
    assert matches(when, tp("phone", "call.busy", {}))
    assert not matches(when, tp("phone", "call.busy", {"direction": "outbound-api"}))
    assert not matches(when, tp("web", "call.busy"))
    nested = {"not": {"action": "open", "not": {"properties": {"category": "x"}}}}
    assert matches(nested, tp("email", "click"))
    assert matches(nested, tp("email", "open", {"category": "x"}))
    assert not matches(nested, tp("email", "open", {"category": "y"}))


def test_static_not_decides_without_properties() -> None:
    r = rules(passive=[{"name": "not-open", "when": {"channel": "email", "not": {"action": "open"}}}])
    assert r.classify(tp("email", "delivered")).passive
    assert not r.classify(tp("email", "open")).passive


# ── phase names ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("name", "phase"),
    [
        ("orientation", Phase.ORIENTATION),
        ("Oriëntatie", Phase.ORIENTATION),
        ("ORIENTATIE", Phase.ORIENTATION),
        ("Consideration", Phase.CONSIDERATION),
        ("afweging", Phase.CONSIDERATION),
        ("Aanschaf", Phase.PURCHASE),
        ("gebruik", Phase.USAGE),
        ("Retentie–loyaliteit", Phase.RETENTION),
        ("retentie-loyaliteit", Phase.RETENTION),
        ("Retentie / Loyaliteit", Phase.RETENTION),
        ("retentie", Phase.RETENTION),
        (" Retention ", Phase.RETENTION),
    ],
)
def test_phase_names_english_and_dutch(name: str, phase: Phase) -> None:
    assert parse_phase(name) is phase
    assert rules(phases=[phase_rule("r", name)]).classify(tp()).phase is phase


# ── validation ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"phase": []}, "unknown section 'phase'"),
        ({"phases": {"name": "x"}}, "phases: must be a list"),
        ({"phases": ["x"]}, "phases[0]: a rule must be a mapping"),
        ({"phases": [{"phase": "usage", "when": {}}]}, "phases[0]: every rule needs a non-empty `name`"),
        ({"phases": [{"name": "r", "phase": "usage"}]}, "phases[0] (r): missing `when`"),
        ({"phases": [{"name": "r", "when": {}}]}, "phases[0] (r): missing `phase`"),
        (
            {"phases": [{"name": "r", "phase": "usage", "when": {}, "sentiment": 1}]},
            "unknown key 'sentiment'",
        ),
        (
            {"phases": [phase_rule("a", "usage"), {"name": "r", "phase": "usage", "when": {"acton": "x"}}]},
            "phases[1] (r): when: unknown condition 'acton'",
        ),
        (
            {"passive": [{"name": "r", "when": {"not": {"propertys": {}}}}]},
            "passive[0] (r): when.not: unknown condition 'propertys'",
        ),
        ({"phases": [phase_rule("r", "buying")]}, "phases[0] (r): unknown phase 'buying'"),
        (
            {"phases": [phase_rule("r", "usage", action_regex="(unclosed")]},
            "action_regex '(unclosed' is not a valid",
        ),
        (
            {"failure_signals": [{"name": "r", "when": {"property_regex": {"path": "[a-"}}}]},
            "failure_signals[0] (r): when: property_regex.path '[a-' is not a valid regular expression",
        ),
        ({"sentiment": [{"name": "r", "sentiment": 1.5, "when": {}}]}, "sentiment[0] (r): sentiment must be"),
        ({"sentiment": [{"name": "r", "sentiment": -2, "when": {}}]}, "in [-1, 1], got -2"),
        ({"sentiment": [{"name": "r", "sentiment": "bad", "when": {}}]}, "in [-1, 1], got 'bad'"),
        ({"sentiment": [{"name": "r", "sentiment": True, "when": {}}]}, "in [-1, 1], got True"),
        ({"sentiment": [{"name": "r", "when": {}}]}, "in [-1, 1], got None"),
        ({"phases": [phase_rule("r", "usage", channel="fax")]}, "unknown channel"),
        ({"phases": [phase_rule("r", "usage", action=[])]}, "action is an empty list"),
        ({"phases": [phase_rule("r", "usage", source=3)]}, "source must be a non-empty string"),
        ({"phases": [phase_rule("r", "usage", properties={"a": {"b": 1}})]}, "properties.a: values must be"),
        (
            {"phases": [phase_rule("r", "usage", properties={"a": float("nan")})]},
            "properties.a: values must be",
        ),
        ({"phases": [phase_rule("r", "usage", properties={"a..b": 1})]}, "property key must be"),
        ({"phases": [phase_rule("r", "usage", properties=["a"])]}, "properties must be a mapping"),
        ({"phases": [phase_rule("r", "usage", property_exists=[])]}, "property_exists is an empty list"),
        ({"phases": [phase_rule("r", "usage"), phase_rule("r", "purchase")]}, "duplicate rule name 'r'"),
        ({"phases": [{"name": "r", "phase": "usage", "when": "web"}]}, "when: must be a mapping"),
    ],
)
def test_invalid_rules_give_clear_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesError) as excinfo:
        PhaseRules.from_mapping(data)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(RulesError, match="must be a mapping"):
        PhaseRules.from_mapping(["phases"])  # type: ignore[arg-type]


def test_rule_names_in_file_order() -> None:
    r = rules(phases=[phase_rule("b", "usage"), phase_rule("a", "usage")])
    assert r.rule_names("phases") == ("b", "a")
    assert r.rule_names("sentiment") == ()
    with pytest.raises(KeyError):
        r.rule_names("nope")


# ── memoisation is exact ────────────────────────────────────────────────────


def test_plans_never_leak_property_answers_between_touchpoints() -> None:
    r = rules(
        phases=[
            phase_rule("checkout", "purchase", property_regex={"path": "^/checkout"}),
            phase_rule("page", "orientation", action="Page Viewed"),
        ],
        failure_signals=[{"name": "err", "when": {"properties": {"status": 500}}}],
    )
    for _ in range(3):
        assert r.classify(tp(properties={"path": "/checkout/1"})).phase is Phase.PURCHASE
        assert r.classify(tp(properties={"path": "/"})).phase is Phase.ORIENTATION
        assert r.classify(tp(properties={"status": 500})).failure
        assert not r.classify(tp(properties={"status": 200})).failure


def test_fixed_plans_return_equal_results_with_own_sentiment() -> None:
    r = rules(
        phases=[phase_rule("order", "purchase", action="Order Completed")],
        sentiment=[{"name": "s", "sentiment": 0.6, "when": {"action": "Order Completed"}}],
    )
    first = r.classify(tp(action="Order Completed"))
    assert r.classify(tp(action="Order Completed")) == first
    assert first == Classification(phase=Phase.PURCHASE, rule="order", sentiment=0.6)
    own = r.classify(tp(action="Order Completed", sentiment=-0.2))
    assert own == Classification(phase=Phase.PURCHASE, rule="order", sentiment=-0.2)


_MEMO_RULES = {
    "phases": [
        {"name": "checkout", "phase": "purchase", "when": {"property_regex": {"path": "^/checkout"}}},
        {"name": "flag", "phase": "usage", "when": {"properties": {"flag": [True, "yes"]}}},
        {"name": "one", "phase": "retention", "when": {"properties": {"n": 1}}},
        {"name": "nested", "phase": "consideration", "when": {"property_exists": "cart.items"}},
        {"name": "not-home", "phase": "orientation", "when": {"not": {"properties": {"path": "/"}}}},
    ],
    "failure_signals": [{"name": "err", "when": {"property_regex": {"status": "^5"}}}],
    "passive": [{"name": "auto", "when": {"properties": {"origin": "system"}}}],
    "conversions": [{"name": "paid", "when": {"property_exists": "order.id"}}],
    "sentiment": [
        {"name": "bad", "sentiment": -0.5, "when": {"property_regex": {"path": "error"}}},
        {"name": "good", "sentiment": 0.5, "when": {"properties": {"n": 2.0}}},
    ],
}
_MEMO_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["/", "/checkout/1", "/error", "yes", "1", "2", "500", "system", ""]),
    st.booleans(),
    st.sampled_from([0, 1, 1.0, 2, 2.0, 500]),
    st.lists(st.sampled_from(["/checkout", "/", "yes", 1, True, None]), max_size=2),
    st.fixed_dictionaries({}, optional={"items": st.sampled_from([None, 1, "x"]), "id": st.just("o1")}),
)
_MEMO_PROPERTIES = st.dictionaries(
    st.sampled_from(
        ["path", "flag", "n", "status", "origin", "cart", "order", "cart.items", "order.id", "x"]
    ),
    _MEMO_VALUES,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(
    touchpoints=st.lists(
        st.tuples(
            st.sampled_from(["Page Viewed", "Signed In"]),
            st.one_of(st.none(), st.sampled_from([-0.5, 0.0, 0.3])),
            _MEMO_PROPERTIES,
        ),
        min_size=1,
        max_size=20,
    )
)
def test_property_answers_are_memoised_exactly(touchpoints: list[tuple[str, float | None, dict]]) -> None:
    shared = PhaseRules.from_mapping(_MEMO_RULES)
    for action, sentiment, properties in touchpoints + touchpoints:
        got = shared.classify_fields(Channel.WEB, "segment", action, sentiment, properties)
        fresh = PhaseRules.from_mapping(_MEMO_RULES)
        plan = fresh._plan(Channel.WEB, "segment", action)
        expected = plan.fixed if plan.fixed is not None else fresh._evaluate(plan, sentiment, properties)
        if plan.fixed is not None and sentiment is not None:
            expected = expected._replace(sentiment=sentiment)
        # repr as well as ==: a phase or flag must not come back as an equal-comparing other value.
        assert got == expected and repr(got) == repr(expected)
        assert fresh.classify_fields(Channel.WEB, "segment", action, sentiment, properties) == expected


def test_property_answers_tell_equal_comparing_values_apart() -> None:
    # True == 1 == 1.0 as dict keys, but `flag: [true, yes]` matches only the boolean,
    # `n: 1` only the numbers.
    r = PhaseRules.from_mapping(_MEMO_RULES)
    for _ in range(2):
        assert (
            r.classify_fields(Channel.WEB, "segment", "Signed In", None, {"flag": True, "path": "/"}).rule
            == "flag"
        )
        assert (
            r.classify_fields(Channel.WEB, "segment", "Signed In", None, {"flag": 1, "path": "/"}).rule
            is None
        )
        assert (
            r.classify_fields(Channel.WEB, "segment", "Signed In", None, {"n": True, "path": "/"}).rule
            is None
        )
        assert (
            r.classify_fields(Channel.WEB, "segment", "Signed In", None, {"n": 1.0, "path": "/"}).rule
            == "one"
        )

    def rule(properties: dict[str, Any]) -> str | None:
        return r.classify_fields(Channel.WEB, "segment", "Signed In", None, properties).rule

    # Lists of strings are memoised by their elements; other lists are checked each time.
    for _ in range(2):
        assert rule({"path": ["/", "/checkout"]}) == "checkout"
        assert rule({"path": ["/", "/x"]}) is None  # "/" is among them: `not path: /` fails
        assert rule({"path": []}) == "not-home"
        assert rule({"flag": [1], "path": "/"}) is None
        assert rule({"flag": [True], "path": "/"}) == "flag"


def test_property_answers_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import journeys.phases as phases

    monkeypatch.setattr(phases, "_MAX_ANSWERS", 5)
    r = PhaseRules.from_mapping(_MEMO_RULES)
    for index in range(50):
        r.classify_fields(Channel.WEB, "segment", "Page Viewed", None, {"path": f"/p{index}"})
        assert len(r._answers) <= 5


# ── the packaged defaults ───────────────────────────────────────────────────

# (channel, action, properties, source, phase, failure, passive, conversion, sentiment)
DEFAULT_CASES: list[
    tuple[str, str, dict[str, Any], str | None, Phase | None, bool, bool, bool, float | None]
] = [
    # web: Segment e-commerce events
    ("web", "Products Searched", {"query": "boots"}, None, Phase.ORIENTATION, False, False, False, None),
    ("web", "Product List Filtered", {}, None, Phase.ORIENTATION, False, False, False, None),
    ("web", "Promotion Clicked", {}, None, None, False, False, False, None),
    ("web", "Promotion Viewed", {}, None, None, False, False, False, None),
    ("web", "Product Viewed", {"product_id": "p1"}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Product Added to Wishlist", {}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Cart Viewed", {}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Checkout Started", {}, None, Phase.PURCHASE, False, False, False, None),
    ("web", "Payment Info Entered", {}, None, Phase.PURCHASE, False, False, False, None),
    ("web", "Coupon Denied", {}, None, None, False, False, False, -0.3),
    ("web", "Coupon Applied", {}, None, None, False, False, False, None),
    ("web", "Order Updated", {}, None, None, False, False, False, None),
    ("web", "Order Completed", {"revenue": 10}, None, Phase.PURCHASE, False, False, True, 0.6),
    ("web", "Payment Failed", {}, None, Phase.PURCHASE, True, False, False, -0.8),
    ("web", "Checkout Error", {}, None, None, True, False, False, None),
    ("web", "Order Refunded", {}, None, Phase.USAGE, False, False, False, -0.4),
    ("web", "Order Cancelled", {}, None, Phase.USAGE, False, False, False, -0.4),
    ("web", "Signed In", {}, None, None, False, False, False, None),
    ("web", "Account Created", {}, None, None, False, False, False, None),
    ("web", "Product Reviewed", {"rating": 5}, None, Phase.RETENTION, False, False, False, 0.6),
    ("web", "Product Reviewed", {"rating": "1"}, None, Phase.RETENTION, False, False, False, -0.6),
    ("web", "Product Reviewed", {"rating": 3}, None, Phase.RETENTION, False, False, False, None),
    ("web", "Subscription Renewed", {}, None, Phase.RETENTION, False, False, False, 0.4),
    # web: pages by path
    ("web", "Page Viewed", {"path": "/"}, None, Phase.ORIENTATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/blog/how-to"}, None, Phase.ORIENTATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/landing-summer"}, None, Phase.ORIENTATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/blogger"}, None, None, False, False, False, None),
    (
        "web",
        "Page Viewed",
        {"path": "/products/boots-42"},
        None,
        Phase.CONSIDERATION,
        False,
        False,
        False,
        None,
    ),
    ("web", "Page Viewed", {"path": "/pricing"}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/checkout/payment"}, None, Phase.PURCHASE, False, False, False, None),
    ("web", "Page Viewed", {"path": "/cart"}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/basket/"}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/checkout/cart"}, None, Phase.CONSIDERATION, False, False, False, None),
    ("web", "Page Viewed", {"path": "/checkout"}, None, Phase.PURCHASE, False, False, False, None),
    ("web", "Page Viewed", {"path": "/cartography"}, None, None, False, False, False, None),
    ("web", "Page Viewed", {"path": "/account/orders"}, None, Phase.USAGE, False, False, False, None),
    ("web", "Page Viewed", {"path": "/account"}, None, Phase.USAGE, False, False, False, None),
    ("web", "Page Viewed", {"path": "/account/login"}, None, None, False, False, False, None),
    ("web", "Page Viewed", {"path": "/account/sign-up"}, None, None, False, False, False, None),
    ("web", "Page Viewed", {"path": "/account/loginhistory"}, None, Phase.USAGE, False, False, False, None),
    ("web", "Page Viewed", {"path": "/FAQ"}, None, Phase.USAGE, False, False, False, None),
    ("web", "Page Viewed", {"path": "/404"}, None, None, True, False, False, -0.5),
    ("web", "Page Viewed", {"path": "/error"}, None, None, True, False, False, -0.5),
    (
        "web",
        "Page Viewed",
        {"path": "/checkout", "status": 502},
        None,
        Phase.PURCHASE,
        True,
        False,
        False,
        None,
    ),
    ("web", "Page Viewed", {}, None, None, False, False, False, None),
    ("web", "Identify", {}, None, None, False, False, False, None),
    # email: SendGrid
    ("email", "processed", {"category": "newsletter"}, None, None, False, True, False, None),
    ("email", "delivered", {"category": ["newsletter"]}, None, None, False, True, False, None),
    ("email", "deferred", {}, None, None, False, True, False, None),
    ("email", "bounce", {"bounce_type": "bounce"}, None, None, True, True, False, None),
    ("email", "dropped", {"reason": "Invalid"}, None, None, True, True, False, None),
    (
        "email",
        "open",
        {"category": ["newsletter", "2024-05"]},
        None,
        Phase.ORIENTATION,
        False,
        False,
        False,
        None,
    ),
    ("email", "click", {"category": "nurture"}, None, Phase.CONSIDERATION, False, False, False, 0.2),
    ("email", "click", {"category": ["abandoned-cart"]}, None, Phase.PURCHASE, False, False, False, 0.2),
    ("email", "open", {"category": "receipt"}, None, Phase.PURCHASE, False, False, False, None),
    ("email", "open", {"category": "onboarding"}, None, Phase.USAGE, False, False, False, None),
    ("email", "click", {"category": ["winback"]}, None, Phase.RETENTION, False, False, False, 0.2),
    ("email", "open", {"category": "misc"}, None, None, False, False, False, None),
    ("email", "spamreport", {"category": "newsletter"}, None, Phase.ORIENTATION, True, False, False, -0.9),
    ("email", "unsubscribe", {}, None, None, False, False, False, -0.6),
    ("email", "group_unsubscribe", {"category": "loyalty"}, None, Phase.RETENTION, False, False, False, -0.6),
    # phone: Twilio and the contact-centre CSV
    (
        "phone",
        "call.completed",
        {"queue": "sales", "direction": "inbound"},
        None,
        Phase.CONSIDERATION,
        False,
        False,
        False,
        None,
    ),
    ("phone", "call.completed", {"queue": "Payments"}, None, Phase.PURCHASE, False, False, False, None),
    (
        "phone",
        "call.answered",
        {"queue": "orders"},
        "contact_centre",
        Phase.PURCHASE,
        False,
        False,
        False,
        None,
    ),
    (
        "phone",
        "call.answered",
        {"queue": "support_nl"},
        "contact_centre",
        Phase.USAGE,
        False,
        False,
        False,
        None,
    ),
    (
        "phone",
        "call.answered",
        {"queue": "service"},
        "contact_centre",
        Phase.USAGE,
        False,
        False,
        False,
        None,
    ),
    (
        "phone",
        "call.answered",
        {"queue": "cancellations"},
        "contact_centre",
        Phase.RETENTION,
        False,
        False,
        False,
        None,
    ),
    (
        "phone",
        "call.abandoned",
        {"queue": "support", "wait_seconds": 600},
        "contact_centre",
        Phase.USAGE,
        True,
        False,
        False,
        -0.5,
    ),
    ("phone", "call.voicemail", {}, "contact_centre", None, True, False, False, -0.4),
    ("phone", "call.no-answer", {"direction": "inbound"}, None, None, True, False, False, -0.4),
    ("phone", "call.busy", {}, None, None, True, False, False, -0.4),
    ("phone", "call.failed", {}, None, None, True, False, False, -0.4),
    (
        "phone",
        "call.completed",
        {"direction": "outbound-api", "queue": "retention"},
        None,
        Phase.RETENTION,
        False,
        True,
        False,
        None,
    ),
    ("phone", "call.no-answer", {"direction": "outbound-dial"}, None, None, False, True, False, None),
    ("phone", "call.callback", {}, "contact_centre", None, False, False, False, None),
    # social
    ("social", "social.mention", {"platform": "x"}, None, Phase.ORIENTATION, False, False, False, None),
    ("social", "social.post", {"platform": "facebook"}, "meta", Phase.ORIENTATION, False, False, False, None),
    (
        "social",
        "social.comment",
        {"platform": "instagram"},
        "meta",
        Phase.CONSIDERATION,
        False,
        False,
        False,
        None,
    ),
    ("social", "social.direct_message", {"platform": "x"}, None, None, False, False, False, None),
    ("social", "social.reply", {}, None, None, False, False, False, None),
    ("social", "social.mention", {"topic": "complaint"}, None, Phase.USAGE, True, False, False, -0.7),
    (
        "social",
        "social.direct_message",
        {"topic": ["delivery"]},
        None,
        Phase.USAGE,
        False,
        False,
        False,
        None,
    ),
    ("social", "social.comment", {"topic": "praise"}, None, Phase.CONSIDERATION, False, False, False, 0.6),
]


@pytest.mark.parametrize(
    ("channel", "action", "properties", "source", "phase", "failure", "passive", "conversion", "sentiment"),
    DEFAULT_CASES,
    ids=[f"{c[0]}:{c[1]}:{c[2]}" for c in DEFAULT_CASES],
)
def test_default_rules(
    default_rules: PhaseRules,
    channel: str,
    action: str,
    properties: dict[str, Any],
    source: str | None,
    phase: Phase | None,
    failure: bool,
    passive: bool,
    conversion: bool,
    sentiment: float | None,
) -> None:
    got = default_rules.classify(tp(channel, action, properties, source=source))
    assert (got.phase, got.failure, got.passive, got.conversion, got.sentiment) == (
        phase,
        failure,
        passive,
        conversion,
        sentiment,
    )
    assert (got.rule is None) == (phase is None)
    assert (got.failure_rule is None) == (not failure)


def test_default_rules_name_the_rules(default_rules: PhaseRules) -> None:
    paid = default_rules.classify(tp(action="Payment Failed"))
    assert (paid.rule, paid.failure_rule) == ("web-purchase-events", "web-payment-failed")
    bounced = default_rules.classify(tp("email", "bounce"))
    assert bounced.failure_rule == "email-bounce"


# The Segment e-commerce spec v2 in the order a shopper goes through it, with the
# page views that come with the events and things that happen anywhere (log-in,
# promotion banners, coupons). None of it may look like a step back.
ECOMMERCE_SEQUENCE: list[tuple[str, dict[str, Any]]] = [
    ("Page Viewed", {"path": "/"}),
    ("Promotion Viewed", {"promotion_id": "summer"}),
    ("Products Searched", {"query": "espresso"}),
    ("Product List Viewed", {"list_id": "espresso"}),
    ("Product List Filtered", {"list_id": "espresso"}),
    ("Promotion Clicked", {"promotion_id": "summer"}),
    ("Product Clicked", {"product_id": "p1"}),
    ("Page Viewed", {"path": "/products/p1"}),
    ("Product Viewed", {"product_id": "p1"}),
    ("Product Added to Wishlist", {"product_id": "p1"}),
    ("Wishlist Product Added to Cart", {"product_id": "p1"}),
    ("Product Added", {"product_id": "p1"}),
    ("Page Viewed", {"path": "/cart"}),
    ("Cart Viewed", {"cart_id": "c1"}),
    ("Coupon Entered", {"coupon_id": "WELCOME"}),
    ("Coupon Applied", {"coupon_id": "WELCOME"}),
    ("Page Viewed", {"path": "/cart"}),
    ("Cart Viewed", {"cart_id": "c1"}),
    ("Page Viewed", {"path": "/account/login"}),
    ("Signed In", {}),
    ("Page Viewed", {"path": "/checkout"}),
    ("Checkout Started", {"order_id": "o1"}),
    ("Account Created", {}),
    ("Checkout Step Viewed", {"step": 1}),
    ("Checkout Step Completed", {"step": 1}),
    ("Promotion Viewed", {"promotion_id": "summer"}),
    ("Coupon Denied", {"coupon_id": "EXPIRED"}),
    ("Checkout Step Viewed", {"step": 2}),
    ("Payment Info Entered", {"step": 2}),
    ("Order Updated", {"order_id": "o1"}),
    ("Order Completed", {"order_id": "o1", "revenue": 40}),
    ("Page Viewed", {"path": "/checkout/thank-you"}),
    ("Signed In", {}),
    ("Page Viewed", {"path": "/account/orders"}),
    ("Order Updated", {"order_id": "o1"}),
    ("Order Refunded", {"order_id": "o1"}),
    ("Product Reviewed", {"rating": 4}),
    ("Signed Out", {}),
]


def test_default_rules_never_step_back_on_the_ecommerce_spec_sequence(default_rules: PhaseRules) -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    steps = []
    for i, (action, properties) in enumerate(ECOMMERCE_SEQUENCE):
        touchpoint = tp(action=action, properties=properties).model_copy(
            update={"event_id": f"e{i:02d}", "occurred_at": start + timedelta(minutes=i)}
        )
        classification = default_rules.classify(touchpoint)
        steps.append(ClassifiedTouchpoint(CompactTouchpoint.of(touchpoint), classification))
    journey = fold_journey("cus_1", steps, start + timedelta(days=1), JourneyPolicy())
    assert journey.regressions == ()
    assert journey.phases_reached == tuple(Phase)
    assert journey.skipped_phases == ()


def test_cart_page_and_cart_event_agree(default_rules: PhaseRules) -> None:
    page = default_rules.classify(tp(properties={"path": "/cart"}))
    event = default_rules.classify(tp(action="Cart Viewed", properties={"cart_id": "c1"}))
    assert page.phase is event.phase is Phase.CONSIDERATION
    assert default_rules.classify(tp(properties={"path": "/checkout/payment"})).phase is Phase.PURCHASE


# ── docs/rules.md: every YAML example loads and does what the text says ─────

RULES_DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LABEL = re.compile(r"# (example|invalid): ([\w-]+)\n")


def _doc_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block of docs/rules.md, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(RULES_DOC.read_text(encoding="utf-8"))]


def _doc_yaml() -> dict[str, tuple[str, str, str | None]]:
    """Every YAML block by its label: (kind, YAML text, the error text block after an invalid one)."""
    blocks = _doc_blocks()
    out: dict[str, tuple[str, str, str | None]] = {}
    for i, (lang, body) in enumerate(blocks):
        if lang not in ("yaml", "yml"):
            continue
        label = _LABEL.match(body)
        assert label, (
            f"YAML block {i} of docs/rules.md must start with '# example: NAME' or '# invalid: NAME'"
        )
        kind, name = label.groups()
        assert name not in out, f"two YAML blocks labelled {name!r}"
        error = None
        if kind == "invalid":
            assert i + 1 < len(blocks) and blocks[i + 1][0] == "text", f"{name}: needs a ```text error block"
            error = blocks[i + 1][1].strip()
        out[name] = (kind, body, error)
    return out


def _call(action: str, **properties: Any) -> Touchpoint:
    return tp("phone", action, properties, source="contact_centre")


# Per example: (touchpoint, expected classification fields). `phase` is always checked.
DOC_EXAMPLES: dict[str, list[tuple[Touchpoint, dict[str, Any]]]] = {
    "minimal": [
        (tp(action="Checkout Started"), {"phase": Phase.PURCHASE, "rule": "checkout"}),
        (tp(action="Product Viewed"), {"phase": Phase.ORIENTATION, "rule": "any-other-web-event"}),
        (tp("email", "open"), {"phase": None}),
    ],
    "conditions": [
        (_call("call.answered"), {"phase": Phase.USAGE, "rule": "contact-centre-only"}),
        (tp(action="Payment Declined"), {"phase": Phase.PURCHASE, "rule": "error-events"}),
        (tp("email", "click", {"category": ["welcome", "2024-05"]}), {"phase": Phase.ORIENTATION}),
        (tp("email", "delivered", {"category": "newsletter"}), {"phase": None}),
        (
            tp(
                action="Cart Viewed",
                properties={"products": [{"category": "beans"}, {"category": "espresso-machines"}]},
            ),
            {"phase": Phase.CONSIDERATION, "rule": "espresso-in-cart"},
        ),
        (tp(action="Cart Viewed", properties={"products": [{"category": "beans"}]}), {"phase": None}),
        (_call("call.abandoned", queue="Sales", wait_seconds=420), {"phase": Phase.CONSIDERATION}),
        (_call("call.abandoned", queue="Sales", wait_seconds=60), {"phase": None}),
        (tp(action="Order Completed", properties={"coupon": "WELKOM10"}), {"phase": Phase.PURCHASE}),
        (tp(action="Order Completed"), {"phase": None}),
    ],
    "first-match": [
        (tp(properties={"path": "/checkout/payment"}), {"phase": Phase.PURCHASE, "rule": "checkout-pages"}),
        (
            tp(properties={"path": "/404"}),
            {
                "phase": Phase.ORIENTATION,
                "rule": "other-pages",
                "failure_rule": "error-pages",
                "sentiment": -0.5,
            },
        ),
        (tp(action="Order Completed"), {"phase": None, "failure": False}),
    ],
    "b2b-saas": [
        (tp(properties={"path": "/"}), {"phase": Phase.ORIENTATION}),
        (tp(properties={"path": "/blog/okrs"}), {"phase": Phase.ORIENTATION}),
        (tp(properties={"path": "/pricing"}), {"phase": Phase.CONSIDERATION}),
        (tp(action="Trial Started"), {"phase": Phase.CONSIDERATION}),
        (tp(properties={"path": "/app/projects", "plan": "trial"}), {"phase": Phase.CONSIDERATION}),
        (tp(properties={"path": "/app/projects", "plan": "team"}), {"phase": Phase.USAGE}),
        (tp(properties={"path": "/billing/upgrade"}), {"phase": Phase.PURCHASE}),
        (tp(action="Subscription Started"), {"phase": Phase.PURCHASE, "conversion": True}),
        (tp(action="Invoice Paid"), {"phase": Phase.PURCHASE, "conversion": False}),
        (tp(action="Seat Added"), {"phase": Phase.RETENTION}),
        (tp(action="Signed In"), {"phase": None}),
        (tp("phone", "call.completed", {"queue": "SDR-EMEA"}), {"phase": Phase.CONSIDERATION}),
        (tp("email", "delivered"), {"phase": None, "passive": True}),
    ],
    "custom-failure": [
        (
            tp(action="Products Searched", properties={"query": "decaf", "results": 0}),
            {"phase": Phase.ORIENTATION, "failure_rule": "search-no-results", "sentiment": -0.3},
        ),
        (
            tp(action="Products Searched", properties={"query": "beans", "results": 12}),
            {"phase": Phase.ORIENTATION, "failure": False, "sentiment": None},
        ),
        (
            tp(action="Checkout Step Completed", properties={"step": 2, "error_code": "zip"}),
            {"phase": Phase.PURCHASE, "failure_rule": "checkout-validation-error"},
        ),
        (
            tp(action="Checkout Step Completed", properties={"step": 2}),
            {"phase": Phase.PURCHASE, "failure": False},
        ),
        (tp("email", "bounce", {"bounce_type": "bounce"}), {"phase": None, "failure_rule": "hard-bounce"}),
        (tp("email", "bounce", {"bounce_type": "blocked"}), {"phase": None, "failure": False}),
        (
            _call("call.answered", queue="support", wait_seconds=900),
            {"phase": Phase.USAGE, "failure_rule": "long-queue-wait", "sentiment": -0.4},
        ),
        (_call("call.answered", queue="support", wait_seconds=120), {"phase": Phase.USAGE, "failure": False}),
    ],
    "dutch-queues": [
        (
            _call("call.abandoned", queue="Betalingen-NL"),
            {"phase": Phase.PURCHASE, "failure_rule": "opgehangen"},
        ),
        (_call("call.answered", queue="verkoop"), {"phase": Phase.CONSIDERATION}),
        (_call("call.answered", queue="klantenservice"), {"phase": Phase.USAGE}),
        (
            tp("email", "open", {"category": ["transactional", "nieuwsbrief-2024-05"]}),
            {"phase": Phase.ORIENTATION},
        ),
        (tp("email", "delivered", {"category": ["nieuwsbrief-2024-05"]}), {"phase": None}),
        (tp("email", "click", {"category": "klantenclub"}), {"phase": Phase.RETENTION}),
    ],
}
DOC_INVALID = ("unknown-phase", "bad-regex", "sentiment-out-of-range", "duplicate-name")


def test_docs_every_yaml_example_is_checked() -> None:
    labelled = _doc_yaml()
    assert {name for name, (kind, _, _) in labelled.items() if kind == "example"} == set(DOC_EXAMPLES)
    assert {name for name, (kind, _, _) in labelled.items() if kind == "invalid"} == set(DOC_INVALID)


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_docs_example_classifies_as_documented(name: str) -> None:
    kind, text, _ = _doc_yaml()[name]
    assert kind == "example"
    example = PhaseRules.from_mapping(yaml.safe_load(text))
    checks = DOC_EXAMPLES[name]
    assert any(expected["phase"] is not None for _, expected in checks), "check at least one phase"
    for touchpoint, expected in checks:
        got = example.classify(touchpoint)
        assert {field: getattr(got, field) for field in expected} == expected, (
            touchpoint.action,
            touchpoint.properties,
        )


@pytest.mark.parametrize("name", DOC_INVALID)
def test_docs_invalid_example_gives_the_documented_error(name: str) -> None:
    kind, text, error = _doc_yaml()[name]
    assert kind == "invalid"
    with pytest.raises(RulesError) as excinfo:
        PhaseRules.from_mapping(yaml.safe_load(text))
    assert str(excinfo.value) == error


def test_docs_defaults_table_lists_every_rule_with_its_phase() -> None:
    data = yaml.safe_load((resources.files("infra") / "rules" / "default.yaml").read_text(encoding="utf-8"))
    text = RULES_DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+) \| `([\w-]+)` \| .* \| (\w+) \|$", text, re.MULTILINE)
    documented = [(name, phase) for _, name, phase in rows]
    assert documented == [(rule["name"], rule["phase"]) for rule in data["phases"]]
    for section in ("failure_signals", "passive", "conversions", "sentiment"):
        for rule in data[section]:
            assert f"`{rule['name']}`" in text, f"{section}: {rule['name']} is not in docs/rules.md"


def test_docs_error_message_example_is_real() -> None:
    """The CLI error line shown in the doc: the core's message behind `error: rules file PATH: `."""
    line = next(
        body for lang, body in _doc_blocks() if lang == "text" and body.startswith("error: rules file")
    )
    prefix = "error: rules file my-rules.yaml: "
    data = {
        "phases": [{"name": "cart", "phase": "afweging", "when": {"channel": "web", "acton": "Cart Viewed"}}]
    }
    with pytest.raises(RulesError) as excinfo:
        PhaseRules.from_mapping(data)
    assert line.strip() == prefix + str(excinfo.value)


# ── robustness ──────────────────────────────────────────────────────────────

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**5000), max_value=10**5000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["newsletter", "sales", "/checkout", "/404", "outbound-api", "complaint", "5", "502"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.tuples(children, children)
    ),
    max_leaves=20,
)
property_keys = st.sampled_from(
    ["path", "category", "queue", "direction", "topic", "status", "rating"]
) | st.text(max_size=10)


@settings(max_examples=300, deadline=None)
@given(
    channel=st.sampled_from(list(Channel)),
    action=st.sampled_from(
        ["Page Viewed", "Product Reviewed", "open", "bounce", "call.busy", "social.mention", "x"]
    )
    | st.text(min_size=1, max_size=30),
    properties=st.dictionaries(property_keys, json_values, max_size=6),
    sentiment=st.none() | st.floats(min_value=-1, max_value=1),
)
def test_classify_never_raises(
    default_rules: PhaseRules,
    channel: Channel,
    action: str,
    properties: dict[str, Any],
    sentiment: float | None,
) -> None:
    touchpoint = tp(channel.value, action, properties, sentiment=sentiment)
    result = default_rules.classify(touchpoint)
    assert result.phase is None or isinstance(result.phase, Phase)
    assert result.sentiment is None or -1.0 <= result.sentiment <= 1.0
    assert (result.rule is None) == (result.phase is None)
    assert result.failure == (result.failure_rule is not None)
    # Deterministic: the memoised plan gives the same answer the second time.
    assert default_rules.classify(touchpoint) == result
