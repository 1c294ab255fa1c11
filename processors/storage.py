"""ClickHouse connections and schema migrations, through clickhouse-connect only.

One DSN reaches either the embedded engine or a server:

- `chdb:///abs/path?database=journeys` — chDB, ClickHouse's engine in-process,
  data under that directory (the default is `./.journeys/chdb`);
- `chdb://memory?database=journeys` — chDB in memory (tests, throw-away runs);
- `http://user:password@host:8123/journeys` (or `https://…:8443/…`) — a server.

chDB allows one data path per process and one process per path, so exactly one
process writes an embedded database; `connect()` hands out one client per
process and refuses a second, different embedded path with a clear message.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "journeys"
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class StorageError(RuntimeError):
    """A storage problem the user can act on (bad DSN, locked embedded path, …)."""


def default_dsn(base: Path | None = None) -> str:
    """The embedded default: a chDB database under `./.journeys/`."""
    path = (base or Path.cwd()) / ".journeys" / "chdb"
    return f"chdb://{path.resolve()}?database={DEFAULT_DATABASE}"


@dataclass(frozen=True)
class Target:
    """A parsed DSN: where to connect and which database to use."""

    dsn: str
    database: str
    embedded: bool
    path: str | None

    @classmethod
    def parse(cls, dsn: str) -> Target:
        parsed = urlparse(dsn)
        query = parse_qs(parsed.query)
        if parsed.scheme == "chdb":
            database = query.pop("database", [DEFAULT_DATABASE])[0]
            location = parsed.netloc + parsed.path if parsed.netloc not in ("", "memory") else parsed.path
            path = None if parsed.netloc == "memory" or location in ("", ":memory:") else location
            rest = urlencode(query, doseq=True)
            if path is not None:
                # chdb://.journeys/chdb (relative) works too: the driver is given the absolute path.
                path = str(Path(path).expanduser().absolute())
                bare = f"chdb://{path}" + (f"?{rest}" if rest else "")
            else:
                bare = urlunparse(parsed._replace(query=rest))
            _check_database(database, dsn)
            return cls(dsn=bare, database=database, embedded=True, path=path)
        if parsed.scheme in ("http", "https", "clickhouse", "clickhouses"):
            database = query.pop("database", [None])[0] or parsed.path.strip("/") or DEFAULT_DATABASE
            bare = urlunparse(parsed._replace(path="", query=urlencode(query, doseq=True)))
            _check_database(database, dsn)
            return cls(dsn=bare, database=database, embedded=False, path=None)
        raise StorageError(
            f"unsupported DSN scheme {parsed.scheme!r}: use chdb:///path, chdb://memory or http(s)://host:port/db"
        )


def _check_database(name: str, dsn: str) -> None:
    if not _DATABASE_NAME.match(name):
        raise StorageError(f"database name {name!r} in DSN is not a plain identifier")


_lock = threading.Lock()
_embedded: dict[tuple[str, str, bool], Client] = {}  # (path, database, read-only) -> client


def connect(dsn: str, *, create: bool = True, read_only: bool = False) -> Client:
    """A client whose default database is the DSN's; the database is created if missing.

    Embedded clients are shared per process and database (chDB allows one data
    path per process; clients of several databases in that path live side by
    side, each keeping its own default database); server clients are new each call.

    `read_only` is for queries on behalf of analysts (`journeys sql`, the page):
    the client runs with ClickHouse's readonly=1, so the engine refuses writes,
    DDL, settings changes and table functions such as file(): neither a mistake
    nor an injected statement changes anything. Embedded, it is a client of its
    own whose session is read-only (the chDB driver emulates per-query settings
    with SET and a restore that a refused query skips, so they would leak into a
    shared client); on a server, every request carries the setting unless the
    user is read-only already. The database must already exist.
    """
    target = Target.parse(dsn)
    if target.embedded:
        with _lock:
            path = target.path or ":memory:"
            client = _embedded.get((path, target.database, read_only))
            if client is None:
                held = {held_path for held_path, _, _ in _embedded}
                if held - {path}:
                    raise StorageError(
                        f"this process already holds the embedded database at {held.pop()}; "
                        "chDB allows one data path per process — close it first"
                    )
                if target.path:
                    Path(target.path).mkdir(parents=True, exist_ok=True)
                client = _open(target)
                if read_only:
                    client.command("SET readonly = 1")
                _embedded[(path, target.database, read_only)] = client
    else:
        client = _open(target)
        if read_only:
            _read_only_requests(client)
    if create and not read_only:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")
    client.database = target.database
    return client


def _read_only_requests(client: Client) -> None:
    """Send readonly=1 with every request, unless the server user is read-only already.

    A user with readonly=1 may not send the setting at all, and one with readonly=2
    (the compose file's analyst) may not change it; both are refused writes and DDL.
    """
    current = client.server_settings.get("readonly")
    if current is None or current.value == "0":
        client.set_client_setting("readonly", "1")


def _open(target: Target) -> Client:
    try:
        return clickhouse_connect.get_client(dsn=target.dsn)
    except Exception as exc:  # the driver raises several types; the user needs the DSN and the cause
        hint = ""
        if target.embedded:
            hint = " (is another process using this embedded database? chDB allows one process per path)"
        raise StorageError(f"cannot open {target.dsn}: {exc}{hint}") from exc


def close_all() -> None:
    """Release the embedded engine so another path (or another process) can open one."""
    with _lock:
        for client in _embedded.values():
            client.close()
        _embedded.clear()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        # Statements are separated by `;` at the end of a line; comments are kept out.
        lines = [line for line in self.sql.splitlines() if not line.strip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";").strip()]


def migrations() -> list[Migration]:
    """The packaged migrations in version order (infra/clickhouse/migrations/NNNN_name.sql)."""
    folder = resources.files("infra") / "clickhouse" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrate(client: Client, until: int | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded in `schema_migrations`; returns those applied.

    `until` stops after that version (a database as an older release left it, for upgrade tests).
    """
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        if until is not None and migration.version > until:
            break
        for statement in migration.statements():
            client.command(statement.rstrip(";"))
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, datetime.now(UTC))],
            column_names=["version", "name", "applied_at"],
        )
        applied.append(migration)
    return applied


def plain_value(value: Any) -> Any:
    """A value as ClickHouse returned it, made plain for text, CSV or JSON output."""
    if isinstance(value, datetime):
        # chDB returns DateTime64('UTC') as naive values; say that they are UTC.
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def json_default(value: Any) -> Any:
    """`default=` for JSON encoders: query results' dates, decimals and bytes."""
    if isinstance(value, datetime | date | Decimal):
        return plain_value(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot serialise {type(value).__name__}")
