"""The collector settings of the long-running shells: paused stretches restore what was there before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from processors.runtime import CollectorPause, collector_paused


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.enable()
    yield
    if not enabled:
        gc.disable()


def test_a_pause_lasts_until_resumed_and_restores_the_collector(collector_enabled: None) -> None:
    pause = CollectorPause()
    pause.pause()
    pause.pause()  # a batch's second poll: still one pause
    assert not gc.isenabled()
    pause.resume()
    assert gc.isenabled()
    pause.resume()  # after the write and again on the way out
    assert gc.isenabled()


def test_a_pause_leaves_a_collector_that_was_off_off(collector_enabled: None) -> None:
    gc.disable()
    pause = CollectorPause()
    pause.pause()
    pause.resume()
    assert not gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
