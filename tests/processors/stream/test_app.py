"""The Faust app's wiring: names that keep deployments sharing a cluster apart, settings that reach
the stages."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from ingest.topics import Topics
from processors.config import Settings
from processors.stream.alignment import Alignment
from processors.stream.app import ReconstructStage, StreamConfig, _written_at, create_app


def test_each_topic_prefix_gets_its_own_group_and_changelog(dsn: str) -> None:
    apps = [
        create_app(
            Settings(dsn=dsn), StreamConfig(bootstrap="127.0.0.1:1", topics=Topics(prefix), web_port=None)
        )
        for prefix in ("shop-nl", "shop-be")
    ]
    groups = [app.conf.id for app in apps]
    changelogs = [app.tables["event-log"].changelog_topic.get_topic_name() for app in apps]
    assert groups == ["shop-nl", "shop-be"]
    assert changelogs == ["shop-nl-event-log-changelog", "shop-be-event-log-changelog"]


def test_the_reconstruct_stage_holds_by_the_alignment_it_is_given(dsn: str) -> None:
    """An empty Alignment is falsy (it has a length): the stage once swapped the configured one for
    the default, and `--align-max-held` and `--align-idle-seconds` did nothing."""
    settings = Settings(dsn=dsn)
    configured: Alignment[Any] = Alignment(idle_seconds=2, max_held=1_500)
    stage = ReconstructStage(settings, settings.rules(), configured)
    assert stage.alignment is configured


def test_the_reconstruct_stages_clock_never_runs_ahead_of_this_machines() -> None:
    """Alignment judges idle partitions by when their reports were written (Kafka timestamps); a
    message stamped in the future, or not at all, counts as written now."""

    def event(timestamp: float | None) -> Any:
        return SimpleNamespace(message=SimpleNamespace(timestamp=timestamp))

    before = time.time()
    assert _written_at(event(before - 60)) == before - 60
    for odd in (before + 3600, None, 0, -1):
        assert before <= _written_at(event(odd)) <= time.time()
