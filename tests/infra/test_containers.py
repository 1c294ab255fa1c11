"""The ClickHouse service of docker-compose.yml on the real server image (testcontainers).

The container gets exactly what compose gives it — the image, the environment
and the mounted users.d files — then the writer runs the migrations and a batch
reconstruction through `processors.storage`, the analyst reads the result and
is refused every write, and the passwordless `default` user cannot log in from
outside. Skipped, with the reason, where no Docker engine answers.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from processors.cli import app
from processors.storage import connect, migrate, migrations

pytest.importorskip("testcontainers", reason="testcontainers is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CLICKHOUSE: dict[str, Any] = COMPOSE["services"]["clickhouse"]
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRETS = {
    "CLICKHOUSE_WRITER_PASSWORD": "writer-pw-0123456789",
    "CLICKHOUSE_ANALYST_PASSWORD": "analyst-pw-98765",
}


def interpolate(value: object, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` against `env`."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name in env and (env[name] or not (operator or "").startswith(":")):
            return env[name]
        if operator and operator.endswith("?"):
            raise KeyError(f"{name} is required: {argument}")
        return argument or ""

    return VARIABLE.sub(substitute, str(value))


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    env: dict[str, str]
    mounts: list[tuple[str, str, str]]  # (host path, container path, mode)
    ulimits: dict[str, dict[str, int]]


def clickhouse_spec() -> ContainerSpec:
    """The compose `clickhouse` service as a container spec; named volumes (data) are left out."""
    env = {name: interpolate(value, SECRETS) for name, value in CLICKHOUSE["environment"].items()}
    mounts = []
    for volume in CLICKHOUSE["volumes"]:
        host, container, *mode = volume.split(":")
        if host.startswith("./"):
            mounts.append((str((ROOT / host).resolve()), container, mode[0] if mode else "rw"))
    return ContainerSpec(CLICKHOUSE["image"], env, mounts, CLICKHOUSE.get("ulimits", {}))


def test_the_container_is_configured_as_compose_configures_it() -> None:
    """Runs without Docker: what the container test would start is what compose starts."""
    spec = clickhouse_spec()
    assert spec.image == "clickhouse/clickhouse-server:24.8"
    assert set(SECRETS) <= set(spec.env)
    assert all("${" not in value for value in spec.env.values())
    assert {Path(host).name for host, _, _ in spec.mounts} >= {"writer.xml", "analyst.xml"}
    for host, container, mode in spec.mounts:
        assert Path(host).is_file(), host
        assert container.startswith("/etc/clickhouse-server/users.d/") and mode == "ro"
    with pytest.raises(KeyError, match="CLICKHOUSE_ANALYST_PASSWORD"):
        interpolate(CLICKHOUSE["environment"]["CLICKHOUSE_ANALYST_PASSWORD"], {})


def _wait_until_ready(base_url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"ClickHouse did not answer {base_url}/ping within {timeout:.0f} s")
        time.sleep(1)


@pytest.fixture(scope="module")
def clickhouse_url(docker_engine: None) -> Iterator[str]:
    """`http://host:port` of a ClickHouse server started as compose starts it."""
    import docker
    from testcontainers.core.container import DockerContainer

    spec = clickhouse_spec()
    ulimits = [docker.types.Ulimit(name=name, **limits) for name, limits in spec.ulimits.items()]
    container = DockerContainer(spec.image, env=spec.env, volumes=spec.mounts, ulimits=ulimits)
    with container.with_exposed_ports(8123) as started:
        url = f"http://{started.get_container_host_ip()}:{started.get_exposed_port(8123)}"
        _wait_until_ready(url)
        yield url


def _dsn(base_url: str, user: str, password: str) -> str:
    return base_url.replace("http://", f"http://{user}:{password}@", 1) + "/journeys"


def _connect_when_ready(dsn: str, *, create: bool, timeout: float = 60.0) -> Any:
    """The first connection after /ping answers can still race the server's users.d loading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(dsn, create=create)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_writer_migrates_and_writes_analyst_only_reads(clickhouse_url: str, tmp_path: Path) -> None:
    writer_dsn = _dsn(clickhouse_url, "writer", SECRETS["CLICKHOUSE_WRITER_PASSWORD"])
    writer = _connect_when_ready(writer_dsn, create=True)
    assert [m.version for m in migrate(writer)] == [m.version for m in migrations()]
    assert migrate(writer) == []  # idempotent: the compose migrate job runs on every `up`

    fixtures = sorted(str(path) for path in (ROOT / "tests" / "fixtures" / "segment").glob("*.json"))
    result = CliRunner().invoke(app, ["run", *fixtures, "--db", writer_dsn])
    assert result.exit_code == 0, result.output
    stored = writer.query("SELECT count() FROM touchpoints").result_rows[0][0]
    assert stored > 0

    analyst = _connect_when_ready(
        _dsn(clickhouse_url, "analyst", SECRETS["CLICKHOUSE_ANALYST_PASSWORD"]), create=False
    )
    assert analyst.query("SELECT count() FROM touchpoints").result_rows[0][0] == stored
    assert analyst.query("SELECT count() FROM journeys").result_rows[0][0] > 0
    refused = [
        "INSERT INTO identity_unlinks SELECT * FROM identity_unlinks LIMIT 0",
        "CREATE TABLE journeys.scratch (x UInt8) ENGINE = Memory",
        "DROP TABLE journeys.events",
        "CREATE DATABASE elsewhere",
    ]
    for statement in refused:
        with pytest.raises(Exception, match=r"(?i)readonly|not enough privileges|ACCESS_DENIED"):
            analyst.command(statement)


def test_the_default_user_is_not_reachable_from_outside(clickhouse_url: str) -> None:
    with pytest.raises(Exception, match=r"(?i)authentication|not allowed|AUTHENTICATION_FAILED|IP_ADDRESS"):
        connect(_dsn(clickhouse_url, "default", ""), create=False).query("SELECT 1")
