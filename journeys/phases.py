"""Phase rules: pure classification of one touchpoint, driven by a rules mapping.

The rules come from a YAML file (syntax in `docs/rules.md`; packaged defaults in
`infra/rules/default.yaml`), but this module never reads files: the shell parses
the YAML (`processors.config.load_rules`) and hands the mapping to
`PhaseRules.from_mapping`, which validates it, compiles every regex once and
returns an immutable rule set. `PhaseRules.classify` is then a pure function of
the touchpoint.

Sections of the mapping, each an ordered list of rules `{name, when, ...}`:

- `phases`: first match gives the phase (`phase:`); no match gives `None`, and the
  journey fold then keeps the phase the journey was already in;
- `failure_signals`: any match marks the touchpoint as a failure signal;
- `passive`: any match marks it organisation-initiated (not a customer move);
- `conversions`: any match marks it as a completed purchase;
- `sentiment`: first match gives a default sentiment (`sentiment:` in [-1, 1]),
  used only when the touchpoint carries none.

Hot path: matching on channel, source and action is decided once per distinct
(channel, source, action) and memoised as a *plan*: per section, the rules that
can still match, each with only its property conditions left to test. The memo is
provably exact because it keys on everything those decisions read; property
conditions are always evaluated per touchpoint. When no property condition is
left at all, the plan holds the finished `Classification`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from journeys.touchpoint import PHASE_LABELS_NL, Channel, Phase, Touchpoint

__all__ = ["Classification", "PhaseRules", "RulesError", "parse_phase"]

SECTIONS: Final = ("phases", "failure_signals", "passive", "conversions", "sentiment")
CONDITIONS: Final = (
    "channel",
    "source",
    "action",
    "action_regex",
    "properties",
    "property_regex",
    "property_exists",
    "not",
)
_RULE_KEYS: Final[dict[str, frozenset[str]]] = {
    "phases": frozenset({"name", "phase", "when"}),
    "failure_signals": frozenset({"name", "when"}),
    "passive": frozenset({"name", "when"}),
    "conversions": frozenset({"name", "when"}),
    "sentiment": frozenset({"name", "sentiment", "when"}),
}
_MAX_PLANS: Final = 16_384  # distinct (channel, source, action) keys memoised before the memo restarts
_MAX_ANSWERS: Final = 16_384  # distinct (channel, source, action, property values) answers memoised
_NUMBER_TEXT: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MISSING: Final = object()


class RulesError(ValueError):
    """The rules mapping is invalid; the message names the section, rule and key."""


class Classification(NamedTuple):
    """What the rules say about one touchpoint (a named tuple: one is made per touchpoint).

    `rule` names the phase rule that matched, `failure_rule` the first matching
    failure signal rule. `sentiment` is the touchpoint's own sentiment when it has
    one, else the first matching sentiment rule's default, else `None`.
    """

    phase: Phase | None = None
    rule: str | None = None
    failure: bool = False
    failure_rule: str | None = None
    passive: bool = False
    sentiment: float | None = None
    conversion: bool = False


# ---------------------------------------------------------------------------
# Phase names


def _fold_name(name: str) -> str:
    """Case-, accent- and dash-insensitive form of a phase name."""
    decomposed = unicodedata.normalize("NFKD", name.strip().casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"[\s\-‐‑‒–—/]+", "-", plain)


_PHASE_NAMES: Final[dict[str, Phase]] = {
    **{_fold_name(phase.value): phase for phase in Phase},
    **{_fold_name(label): phase for phase, label in PHASE_LABELS_NL.items()},
    "retentie": Phase.RETENTION,
}


def parse_phase(name: object) -> Phase:
    """A phase from its English name or Dutch label, case- and accent-insensitive."""
    if isinstance(name, Phase):
        return name
    if isinstance(name, str):
        phase = _PHASE_NAMES.get(_fold_name(name))
        if phase is not None:
            return phase
    accepted = ", ".join([p.value for p in Phase] + list(PHASE_LABELS_NL.values()))
    raise ValueError(f"unknown phase {name!r}; expected one of: {accepted}")


# ---------------------------------------------------------------------------
# Property tests: each reads one (possibly dotted) key of `properties`


def _number_text(value: int | float) -> str | None:
    """Shortest text of a number (500, 4.5) for regex matching; None if unprintable."""
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(value)
    try:
        return str(value)
    except ValueError:  # ints beyond the interpreter's digit limit
        return None


class _PropertyTest:
    """Reads `properties[key]`; a dotted key walks nested dicts when no literal key exists.

    Lists fan out: along the path, a list of dicts matches if any element does; at
    the end, a list value matches if any element does.
    """

    __slots__ = ("dotted", "key", "path")

    def __init__(self, key: str) -> None:
        self.key = key
        self.path = tuple(key.split("."))
        self.dotted = len(self.path) > 1

    def __call__(self, properties: Mapping[str, Any]) -> bool:
        value = properties.get(self.key, _MISSING)
        if value is not _MISSING:
            return self._value(value)
        if self.dotted:
            return self._walk(properties, 0)
        return False

    def _walk(self, value: Any, index: int) -> bool:
        path = self.path
        while index < len(path):
            if isinstance(value, dict):
                value = value.get(path[index], _MISSING)
                if value is _MISSING:
                    return False
                index += 1
            elif isinstance(value, list | tuple):
                return any(self._walk(item, index) for item in value)
            else:
                return False
        return self._value(value)

    def _value(self, value: Any) -> bool:
        if isinstance(value, list | tuple):
            return any(self._scalar(item) for item in value)
        return self._scalar(value)

    def _scalar(self, value: Any) -> bool:
        raise NotImplementedError


class _Equals(_PropertyTest):
    """Exact match against a set of values; numbers (and numeric text) compare as numbers."""

    __slots__ = ("bools", "numbers", "strings")

    def __init__(self, key: str, strings: frozenset[str], numbers: frozenset[float], bools: frozenset[bool]):
        super().__init__(key)
        self.strings = strings
        self.numbers = numbers
        self.bools = bools

    def _scalar(self, value: Any) -> bool:
        if isinstance(value, str):
            if value in self.strings:
                return True
            if self.numbers and _NUMBER_TEXT.fullmatch(value):
                return float(value) in self.numbers
            return False
        if isinstance(value, bool):
            return value in self.bools
        if isinstance(value, int | float):
            return value in self.numbers
        return False


class _Regex(_PropertyTest):
    """`re.search` on a string value, or on a number's shortest text."""

    __slots__ = ("pattern",)

    def __init__(self, key: str, pattern: re.Pattern[str]) -> None:
        super().__init__(key)
        self.pattern = pattern

    def _scalar(self, value: Any) -> bool:
        if isinstance(value, str):
            return self.pattern.search(value) is not None
        if isinstance(value, bool):
            return self.pattern.search("true" if value else "false") is not None
        if isinstance(value, int | float):
            text = _number_text(value)
            return text is not None and self.pattern.search(text) is not None
        return False


