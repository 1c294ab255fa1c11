"""The Faust app's wiring: names that keep deployments sharing a cluster apart."""

from __future__ import annotations

from ingest.topics import Topics
from processors.config import Settings
from processors.stream.app import StreamConfig, create_app


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
