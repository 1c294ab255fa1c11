"""The benchmark's input: the demo generator's provider files for about N events, cached.

`journeys bench --events N` turns N into a number of demo customers for the
population mix (`ingest.demo.MIXES`: the default `demo` mix makes about 30.7
leaf events per customer, `short` about 10), generates their provider files
once and keeps them under the cache directory keyed by mix, customers, seed and
a fingerprint of the generator's source, so a later run at the same N reuses
them (10M events take minutes to generate). Generation time is reported beside
the figures but belongs to no target.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

import ingest.demo
from ingest.demo import DEFAULT_MIX, FILES, MIXES, generate

# Leaf events per customer of each mix (seed 7, 3,000 customers: 92,242 and 30,384 events).
EVENTS_PER_CUSTOMER: dict[str, float] = {"demo": 92_242 / 3_000, "short": 30_384 / 3_000}
assert set(EVENTS_PER_CUSTOMER) == set(MIXES), "one events-per-customer figure per mix"
# From this many events on, the benchmark uses the short mix unless told otherwise: the scale
# target is 10M events from 1M customers. Smaller runs keep the demo mix of runs 1-5.
SHORT_MIX_FROM_EVENTS = 10_000_000
MIN_CUSTOMERS = 10
META = "bench-dataset.json"


@dataclass(frozen=True)
class Dataset:
    """A generated dataset on disk and its accounting (from the generator's truth file)."""

    directory: Path
    inputs: list[str]  # provider file names in the order a run reads them
    customers: int
    seed: int
    mix: str
    records: int  # raw lines/rows (a SendGrid line is one POST holding several events)
    leaf_events: int  # what `journeys run` counts as records read
    stored: int
    duplicates: int
    dead_letters: int
    bytes: int
    generation_s: float
    generator: str
    cached: bool = False

    def paths(self) -> list[Path]:
        return [self.directory / name for name in self.inputs]


def mix_for(events: int, mix: str | None = None) -> str:
    """The population mix of a run: `mix` when given, else `short` at the scale target, `demo` below."""
    if mix is None:
        return "short" if events >= SHORT_MIX_FROM_EVENTS else DEFAULT_MIX
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; choose one of {', '.join(MIXES)}")
    return mix


def customers_for(events: int, mix: str = DEFAULT_MIX) -> int:
    """Demo customers that make about `events` leaf events in `mix`."""
    return max(MIN_CUSTOMERS, round(events / EVENTS_PER_CUSTOMER[mix]))


def generator_fingerprint() -> str:
    """A short hash of the generator's source: a changed generator never reuses old files."""
    return hashlib.sha256(Path(ingest.demo.__file__).read_bytes()).hexdigest()[:12]


def prepare(events: int, cache: Path, *, seed: int = 7, mix: str = DEFAULT_MIX) -> Dataset:
    """The dataset for about `events` events: reused from `cache` when present, else generated there."""
    customers = customers_for(events, mix)
    fingerprint = generator_fingerprint()
    directory = cache / f"{mix}-c{customers}-s{seed}-{fingerprint}"
    meta = directory / META
    if meta.is_file():
        data = orjson.loads(meta.read_bytes())
        data["directory"] = directory
        data["cached"] = True
        return Dataset(**data)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    files = generate(customers=customers, seed=seed, mix=mix).write(partial)
    seconds = time.perf_counter() - started
    counts = orjson.loads(files.truth.read_bytes())["counts"]
    names = [path.name for path in files.inputs()]
    dataset = Dataset(
        directory=directory,
        inputs=names,
        customers=customers,
        seed=seed,
        mix=mix,
        records=sum(counts["files"][name]["lines"] for name in FILES.values()),
        leaf_events=counts["records_read"],
        stored=counts["stored"],
        duplicates=counts["duplicates"],
        dead_letters=counts["dead_letters"],
        bytes=sum((partial / name).stat().st_size for name in names),
        generation_s=round(seconds, 3),
        generator=fingerprint,
    )
    record = asdict(dataset)
    del record["directory"], record["cached"]
    (partial / META).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return Dataset(**{**asdict(dataset), "directory": directory})


def input_paths(directory: Path) -> list[Path]:
    """The provider files of a dataset written by `prepare`, in reading order (not truth.json)."""
    names = orjson.loads((directory / META).read_bytes())["inputs"]
    return [directory / name for name in names]
