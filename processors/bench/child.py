"""Run one benchmark step in a child process and read back its figures and resource usage.

Everything that opens an embedded ClickHouse runs in a child: chDB holds one
data path per process (the harness, or the pytest process around it, may hold
another), and the child's own peak RSS, user and system time come from
`os.wait4`, which reports exactly that process, not the largest of all
children so far as `RUSAGE_CHILDREN` would.

A run that starts processes of its own (the embedded run parses in worker
processes) is more than one process: `wait4` gives the largest single one and
the CPU time of all that were waited for, so the resident set of the whole
process tree is also sampled from /proc every `SAMPLE_S` seconds and its peak
(the sum over the tree at one moment) reported as `tree_peak_rss_mb`.

A step is `python -m processors.bench.child TASK ARGS_JSON`; it prints its
figures as one JSON line prefixed with `BENCH-RESULT ` (other output, such as a
library's banner, is ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MARKER = "BENCH-RESULT "
SAMPLE_S = 0.2
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


class ChildError(RuntimeError):
    """A child step failed; the message carries the tail of its stderr."""


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: its exit, wall time, resource usage and output."""

    returncode: int
    wall_s: float
    peak_rss_mb: float  # the largest single process of the tree (wait4)
    tree_peak_rss_mb: float  # the largest sum over the process tree, sampled
    processes: int  # the most processes seen in the tree at once
    user_s: float
    sys_s: float
    stdout: str
    stderr: str

    def result(self) -> dict[str, Any]:
        """The figures the step printed (the last `BENCH-RESULT` line)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(MARKER):
                return orjson.loads(line[len(MARKER) :])
        raise ChildError("the child printed no result line")

    def check(self, what: str) -> ChildRun:
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-8:])
            raise ChildError(f"{what} exited {self.returncode}: {tail}")
        return self


def child_env(pii_key: str) -> dict[str, str]:
    """The environment of a child: the run's PII key, and no database or config from the caller's shell."""
    env = dict(os.environ)
    for name in ("JOURNEYS_PII_KEY_FILE", "JOURNEYS_DB", "JOURNEYS_CONFIG", "JOURNEYS_RULES"):
        env.pop(name, None)
    env["JOURNEYS_PII_KEY"] = pii_key
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def tree_rss_kb(root: int) -> tuple[int, int]:
    """(resident KiB, processes) of `root` and all its descendants now, from /proc."""
    children: dict[int, list[int]] = {}
    resident: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0, 0
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read()
        except OSError:
            continue  # the process ended meanwhile
        rest = fields[fields.rindex(b")") + 2 :].split()  # the command name may hold spaces
        pid = int(name)
        children.setdefault(int(rest[1]), []).append(pid)
        resident[pid] = int(rest[21]) * _PAGE_KB
    total = count = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in resident:
            total += resident[pid]
            count += 1
        pending.extend(children.get(pid, ()))
    return total, count


class _TreeSampler(threading.Thread):
    """Samples a process tree's resident set until stopped; keeps the peak."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak_kb = 0
        self.processes = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            kb, count = tree_rss_kb(self.root)
            self.peak_kb = max(self.peak_kb, kb)
            self.processes = max(self.processes, count)
            self.stopped.wait(SAMPLE_S)


def run_process(argv: Sequence[str], *, cwd: Path, log: Path, pii_key: str) -> ChildRun:
    """Run `argv` to completion; stdout and stderr go to `log`.out/.err (no pipe can fill up)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, env=child_env(pii_key))
        sampler = _TreeSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return ChildRun(
        returncode=process.returncode,
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        tree_peak_rss_mb=max(sampler.peak_kb, usage.ru_maxrss) / 1024,
        processes=max(sampler.processes, 1),
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        stdout=out_path.read_text(encoding="utf-8", errors="replace"),
        stderr=err_path.read_text(encoding="utf-8", errors="replace"),
    )


def run_step(task: str, args: dict[str, Any], *, cwd: Path, log: Path, pii_key: str) -> ChildRun:
    """Run a registered step (`TASKS`) in a child Python process."""
    argv = [sys.executable, "-m", "processors.bench.child", task, orjson.dumps(args).decode()]
    return run_process(argv, cwd=cwd, log=log, pii_key=pii_key).check(f"bench step {task!r}")


def _tasks() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    from processors.bench import embedded, peer, queries

    return {
        "inspect": embedded.inspect_database,
        "queries": queries.run_queries,
        "peer": peer.run_peer,
    }


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m processors.bench.child TASK ARGS_JSON", file=sys.stderr)
        return 2
    task, raw = argv
    try:
        result = _tasks()[task](orjson.loads(raw))
    except Exception:
        traceback.print_exc()
        return 1
    sys.stdout.write(MARKER + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
