"""Shared fixtures: an isolated TIERLAB_HOME per test session and a real Redis server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own TIERLAB_HOME so no test reads or writes the user's catalog."""
    home = tmp_path_factory.mktemp("tierlab_home")
    monkeypatch.setenv("TIERLAB_HOME", str(home))
    return home


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: the running one on 6379, else a private redis-server on a free port.

    Fails (never skips silently) in CI, where a Redis server is always available.
    """
    if _redis_answers(6379):
        yield "redis://127.0.0.1:6379/0"
        return
    exe = shutil.which("redis-server")
    if exe is None:
        msg = "no Redis answers on 127.0.0.1:6379 and redis-server is not installed"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if _redis_answers(port):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_prefix() -> str:
    """A unique key prefix for one test (tests delete only their own keys, never FLUSHALL)."""
    return f"tierlab-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(scope="module")
def sample_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TIERLAB_HOME holding the bundled synthetic sample, built once per test module."""
    from data.catalog import Catalog
    from data.sample import ensure_sample

    home = tmp_path_factory.mktemp("sample_home")
    ensure_sample(Catalog(home / "catalog"))
    return home


@pytest.fixture
def home(_isolated_home: Path, sample_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's TIERLAB_HOME is the module's sample home (for CLIs that read the catalog)."""
    monkeypatch.setenv("TIERLAB_HOME", str(sample_home))
    return sample_home
