"""Process-wide settings for the long-running shells (embedded runs, stream workers, the sink).

The aggregate keeps every admitted touchpoint in memory: millions of long-lived
objects. CPython's default collector thresholds (700 allocations per young
collection) make it rescan them again and again while a batch is parsed and
folded; measured on the 3,000-customer demo, that was 30% of a run. The
reconstruction holds almost no reference cycles, so collecting rarely costs
little memory.
"""

from __future__ import annotations

import gc

# Young collections every 50k allocations; older generations almost never.
BULK_THRESHOLDS = (50_000, 50, 1_000)


def tune_gc_for_bulk() -> None:
    """Collect rarely: for processes whose live objects are mostly the aggregate's long-lived state."""
    gc.set_threshold(*BULK_THRESHOLDS)
