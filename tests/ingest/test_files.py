"""File readers: JSON lines, JSON, CSV, gzip, and damage that must not stop a run."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ingest.adapters.callcsv import COLUMNS
from ingest.context import IngestContext
from ingest.files import read_records
from ingest.pipeline import parse_records
from ingest.records import DeadLetter, RawRecord
from journeys.touchpoint import Touchpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CTX = IngestContext.with_key(b"files-test-key", now=lambda: datetime(2024, 6, 1, tzinfo=UTC))
HEADER = ",".join(COLUMNS)


def summary(records: list[RawRecord]) -> list[tuple[str, str | None, str | None]]:
    return [(r.origin, r.format, r.error) for r in records]


def test_jsonl_skips_blank_lines_and_strips_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "web.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"b": 2}\r\n')
    records = list(read_records(path))
    assert [(r.raw, r.origin, r.format) for r in records] == [
        (b'{"a": 1}', "web.jsonl:1", None),
        (b'{"b": 2}', "web.jsonl:4", None),
    ]


def test_json_array_yields_one_record_per_element(tmp_path: Path) -> None:
    records = list(read_records(FIXTURES / "sendgrid" / "events.json"))
    assert len(records) == 11
    assert records[3].origin == "events.json[3]"
    assert orjson.loads(records[3].raw)["event"] == "open"


def test_json_object_is_one_record_with_its_own_bytes() -> None:
    path = FIXTURES / "meta" / "messenger.json"
    (record,) = read_records(path)
    assert (record.raw, record.origin) == (path.read_bytes().strip(), "messenger.json")


def test_empty_json_array_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text(" [ ] \n")
    assert list(read_records(path)) == []


def test_misnamed_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text('{"a": 1}\n{"b": 2}\n')
    assert [r.origin for r in read_records(path)] == ["export.json:1", "export.json:2"]


def test_damaged_pretty_printed_json_is_one_record(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text('{\n  "object": "page",\n  "entry": [\n')
    (record,) = read_records(path)
    assert record.origin == "meta.json"
    (letter,) = parse_records([record], CTX)
    assert letter.reason.startswith("malformed JSON: ")


def test_too_deeply_nested_element_is_an_error_record(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b"[1, " + b"[" * 300 + b"]" * 300 + b"]")
    first, deep = read_records(path)
    assert first.raw == b"1"
    assert deep.origin == "deep.json[1]"
    assert deep.error is not None and deep.error.startswith("array element cannot be re-serialised")


def test_csv_rows_become_json_objects(tmp_path: Path) -> None:
    records = list(read_records(FIXTURES / "callcsv" / "calls.csv"))
    assert [r.origin for r in records] == [f"calls.csv:row {n}" for n in range(2, 7)]
    assert {r.format for r in records} == {"callcsv"}
    assert orjson.loads(records[4].raw)["queue"] == "billing, NL"


def test_bad_csv_rows_are_error_records_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_bytes(
        (
            HEADER
            + "\n"
            + "c1,2024-03-05T09:12:00Z,,0612345678,q,1,answered,,,,,\n"
            + "c2,too,short\n\n"
            + "c3,2024-03-05T09:12:00Z,,0612345678,q,1,answered,,,,,\n"
        ).encode()
        + b"c4,2024-03-05T09:12:00Z,,06\xff12345678,q,1,answered,,,,,\n"
    )
    records = list(read_records(path))
    assert summary(records) == [
        ("calls.csv:row 2", "callcsv", None),
        ("calls.csv:row 3", "callcsv", "CSV row has 3 fields, the header has 12"),
        ("calls.csv:row 5", "callcsv", None),
        ("calls.csv:row 6", "callcsv", "CSV row is not valid UTF-8"),
    ]
    assert records[1].raw == b"c2,too,short"
    assert records[3].raw == b"c4,2024-03-05T09:12:00Z,,06\xff12345678,q,1,answered,,,,,"
    outcomes = list(parse_records(records, CTX))
    assert [type(o) for o in outcomes] == [Touchpoint, DeadLetter, Touchpoint, DeadLetter]


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("call_id,,outcome", "CSV header has an empty column name"),
        ("call_id,outcome,call_id", "CSV header names column 'call_id' twice"),
    ],
)
def test_bad_csv_header(tmp_path: Path, header: str, error: str) -> None:
    path = tmp_path / "calls.csv"
    path.write_text(header + "\nc1,answered,x\n")
    assert summary(list(read_records(path))) == [("calls.csv:row 1", "callcsv", error)]


@pytest.mark.parametrize("name", ["web.jsonl.gz", "web.gz", "web.ndjson.gz"])
def test_gzip_by_suffix_or_magic(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"b": 2}\n'))
    records = list(read_records(path, layout="jsonl") if name == "web.gz" else read_records(path))
    assert [r.raw for r in records] == [b'{"a": 1}', b'{"b": 2}']


def test_gzip_json_sniffed_without_a_known_suffix(tmp_path: Path) -> None:
    path = tmp_path / "dump.bin"
    path.write_bytes(gzip.compress(b'[{"a": 1}, {"b": 2}]'))
    assert [r.origin for r in read_records(path)] == ["dump.bin[0]", "dump.bin[1]"]


def test_gzip_csv(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv.gz"
    path.write_bytes(gzip.compress((FIXTURES / "callcsv" / "calls.csv").read_bytes()))
    outcomes = list(parse_records(read_records(path), CTX))
    assert len(outcomes) == 5 and all(isinstance(o, Touchpoint) for o in outcomes)


def test_truncated_gzip_keeps_complete_lines_and_reports_the_rest(tmp_path: Path) -> None:
    lines = b"".join(b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * 50) for n in range(2000))
    data = gzip.compress(lines)
    path = tmp_path / "web.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    records = list(read_records(path))
    good, last = records[:-1], records[-1]
    assert good and all(r.error is None for r in good)
    assert [orjson.loads(r.raw)["n"] for r in good] == list(range(len(good)))
    assert last.origin == f"web.jsonl.gz:{len(good) + 1}"
    assert last.error is not None and last.error.startswith(
        f"truncated or corrupt gzip stream after line {len(good)}"
    )
    (letter,) = parse_records([last], CTX)
    assert letter.reason == last.error


def test_truncated_gzip_json_and_csv(tmp_path: Path) -> None:
    data = gzip.compress(b"[" + b",".join(b'{"n": %d}' % n for n in range(5000)) + b"]")
    path = tmp_path / "events.json.gz"
    path.write_bytes(data[:-20])
    (record,) = read_records(path)
    assert record.error is not None and record.error.startswith(
        "truncated or corrupt gzip stream while reading"
    )
    csv_data = gzip.compress(
        (HEADER + "\n").encode() + b"c,2024-03-05T09:12:00Z,,0612345678,q,1,answered,,,,,\n" * 5000
    )
    path = tmp_path / "calls.csv.gz"
    path.write_bytes(csv_data[: len(csv_data) // 2])
    records = list(read_records(path))
    assert records[-1].error is not None and "truncated or corrupt gzip stream at row" in records[-1].error
    assert all(r.error is None for r in records[:-1])


def test_format_argument_is_the_adapter_format(tmp_path: Path) -> None:
    records = list(read_records(FIXTURES / "twilio" / "inbound_call.txt", "twilio"))
    assert {r.format for r in records} == {"twilio"}
    records = list(read_records(FIXTURES / "callcsv" / "calls.csv", record_format="callcsv", layout="csv"))
    assert {r.format for r in records} == {"callcsv"}
    # a layout name is still accepted in `format` (older callers)
    assert len(list(read_records(FIXTURES / "social" / "export.jsonl", "jsonl"))) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "mailchimp"}, "unknown format 'mailchimp'"),
        ({"layout": "xml"}, "unknown file layout 'xml'"),
        ({"format": "segment", "record_format": "meta"}, "disagree"),
    ],
)
def test_bad_arguments_raise_at_once(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_records(FIXTURES / "social" / "export.jsonl", **kwargs)


def test_undecidable_layout_and_missing_file_raise(tmp_path: Path) -> None:
    path = tmp_path / "calls.log"
    path.write_text("CallSid=CA1\n")
    with pytest.raises(ValueError, match=r"cannot tell the layout of calls\.log"):
        read_records(path)
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")
