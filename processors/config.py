"""Settings for the shells, from an optional YAML file and the environment.

Precedence: command-line option > environment variable > config file > default.
Secrets (the PII key) come only from the environment or a file, never from the
config file or the repository.

Environment variables:
- `JOURNEYS_DB` — DSN (default: embedded chDB under `./.journeys/chdb`);
- `JOURNEYS_PII_KEY` / `JOURNEYS_PII_KEY_FILE` — HMAC key for emails and phones;
- `JOURNEYS_CONFIG` — path of the YAML config file;
- `JOURNEYS_RULES` — path of the phase rules YAML file.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ingest.pii import PiiKeyError, load_pii_key
from journeys.fold import JourneyPolicy
from journeys.identity import DEFAULT_JUNK_PATTERNS, DEFAULT_JUNK_VALUES, IdentityPolicy
from journeys.phases import PhaseRules
from processors.storage import default_dsn


class ConfigError(ValueError):
    """The configuration is wrong in a way the user must fix; the message says where."""


def _duration(value: Any, where: str) -> timedelta:
    """`90s`, `15m`, `36h`, `14d` or a number of seconds."""
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except (ValueError, IndexError):
        raise ConfigError(f"{where}: {value!r} is not a duration (use e.g. 90s, 15m, 36h, 14d)") from None


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level")
    return data


def load_rules(path: Path | None = None) -> PhaseRules:
    """The phase rules from `path`, or the packaged defaults (infra/rules/default.yaml)."""
    if path is None:
        text = (resources.files("infra") / "rules" / "default.yaml").read_text(encoding="utf-8")
        return PhaseRules.from_mapping(yaml.safe_load(text))
    try:
        return PhaseRules.from_mapping(_read_yaml(path, "rules file"))
    except ValueError as exc:
        raise ConfigError(f"rules file {path}: {exc}") from None


@dataclass
class Settings:
    """Everything a shell needs to drive the core."""

    dsn: str
    rules_path: Path | None = None
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)
    journey: JourneyPolicy = field(default_factory=JourneyPolicy)
    extra_identifier_types: frozenset[str] = frozenset()
    phone_region: str = "NL"
    state_dir: Path = field(default_factory=lambda: Path.cwd() / ".journeys")

    @classmethod
    def load(
        cls,
        *,
        config_path: Path | None = None,
        dsn: str | None = None,
        rules_path: Path | None = None,
    ) -> Settings:
        env = os.environ
        config_path = config_path or (Path(env["JOURNEYS_CONFIG"]) if env.get("JOURNEYS_CONFIG") else None)
        data = _read_yaml(config_path, "config file") if config_path else {}
        unknown = set(data) - {"database", "rules", "identity", "journeys", "ingest"}
        if unknown:
            raise ConfigError(f"config file {config_path}: unknown section(s) {sorted(unknown)}")
        identity = data.get("identity") or {}
        journeys = data.get("journeys") or {}
        ingest = data.get("ingest") or {}
        rules = rules_path or (Path(env["JOURNEYS_RULES"]) if env.get("JOURNEYS_RULES") else None)
        if rules is None and data.get("rules"):
            rules = Path(data["rules"])
        try:
            identity_policy = IdentityPolicy(
                unique_types=frozenset(identity.get("unique_types", ["user_id"])),
                junk_values=DEFAULT_JUNK_VALUES | {str(v).lower() for v in identity.get("junk_values", [])},
                junk_patterns=DEFAULT_JUNK_PATTERNS + tuple(identity.get("junk_patterns", [])),
                max_group_size=int(identity.get("max_group_size", 50)),
                **({"priority": tuple(identity["priority"])} if "priority" in identity else {}),
            )
        except Exception as exc:  # bad regex, bad number: say which section
            raise ConfigError(f"config file {config_path}: identity: {exc}") from None
        defaults = JourneyPolicy()
        journey_policy = JourneyPolicy(
            dropoff_timeout=_duration(
                journeys.get("dropoff_timeout", defaults.dropoff_timeout.total_seconds()),
                "journeys.dropoff_timeout",
            ),
            churn_timeout=_duration(
                journeys.get("churn_timeout", defaults.churn_timeout.total_seconds()),
                "journeys.churn_timeout",
            ),
            allowed_lateness=_duration(
                journeys.get("allowed_lateness", defaults.allowed_lateness.total_seconds()),
                "journeys.allowed_lateness",
            ),
            failure_window=_duration(
                journeys.get("failure_window", defaults.failure_window.total_seconds()),
                "journeys.failure_window",
            ),
        )
        return cls(
            dsn=dsn or env.get("JOURNEYS_DB") or data.get("database") or default_dsn(),
            rules_path=rules,
            identity=identity_policy,
            journey=journey_policy,
            extra_identifier_types=frozenset(ingest.get("identifier_types", [])),
            phone_region=str(ingest.get("phone_region", "NL")),
        )

    def rules(self) -> PhaseRules:
        return load_rules(self.rules_path)

    def pii_key(self, *, create_if_missing: bool = False) -> bytes:
        """The HMAC key: `JOURNEYS_PII_KEY` / `JOURNEYS_PII_KEY_FILE`, else a local key file.

        The local file (`.journeys/pii.key`) is only created for the embedded
        default, so a newcomer's first `journeys demo` needs no setup, while a
        deployment without a configured key fails loudly instead of hashing
        with a throwaway key.
        """
        try:
            return load_pii_key()
        except PiiKeyError as missing:
            local = self.state_dir / "pii.key"
            if local.exists():
                return local.read_bytes().strip()
            if not create_if_missing:
                raise ConfigError(str(missing)) from None
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(secrets.token_hex(32).encode())
        local.chmod(0o600)
        return local.read_bytes()