class _Exists(_PropertyTest):
    """The key is present with a non-null value."""

    __slots__ = ()

    def _value(self, value: Any) -> bool:
        return value is not None

    def _scalar(self, value: Any) -> bool:
        return value is not None


class _Check:
    """What is left of a condition once channel, source and action are known."""

    __slots__ = ("negated", "tests")

    def __init__(self, tests: tuple[_PropertyTest, ...], negated: _Check | None) -> None:
        self.tests = tests
        self.negated = negated

    def __call__(self, properties: Mapping[str, Any]) -> bool:
        for test in self.tests:
            if not test(properties):
                return False
        return self.negated is None or not self.negated(properties)


@dataclass(frozen=True, slots=True)
class _When:
    """A compiled `when`: every given condition must hold, and `negated` must not."""

    channels: frozenset[Channel] | None
    sources: frozenset[str] | None
    actions: frozenset[str] | None
    action_regex: re.Pattern[str] | None
    tests: tuple[_PropertyTest, ...]
    negated: _When | None

    def residual(self, channel: Channel, source: str, action: str) -> bool | _Check:
        """True/False if decided by channel, source and action alone, else the property check left."""
        if self.channels is not None and channel not in self.channels:
            return False
        if self.sources is not None and source not in self.sources:
            return False
        if self.actions is not None and action not in self.actions:
            return False
        if self.action_regex is not None and self.action_regex.search(action) is None:
            return False
        negated: _Check | None = None
        if self.negated is not None:
            inner = self.negated.residual(channel, source, action)
            if inner is True:
                return False
            if inner is not False:
                negated = inner
        if not self.tests and negated is None:
            return True
        return _Check(self.tests, negated)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    when: _When
    phase: Phase | None = None
    sentiment: float | None = None


# ---------------------------------------------------------------------------
# Loading and validation

_Entries = tuple[tuple[_Rule, _Check | None], ...]


