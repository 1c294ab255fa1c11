"""Read provider exports from disk as `RawRecord`s: JSON lines, JSON array/object, CSV, gzip.

Layouts (`format`), chosen from the file name when not given:

- `jsonl` (`.jsonl`, `.ndjson`, `.jsonlines`, `.txt`): one record per non-blank
  line, origin `web.jsonl:17`. Lines are not parsed here; a malformed one becomes
  a `malformed JSON` dead letter in the pipeline. A line may also be a
  form-encoded Twilio callback body.
- `json` (`.json`): a top-level array yields one record per element (origin
  `sendgrid.json[3]`, 0-based); anything else is one record (origin
  `meta.json`). A `.json` file that does not parse as one document but whose
  first line is a JSON document by itself is read as JSON lines, as exports
  are often misnamed; otherwise it is one (malformed) record. An element too
  deeply nested to re-serialise comes out with `error` set.
- `csv` (`.csv`): the first row is the header; each later row becomes one
  record whose `raw` is a JSON object built from header and row (so dead
  letters can be replayed through the JSON path) with format hint `callcsv`.
  Origin `calls.csv:row 4` counts rows as a spreadsheet does, header = row 1.

Any of these may be gzip-compressed (`.gz` suffix or gzip magic bytes). Damage
does not stop or crash reading: a CSV row with the wrong number of fields, a
truncated or corrupt gzip stream, or a read error comes out as a `RawRecord`
with `error` set, which the pipeline turns into a dead letter.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from .records import RawRecord

LAYOUTS: tuple[str, ...] = ("jsonl", "json", "csv")
CSV_RECORD_FORMAT = "callcsv"
_SUFFIX_LAYOUTS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonlines": "jsonl",
    ".txt": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_STREAM_ERRORS = (EOFError, OSError, zlib.error)


def read_records(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    layout: str | None = None,
    record_format: str | None = None,
) -> Iterator[RawRecord]:
    """Records of one file, lazily.

    `format` is the adapter format (`segment`, `sendgrid`, … as in
    `ingest.pipeline.FORMATS`) stamped on every record; None detects per record
    (CSV rows default to `callcsv`). `record_format` is an older name for it.
    For compatibility a layout name (`jsonl`, `json`, `csv`) is also accepted as
    `format`. `layout` is the file layout; None chooses it from the file name, or
    from the content for `{`/`[`. An unknown name, a missing file or an
    undecidable layout raises at once; damage inside the file does not.
    """
    from .adapters import ADAPTERS  # here, not at import: keeps the reader free of adapter imports

    file = Path(path)
    if format in LAYOUTS and layout is None:
        layout, format = format, None
    if format is not None and record_format is not None and format != record_format:
        raise ValueError(f"format {format!r} and record_format {record_format!r} disagree")
    record_format = format or record_format
    if record_format is not None and record_format not in ADAPTERS:
        known = ", ".join(ADAPTERS)
        raise ValueError(f"unknown format {record_format!r}; known formats: {known}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown file layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    compressed = _is_gzip(file)
    layout = layout or _layout_from_name(file) or _sniff_layout(file, compressed)
    if layout == "jsonl":
        return _read_lines(file, compressed, record_format)
    if layout == "json":
        return _read_json(file, compressed, record_format)
    return _read_csv(file, compressed, record_format or CSV_RECORD_FORMAT)


def _is_gzip(file: Path) -> bool:
    with file.open("rb") as stream:
        return stream.read(2) == _GZIP_MAGIC


def _layout_from_name(file: Path) -> str | None:
    suffixes = [suffix.lower() for suffix in file.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _SUFFIX_LAYOUTS.get(suffixes[-1]) if suffixes else None


def _sniff_layout(file: Path, compressed: bool) -> str:
    try:
        with _open(file, compressed) as stream:
            head = stream.read(4096).lstrip(_BOM).lstrip()
    except _STREAM_ERRORS:
        head = b""
    if head[:1] in (b"{", b"["):
        return "json"
    raise ValueError(f"cannot tell the layout of {file.name} from its name; pass format= one of {LAYOUTS}")


def _open(file: Path, compressed: bool) -> BinaryIO:
    return gzip.open(file, "rb") if compressed else file.open("rb")  # type: ignore[return-value]


def _stream_error(exc: BaseException, compressed: bool, where: str) -> str:
    what = "truncated or corrupt gzip stream" if compressed else "read error"
    return f"{what} {where}: {exc}"


def _read_lines(file: Path, compressed: bool, record_format: str | None) -> Iterator[RawRecord]:
    name = file.name
    line_no = 0
    with _open(file, compressed) as stream:
        try:
            for line_no, line in enumerate(stream, 1):
                stripped = line.strip()
                if line_no == 1 and stripped.startswith(_BOM):
                    stripped = stripped[len(_BOM) :].strip()
                if stripped:
                    yield RawRecord(stripped, f"{name}:{line_no}", record_format)
        except _STREAM_ERRORS as exc:
            reason = _stream_error(exc, compressed, f"after line {line_no}")
            yield RawRecord(b"", f"{name}:{line_no + 1}", record_format, error=reason)


def _split_lines(data: bytes, name: str, record_format: str | None) -> Iterator[RawRecord]:
    for line_no, line in enumerate(data.split(b"\n"), 1):
        stripped = line.strip()
        if stripped:
            yield RawRecord(stripped, f"{name}:{line_no}", record_format)


def _read_json(file: Path, compressed: bool, record_format: str | None) -> Iterator[RawRecord]:
    name = file.name
    try:
        with _open(file, compressed) as stream:
            data = stream.read()
    except _STREAM_ERRORS as exc:
        yield RawRecord(b"", name, record_format, error=_stream_error(exc, compressed, "while reading"))
        return
    data = data.removeprefix(_BOM).strip()
    if not data:
        return
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        if _looks_like_json_lines(data):
            yield from _split_lines(data, name, record_format)
        else:
            # One damaged document: one dead letter, not one per line of it.
            yield RawRecord(data, name, record_format)
        return
    if isinstance(parsed, list):
        for index, element in enumerate(parsed):
            origin = f"{name}[{index}]"
            try:
                raw = orjson.dumps(element)
            except orjson.JSONEncodeError as exc:
                reason = f"array element cannot be re-serialised: {exc}"
                yield RawRecord(b"", origin, record_format, error=reason)
                continue
            yield RawRecord(raw, origin, record_format)
    else:
        yield RawRecord(data, name, record_format)


def _looks_like_json_lines(data: bytes) -> bool:
    """Several lines whose first one is a JSON document by itself (a misnamed `.jsonl`)."""
    first, newline, _ = data.partition(b"\n")
    if not newline:
        return False
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return True


def _csv_line(row: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue().rstrip("\r\n").encode("utf-8", errors="surrogateescape")


def _read_csv(file: Path, compressed: bool, record_format: str) -> Iterator[RawRecord]:
    name = file.name
    with _open(file, compressed) as binary:
        # surrogateescape: a bad byte spoils its own row (reported below), not the whole file.
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header_row = next(reader, None)
        except (csv.Error, *_STREAM_ERRORS) as exc:
            yield RawRecord(b"", f"{name}:row 1", record_format, error=f"unreadable CSV header: {exc}")
            return
        if header_row is None:
            return
        header = [column.strip() for column in header_row]
        problem = _header_problem(header)
        if problem is not None:
            yield RawRecord(_csv_line(header_row), f"{name}:row 1", record_format, error=problem)
            return
        row_no = 1
        while True:
            row_no += 1
            origin = f"{name}:row {row_no}"
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield RawRecord(b"", origin, record_format, error=f"malformed CSV row: {exc}")
                continue
            except _STREAM_ERRORS as exc:
                reason = _stream_error(exc, compressed, f"at row {row_no}")
                yield RawRecord(b"", origin, record_format, error=reason)
                return
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                reason = f"CSV row has {len(row)} fields, the header has {len(header)}"
                yield RawRecord(_csv_line(row), origin, record_format, error=reason)
                continue
            try:
                raw = orjson.dumps(dict(zip(header, row, strict=True)))
            except orjson.JSONEncodeError:
                yield RawRecord(_csv_line(row), origin, record_format, error="CSV row is not valid UTF-8")
                continue
            yield RawRecord(raw, origin, record_format)


def _header_problem(header: list[str]) -> str | None:
    if any(not column for column in header):
        return "CSV header has an empty column name"
    seen: set[str] = set()
    for column in header:
        if column in seen:
            return f"CSV header names column {column!r} twice"
        seen.add(column)
    return None
