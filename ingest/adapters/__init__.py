"""One adapter per provider format; `ADAPTERS` lists them in detection order."""

from __future__ import annotations

from . import callcsv, meta, segment, sendgrid, social, twilio
from .base import Adapter, Leaf, Rejection

# Detection order: the most specific markers first (a `schema` or `object` field
# beats Segment's generic `type`), so no record matches the wrong adapter.
ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        social.ADAPTER,
        meta.ADAPTER,
        segment.ADAPTER,
        twilio.ADAPTER,
        sendgrid.ADAPTER,
        callcsv.ADAPTER,
    )
}

__all__ = ["ADAPTERS", "Adapter", "Leaf", "Rejection"]
