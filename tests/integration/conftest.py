"""Fixtures of the applications' tests: one FPFH bank per test run, built by build-bank's library call, and a
real Redis server."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from patchbank.coreset import CoresetSpec
from patchbank_builder.build import BuildRequest, BuildResult, build_bank
from patchbank_service.live import free_port
from tests.conftest import CATEGORY


@pytest.fixture(scope="session")
def fpfh_build(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildResult]:
    """An FPFH bank of the demo category, evaluated on its test split."""
    banks = tmp_path_factory.mktemp("banks")
    req = BuildRequest(
        category=CATEGORY,
        data_root=demo_root,
        banks=banks,
        method="fpfh",
        coreset=CoresetSpec(ratio=0.1, seed=0),
        progress=False,
    )
    return banks, build_bank(req)


POINT_PART = "capsule"  # the 3D-only bank's category (patchbank_synthetic.real3d)
POINT_COUNT = 6000  # points per cloud


@pytest.fixture(scope="session")
def point_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, banks): a 3D-only bank of a tiny synthetic Real3D-AD set (4 prototypes, 2 test clouds of
    each kind), built by build-bank's library call."""
    from patchbank_synthetic.real3d import generate

    root = tmp_path_factory.mktemp("real3d")
    generate(root / "data", [POINT_PART], n_test=2, points=POINT_COUNT, seed=3, progress=False)
    req = BuildRequest(
        category=POINT_PART,
        data_root=root / "data",
        banks=root / "banks",
        method="point-fpfh",
        progress=False,
    )
    build_bank(req)
    return root / "data", root / "banks"


class RedisServer:
    """A real redis-server without persistence; stop() and start() again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()
