"""Secrets from the environment or from files, never from config files, the image or the repository.

Every secret `NAME` is read from the environment variable `NAME` or, when that
is unset or blank, from the file named by `NAME_FILE` (its bytes, surrounding
white space stripped): the way Docker and Kubernetes secrets are mounted. The
PII key (`JOURNEYS_PII_KEY`) and the collector's provider credentials
(`JOURNEYS_SEGMENT_WRITE_KEY`, …) all come through `secret_from_env`, so there
is one rule for where a secret may come from.

Error messages name the variables, never the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

FILE_SUFFIX = "_FILE"


class SecretError(RuntimeError):
    """A secret's file is named but unusable (missing, unreadable, empty): a deployment error."""


def secret_from_env(name: str, environ: Mapping[str, str], what: str = "secret") -> bytes | None:
    """The secret in `name`, else in the file named by `name_FILE`, else None.

    `what` names the secret in error messages ("the PII key"); the value itself
    never appears in one.
    """
    value = environ.get(name, "").strip()
    if value:
        return value.encode("utf-8")
    file_variable = name + FILE_SUFFIX
    file_name = environ.get(file_variable, "").strip()
    if not file_name:
        return None
    try:
        secret = Path(file_name).read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read {what} file named by {file_variable}: {exc}") from None
    if not secret:
        raise SecretError(f"{what} file named by {file_variable} is empty")
    return secret