class _Where:
    """Error location, e.g. `phases[3] (web-checkout): when.not`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str) -> RulesError:
        return RulesError(f"{self.text}: {message}")


def _strings(value: Any, where: _Where, what: str) -> frozenset[str]:
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise where.error(f"{what} is an empty list (it would never match)")
    for item in items:
        if not isinstance(item, str) or not item:
            raise where.error(f"{what} must be a non-empty string or a list of them, got {item!r}")
    return frozenset(items)


def _regex(value: Any, where: _Where, what: str) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise where.error(f"{what} must be a non-empty regular expression string, got {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise where.error(f"{what} {value!r} is not a valid regular expression: {exc}") from None


def _key(value: Any, where: _Where, what: str) -> str:
    if not isinstance(value, str) or not value or "" in value.split("."):
        raise where.error(f"{what}: property key must be a non-empty (dotted) name, got {value!r}")
    return value


def _equals(key: str, value: Any, where: _Where) -> _Equals:
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise where.error(f"properties.{key} is an empty list (it would never match)")
    strings: set[str] = set()
    numbers: set[float] = set()
    bools: set[bool] = set()
    for item in items:
        if isinstance(item, bool):
            bools.add(item)
        elif isinstance(item, int | float) and math.isfinite(item):
            numbers.add(item)
        elif isinstance(item, str):
            strings.add(item)
            if _NUMBER_TEXT.fullmatch(item):
                numbers.add(float(item))
        else:
            raise where.error(
                f"properties.{key}: values must be strings, finite numbers or booleans, got {item!r}"
            )
    return _Equals(key, frozenset(strings), frozenset(numbers), frozenset(bools))


def _compile_when(data: Any, where: _Where) -> _When:
    if not isinstance(data, Mapping):
        raise where.error(f"must be a mapping of conditions, got {type(data).__name__}")
    for key in data:
        if key not in CONDITIONS:
            raise where.error(f"unknown condition {key!r}; allowed: {', '.join(CONDITIONS)}")

    channels: frozenset[Channel] | None = None
    if "channel" in data:
        names = _strings(data["channel"], where, "channel")
        try:
            channels = frozenset(Channel(name.lower()) for name in names)
        except ValueError:
            known = ", ".join(c.value for c in Channel)
            raise where.error(
                f"channel {sorted(names)} includes an unknown channel; known: {known}"
            ) from None

    tests: list[_PropertyTest] = []
    properties = data.get("properties", {})
    if not isinstance(properties, Mapping):
        raise where.error("properties must be a mapping of key: value-or-list")
    for key, value in properties.items():
        tests.append(_equals(_key(key, where, "properties"), value, where))
    regexes = data.get("property_regex", {})
    if not isinstance(regexes, Mapping):
        raise where.error("property_regex must be a mapping of key: regex")
    for key, value in regexes.items():
        key = _key(key, where, "property_regex")
        tests.append(_Regex(key, _regex(value, where, f"property_regex.{key}")))
    if "property_exists" in data:
        for key in sorted(_strings(data["property_exists"], where, "property_exists")):
            tests.append(_Exists(_key(key, where, "property_exists")))

    negated = None
    if "not" in data:
        negated = _compile_when(data["not"], _Where(f"{where.text}.not"))
    return _When(
        channels=channels,
        sources=_strings(data["source"], where, "source") if "source" in data else None,
        actions=_strings(data["action"], where, "action") if "action" in data else None,
        action_regex=_regex(data["action_regex"], where, "action_regex") if "action_regex" in data else None,
        tests=tuple(tests),
        negated=negated,
    )


def _compile_rule(section: str, index: int, data: Any, seen: set[str]) -> _Rule:
    where = _Where(f"{section}[{index}]")
    if not isinstance(data, Mapping):
        raise where.error(f"a rule must be a mapping with name and when, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise where.error("every rule needs a non-empty `name`")
    where = _Where(f"{section}[{index}] ({name})")
    if name in seen:
        raise where.error(f"duplicate rule name {name!r} in {section}")
    seen.add(name)
    allowed = _RULE_KEYS[section]
    for key in data:
        if key not in allowed:
            raise where.error(f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
    if "when" not in data:
        raise where.error("missing `when` (use `when: {}` to match every touchpoint)")
    when = _compile_when(data["when"], _Where(f"{where.text}: when"))

    phase: Phase | None = None
    sentiment: float | None = None
    if section == "phases":
        if "phase" not in data:
            raise where.error("missing `phase`")
        try:
            phase = parse_phase(data["phase"])
        except ValueError as exc:
            raise where.error(str(exc)) from None
    if section == "sentiment":
        value = data.get("sentiment")
        if isinstance(value, bool) or not isinstance(value, int | float) or not -1.0 <= value <= 1.0:
            raise where.error(f"sentiment must be a number in [-1, 1], got {value!r}")
        sentiment = float(value)
    return _Rule(name=name, when=when, phase=phase, sentiment=sentiment)


def _compile_section(section: str, data: Any) -> tuple[_Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise RulesError(f"{section}: must be a list of rules, got {type(data).__name__}")
    seen: set[str] = set()
    return tuple(_compile_rule(section, index, rule, seen) for index, rule in enumerate(data))


# ---------------------------------------------------------------------------
# Plans and classification


def _entries(rules: tuple[_Rule, ...], channel: Channel, source: str, action: str) -> _Entries:
    """The rules that can still match, in order, each with its property check (None: matches)."""
    entries: list[tuple[_Rule, _Check | None]] = []
    for rule in rules:
        residual = rule.when.residual(channel, source, action)
        if residual is True:
            entries.append((rule, None))
            break
        if residual is not False:
            entries.append((rule, residual))
    return tuple(entries)


def _first(entries: _Entries, properties: Mapping[str, Any]) -> _Rule | None:
    for rule, check in entries:
        if check is None or check(properties):
            return rule
    return None


def _decided(entries: _Entries) -> bool:
    return not entries or entries[0][1] is None


def _answer_key(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Property values as part of a memo key, or None when an answer must not be memoised.

    Strings and None stand for themselves; a list of strings becomes a tuple of
    them (a check on a list asks each element, so only the elements matter; no
    JSON value is a tuple, and a tuple given here is refused). Anything else is
    refused: numbers and booleans compare equal across types (`True == 1`) yet
    get different answers, and dicts are walked by dotted keys.
    """
    converted: list[Any] | None = None
    for index, value in enumerate(values):
        if value is None or type(value) is str:
            continue
        if type(value) is list:
            for item in value:
                if type(item) is not str:
                    return None
            if converted is None:
                converted = list(values)
            converted[index] = tuple(value)
            continue
        return None
    return values if converted is None else tuple(converted)


