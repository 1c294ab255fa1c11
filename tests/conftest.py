"""Shared fixtures.

chDB holds one data path per process, so the whole pytest process uses one
embedded path and every test gets its own database inside it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.storage import close_all
from processors.stream.broker import tansu_broker

PII_KEY = "test-pii-key-0123456789abcdef"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("chdb")
    yield path
    close_all()


@pytest.fixture
def dsn(chdb_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database in the session's embedded chDB."""
    return f"chdb://{chdb_path}?database=t{next(_databases)}"


@pytest.fixture(autouse=True)
def pii_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A known PII key for every test (and no key file written into the work tree)."""
    monkeypatch.setenv("JOURNEYS_PII_KEY", PII_KEY)
    monkeypatch.delenv("JOURNEYS_PII_KEY_FILE", raising=False)
    monkeypatch.delenv("JOURNEYS_DB", raising=False)
    monkeypatch.delenv("JOURNEYS_CONFIG", raising=False)
    monkeypatch.delenv("JOURNEYS_RULES", raising=False)
    return PII_KEY


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """One broker per test session; each test uses its own topic prefix (`topic_prefix`)."""
    with tansu_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def fresh_kafka() -> Iterator[str]:
    """A broker of this test's own, for tests whose timing the shared broker's load would skew."""
    with tansu_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix of this test's own, so tests sharing the broker never see each other's records."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"t{next(_databases)}-{request.node.name[:40]}")


def docker_unavailable() -> str | None:
    """Why the testcontainers variants cannot run here, or None when a Docker engine answers."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no socket, no permission, engine down: all mean "skip"
        return f"no Docker engine reachable ({type(exc).__name__}); testcontainers tests run where one is"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skips, with the reason, where no Docker engine answers (the testcontainers tests)."""
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_services(docker_engine: None) -> Iterator[tuple[str, str]]:
    """Apache Kafka (KRaft) and a ClickHouse server in containers: (bootstrap, ClickHouse DSN)."""
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.community.kafka import KafkaContainer

    with (
        KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as kafka,
        ClickHouseContainer("clickhouse/clickhouse-server:24.8") as clickhouse,
    ):
        host, port = clickhouse.get_container_host_ip(), clickhouse.get_exposed_port(8123)
        dsn = f"http://{clickhouse.username}:{clickhouse.password}@{host}:{port}/{clickhouse.dbname}"
        yield kafka.get_bootstrap_server(), dsn
