"""Hypothesis strategies for hostile and broken input, shared by the pipeline and collector fuzz tests.

Malformed and truncated JSON, wrong types, deep nesting, huge fields, control
characters and wrong encodings, timestamps out of range, unknown channels and
actions; and objects close to real records (a real sample with a few fields
replaced by such values), so the adapters are exercised past format detection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from hypothesis import strategies as st

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
# Values that break naive code: out-of-range and odd timestamps, control characters, huge strings.
NASTY_VALUES = st.sampled_from(
    [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59+14:00",
        "2026-02-30T10:00:00Z",
        "2026-09-01 10:00:00",
        -(2**63),
        2**63 - 1,
        1e308,
        "\x00\x01\x1b[31m\u202e\ud7ff",
        "x" * 40_000,
        "unknown.channel",
        "Order Completed" * 20,
    ]
)


def near_records(samples: Mapping[str, Mapping[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A real sample with up to four of its (or envelope) keys replaced by hostile values."""
    keys = st.sampled_from(
        sorted({key for sample in samples.values() for key in sample} | {"batch", "entry", "changes"})
    )
    noise = st.dictionaries(keys, JSON_VALUES | NASTY_VALUES, max_size=4)
    return st.sampled_from([dict(sample) for sample in samples.values()]).flatmap(
        lambda sample: noise.map(lambda changes: {**sample, **changes})
    )


def bodies(samples: Mapping[str, Mapping[str, Any]]) -> st.SearchStrategy[bytes]:
    """Request bodies and file lines: random bytes, JSON values, near records, and their damaged forms."""
    documents = JSON_VALUES.map(orjson.dumps)
    if samples:
        documents |= near_records(samples).map(orjson.dumps)
    return (
        st.binary(max_size=200)
        | documents
        | documents.flatmap(lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut]))  # truncated
        | documents.map(lambda raw: raw.decode().encode("utf-16"))  # another encoding
        | st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"]" * depth)  # deep nesting
    )