def _with_own_sentiment(answer: Classification, own_sentiment: float) -> Classification:
    """`answer` for a touchpoint with a sentiment of its own: the sentiment rules are not consulted.

    Made positionally: `_replace` costs several times as much, once per touchpoint.
    """
    return Classification(
        answer.phase,
        answer.rule,
        answer.failure,
        answer.failure_rule,
        answer.passive,
        own_sentiment,
        answer.conversion,
    )


def _reads(sections: tuple[_Entries, ...]) -> tuple[str, ...]:
    """The top-level property keys the checks of a plan can read, in a stable order.

    A test reads `properties[key]` and, for a dotted key, walks from its first
    part; nothing else of the properties reaches a check.
    """
    keys: dict[str, None] = {}
    pending = [check for entries in sections for _, check in entries if check is not None]
    while pending:
        check = pending.pop()
        for test in check.tests:
            keys[test.key] = None
            keys[test.path[0]] = None
        if check.negated is not None:
            pending.append(check.negated)
    return tuple(sorted(keys))


@dataclass(frozen=True, slots=True)
class _Plan:
    phases: _Entries
    failures: _Entries
    passive: _Entries
    conversions: _Entries
    sentiment: _Entries
    fixed: Classification | None  # the result when no property condition is left anywhere
    reads: tuple[str, ...]  # every property key the checks left may read (top-level)


