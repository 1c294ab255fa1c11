"""docker-compose.yml cannot be started here (no Docker engine): its structure is checked instead.

Each check is something that would break a deployment silently: a service
missing, a subcommand that does not exist, a scaled worker colliding, a
secret defaulting to empty, an analyst able to write, an undocumented variable.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from processors.cli import app

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ["migrate", "collector", "worker", "sink", "produce", "run"]
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?][^}]*)?\}")


def test_the_stack_has_every_service() -> None:
    assert set(SERVICES) >= {"kafka", "clickhouse", *APP_SERVICES}
    assert not any(
        "zookeeper" in name or "zookeeper" in str(s.get("image", "")) for name, s in SERVICES.items()
    )


def test_kafka_runs_in_kraft_mode_on_one_node() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    environment = kafka["environment"]
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "kafka:9092" in environment["KAFKA_ADVERTISED_LISTENERS"]
    # Topics come from the app with the partition counts it needs, never from auto-creation.
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "healthcheck" in kafka


def users_file(name: str) -> ElementTree.Element:
    return ElementTree.parse(ROOT / "infra" / "clickhouse" / "users.d" / f"{name}.xml").getroot()


def test_clickhouse_has_a_writer_and_a_read_only_analyst() -> None:
    clickhouse = SERVICES["clickhouse"]
    mounted = {volume.split(":")[0] for volume in clickhouse["volumes"]}
    for name in ("writer", "analyst", "default-user"):
        assert f"./infra/clickhouse/users.d/{name}.xml" in mounted
        assert (ROOT / "infra" / "clickhouse" / "users.d" / f"{name}.xml").is_file()

    writer = users_file("writer").find("users/writer")
    assert writer is not None
    assert writer.find("password").get("from_env") == "CLICKHOUSE_WRITER_PASSWORD"
    assert [q.text for q in writer.iter("query")] == ["GRANT ALL ON journeys.*"]

    analyst_config = users_file("analyst")
    analyst = analyst_config.find("users/analyst")
    assert analyst.find("password").get("from_env") == "CLICKHOUSE_ANALYST_PASSWORD"
    assert [q.text for q in analyst.iter("query")] == ["GRANT SELECT ON journeys.*"]
    profile = analyst_config.find(f"profiles/{analyst.find('profile').text}")
    assert profile.find("readonly").text in {"1", "2"}

    default = users_file("default-user").find("users/default/networks")
    assert {ip.text for ip in default.iter("ip")} == {"::1", "127.0.0.1"}
    for variable in ("CLICKHOUSE_WRITER_PASSWORD", "CLICKHOUSE_ANALYST_PASSWORD"):
        assert ":?" in clickhouse["environment"][variable]
    # The entrypoint must leave the users alone: it would write over the read-only default-user.xml.
    assert clickhouse["environment"]["CLICKHOUSE_SKIP_USER_SETUP"] == "1"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_a_real_subcommand_of_the_one_image(name: str) -> None:
    service = SERVICES[name]
    assert service["build"] == {"context": ".", "dockerfile": "infra/docker/Dockerfile"}
    assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert service["image"] == "journeys:latest"
    subcommand = service["command"][0]
    result = CliRunner().invoke(app, [subcommand, "--help"])
    assert result.exit_code == 0, f"{name}: journeys {subcommand} does not exist"
    options = [part for part in service["command"][1:] if part.startswith("--")]
    for option in options:
        assert option in result.output, f"{name}: journeys {subcommand} has no {option}"


def test_workers_scale_without_colliding() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # no host port: replicas would fight over it
    assert "volumes" not in worker  # state is rebuilt from the changelog, not shared on disk
    assert worker["stop_grace_period"]


def test_start_order() -> None:
    assert SERVICES["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert SERVICES["sink"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("collector", "worker", "sink", "produce"):
        assert SERVICES[name]["depends_on"]["kafka"]["condition"] == "service_healthy", name
    assert "healthcheck" in SERVICES["clickhouse"] and "healthcheck" in SERVICES["collector"]


def test_the_pii_key_is_required_wherever_records_are_read() -> None:
    for name in ("collector", "worker", "sink", "produce", "run"):
        assert ":?" in SERVICES[name]["environment"]["JOURNEYS_PII_KEY"], name


def test_every_variable_is_documented() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    documented = (ROOT / "docs" / "deploy.md").read_text()
    variables = {match.group(1) for match in VARIABLE.finditer(text)}
    assert variables >= {"JOURNEYS_PII_KEY", "CLICKHOUSE_WRITER_PASSWORD", "CLICKHOUSE_ANALYST_PASSWORD"}
    missing = sorted(v for v in variables if f"`{v}`" not in documented)
    assert not missing, f"not in docs/deploy.md: {missing}"


def test_the_collector_gets_every_variable_it_reads_and_no_secret_default() -> None:
    from ingest.collector import (
        BURST_ENV,
        CREDENTIALS,
        ENDPOINTS_ENV,
        INSECURE_ENV,
        PREVIOUS_SUFFIX,
        RATE_ENV,
        TRUSTED_PROXIES_ENV,
    )

    environment = SERVICES["collector"]["environment"]
    secrets = [c.variable for needed in CREDENTIALS.values() for c in needed]
    # The old value during a rotation, for every credential that has one (docs/deploy.md).
    secrets += [c.variable + PREVIOUS_SUFFIX for needed in CREDENTIALS.values() for c in needed if c.rotates]
    for variable in (
        *secrets,
        *(v + "_FILE" for v in secrets),
        ENDPOINTS_ENV,
        INSECURE_ENV,
        RATE_ENV,
        BURST_ENV,
        TRUSTED_PROXIES_ENV,
    ):
        # Passed through from the operator's environment, empty when unset: never a value in the repo.
        assert environment.get(variable) == f"${{{variable}:-}}", variable