class PhaseRules:
    """A validated, compiled rule set. Build with `from_mapping`; use `classify`.

    Immutable as far as results go; the only state is a bounded memo of plans per
    (channel, source, action), safe to share between threads (a race only
    computes a plan twice).
    """

    __slots__ = ("_answers", "_conversions", "_failures", "_passive", "_phases", "_plans", "_sentiment")

    def __init__(
        self,
        phases: tuple[_Rule, ...] = (),
        failure_signals: tuple[_Rule, ...] = (),
        passive: tuple[_Rule, ...] = (),
        conversions: tuple[_Rule, ...] = (),
        sentiment: tuple[_Rule, ...] = (),
    ) -> None:
        self._phases = phases
        self._failures = failure_signals
        self._passive = passive
        self._conversions = conversions
        self._sentiment = sentiment
        self._plans: dict[tuple[Channel, str, str], _Plan] = {}
        self._answers: dict[tuple[tuple[Channel, str, str], tuple[str | None, ...]], Classification] = {}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> PhaseRules:
        """Validate and compile a parsed rules file; raises `RulesError` naming the rule and key."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise RulesError(f"rules must be a mapping of sections, got {type(data).__name__}")
        for key in data:
            if key not in SECTIONS:
                raise RulesError(f"unknown section {key!r}; allowed: {', '.join(SECTIONS)}")
        return cls(*(_compile_section(section, data.get(section)) for section in SECTIONS))

    def __repr__(self) -> str:
        counts = (self._phases, self._failures, self._passive, self._conversions, self._sentiment)
        return "PhaseRules(" + ", ".join(f"{s}={len(r)}" for s, r in zip(SECTIONS, counts, strict=True)) + ")"

    def rule_names(self, section: str) -> tuple[str, ...]:
        """Names of the rules of one section, in file order."""
        rules = dict(
            zip(
                SECTIONS,
                (self._phases, self._failures, self._passive, self._conversions, self._sentiment),
                strict=True,
            )
        )
        if section not in rules:
            raise KeyError(f"unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        return tuple(rule.name for rule in rules[section])

    def classify(self, tp: Touchpoint) -> Classification:
        """Phase, failure, passive, conversion and sentiment of one touchpoint."""
        return self.classify_fields(tp.channel, tp.source, tp.action, tp.sentiment, tp.properties)

    def classify_fields(
        self,
        channel: Channel,
        source: str,
        action: str,
        own_sentiment: float | None,
        properties: Mapping[str, Any],
    ) -> Classification:
        """`classify` for a touchpoint given by the fields the rules read (a validated touchpoint's)."""
        key = (channel, source, action)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(*key)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        fixed = plan.fixed
        if fixed is not None:
            if own_sentiment is None or own_sentiment == fixed.sentiment:
                return fixed
            return _with_own_sentiment(fixed, own_sentiment)
        # What is left depends on the properties only through the values at
        # `plan.reads`; when those are all strings, lists of strings or absent
        # (a page's path, an email's categories), the answer is memoised per
        # values. Other values are checked every time: `True == 1` as a key, yet
        # a rule tells them apart.
        values = _answer_key(tuple(map(properties.get, plan.reads)))
        if values is None:
            return self._evaluate(plan, own_sentiment, properties)
        answers = self._answers
        memo_key = (key, values)
        answer = answers.get(memo_key)
        if answer is None:
            answer = self._evaluate(plan, None, properties)
            if len(answers) >= _MAX_ANSWERS:
                answers.clear()
            answers[memo_key] = answer
        return answer if own_sentiment is None else _with_own_sentiment(answer, own_sentiment)

    @staticmethod
    def _evaluate(plan: _Plan, own_sentiment: float | None, properties: Mapping[str, Any]) -> Classification:
        """The property checks a plan leaves, evaluated on one touchpoint's properties."""
        phase_rule = _first(plan.phases, properties)
        failure_rule = _first(plan.failures, properties)
        if own_sentiment is None:
            sentiment_rule = _first(plan.sentiment, properties)
            if sentiment_rule is not None:
                own_sentiment = sentiment_rule.sentiment
        return Classification(
            phase_rule.phase if phase_rule is not None else None,
            phase_rule.name if phase_rule is not None else None,
            failure_rule is not None,
            failure_rule.name if failure_rule is not None else None,
            _first(plan.passive, properties) is not None,
            own_sentiment,
            _first(plan.conversions, properties) is not None,
        )

    def _plan(self, channel: Channel, source: str, action: str) -> _Plan:
        phases = _entries(self._phases, channel, source, action)
        failures = _entries(self._failures, channel, source, action)
        passive = _entries(self._passive, channel, source, action)
        conversions = _entries(self._conversions, channel, source, action)
        sentiment = _entries(self._sentiment, channel, source, action)
        fixed = None
        if all(_decided(e) for e in (phases, failures, passive, conversions, sentiment)):
            empty: dict[str, Any] = {}
            phase_rule, failure_rule = _first(phases, empty), _first(failures, empty)
            sentiment_rule = _first(sentiment, empty)
            fixed = Classification(
                phase=phase_rule.phase if phase_rule else None,
                rule=phase_rule.name if phase_rule else None,
                failure=failure_rule is not None,
                failure_rule=failure_rule.name if failure_rule else None,
                passive=bool(passive),
                sentiment=sentiment_rule.sentiment if sentiment_rule else None,
                conversion=bool(conversions),
            )
        sections = (phases, failures, passive, conversions, sentiment)
        return _Plan(phases, failures, passive, conversions, sentiment, fixed, _reads(sections))
