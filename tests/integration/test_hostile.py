"""A hostile client against a live server: small requests that used to cost a replica gigabytes, or open
admin routes. Memory is read from the server process's own /proc status (a memory figure, not a timing)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.data import list_samples
from patchbank_builder.build import BuildResult
from patchbank_service.app import create_app
from patchbank_service.live import free_port, live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY

MiB = 1024 * 1024


def vm_kib(pid: int, field: str) -> int:
    """A ``Vm*`` figure of a process, KiB (VmHWM: its peak resident size so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def server(
    fpfh_build: tuple[Path, BuildResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """``patchbank serve`` in its own process (its memory is its own), on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    env = {**os.environ, "PATCHBANK_LOG_JSON": "false"}
    cmd = [sys.executable, "-m", "patchbank", "serve", "--banks", str(fpfh_build[0]), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {log.read_text()}")
            time.sleep(0.5)
        else:
            raise AssertionError(f"serve never became ready: {log.read_text()}")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sample(demo_root: Path, kind: str = "hole") -> tuple[bytes, bytes]:
    ref = list_samples(demo_root, CATEGORY, "test", kinds=[kind])[0]
    return ref.rgb.read_bytes(), ref.xyz.read_bytes()


def xyz_bomb(side: int) -> bytes:
    """A zlib-compressed float32 TIFF of side x side x 3 zeros but one point: a few MB on the wire."""
    buf = io.BytesIO()
    cloud = np.zeros((side, side, 3), np.float32)
    cloud[0, 0] = (0.1, 0.1, 0.5)
    tifffile.imwrite(buf, cloud, compression="zlib", photometric="minisblack")
    return buf.getvalue()


def png_bomb(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_a_compressed_xyz_bomb_is_refused_from_its_header(server: tuple[str, int], demo_root: Path) -> None:
    url, pid = server
    rgb, _ = sample(demo_root)
    bomb = xyz_bomb(6000)  # 432 MB decoded, about 0.4 MB on the wire
    assert len(bomb) < 2 * MiB
    before = vm_kib(pid, "VmHWM")
    r = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY},
        files={"rgb": ("a.png", rgb), "xyz": ("a.tiff", bomb)},
        timeout=60,
    )
    grown_mib = (vm_kib(pid, "VmHWM") - before) / 1024
    assert r.status_code == 413, r.text
    assert "36,000,000 pixels" in r.json()["detail"] and "PATCHBANK_MAX_PIXELS" in r.json()["detail"]
    assert grown_mib < 100, f"the server's peak grew by {grown_mib:.0f} MiB"
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_an_rgb_bomb_is_refused_from_its_header(server: tuple[str, int], demo_root: Path) -> None:
    url, _ = server
    _, xyz = sample(demo_root)
    bomb = png_bomb(4100)  # 16.8 million pixels, a few kB
    r = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY},
        files={"rgb": ("a.png", bomb), "xyz": ("a.tiff", xyz)},
        timeout=60,
    )
    assert r.status_code == 413 and "4100 x 4100" in r.json()["detail"], r.text
    rgb, xyz = sample(demo_root)
    ok = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY, "map": "none"},
        files={"rgb": ("a.png", rgb), "xyz": ("a.tiff", xyz)},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["is_anomalous"] in (True, False)


def test_the_admin_route_is_closed_without_an_admin_key(server: tuple[str, int]) -> None:
    url, _ = server
    r = httpx.post(f"{url}/categories/{CATEGORY}/reload", timeout=30)
    assert r.status_code == 403
    assert "PATCHBANK_ADMIN_KEYS" in r.json()["detail"] and "PATCHBANK_OPEN_ADMIN" in r.json()["detail"]


def test_an_explicitly_opened_admin_route_reloads(fpfh_build: tuple[Path, BuildResult]) -> None:
    settings = ServiceSettings(banks=fpfh_build[0], device="cpu", open_admin=True, log_json=False)
    with live_server(create_app(settings)) as url:
        r = httpx.post(f"{url}/categories/{CATEGORY}/reload", timeout=60)
        assert r.status_code == 200 and r.json()["name"] == CATEGORY


def test_the_answers_map_is_bounded_and_regions_stay_in_input_pixels(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path
) -> None:
    """A map over the longest side allowed is scaled down, aspect kept; regions keep the input's pixels."""
    rgb, xyz = sample(demo_root)
    width, height = Image.open(io.BytesIO(rgb)).size
    answers = {}
    for side in (64, 4096):
        settings = ServiceSettings(banks=fpfh_build[0], device="cpu", max_map_side=side, log_json=False)
        with live_server(create_app(settings)) as url:
            r = httpx.post(
                f"{url}/score",
                data={"category": CATEGORY, "map": "array"},
                files={"rgb": ("a.png", rgb), "xyz": ("a.tiff", xyz)},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            answers[side] = r.json()
    small, full = answers[64]["anomaly_map"], answers[4096]["anomaly_map"]
    assert (full["width"], full["height"]) == (width, height)
    assert max(small["width"], small["height"]) == 64
    assert abs(small["width"] / small["height"] - width / height) < 0.05
    assert len(base64.b64decode(small["data"])) == 2 * small["width"] * small["height"]
    assert answers[64]["image_score"] == answers[4096]["image_score"]
    assert answers[4096]["regions"], "the hole sample should have a region"
    big, coarse = answers[4096]["regions"][0], answers[64]["regions"][0]
    for a, b in zip(big["bbox"], coarse["bbox"], strict=True):  # the same place, to a coarse pixel
        assert abs(a - b) <= 2 * max(width, height) / 64
    assert all(0 <= v <= max(width, height) for r in answers[64]["regions"] for v in r["bbox"])
    assert (
        abs(coarse["area_px"] - big["area_px"]) < 0.25 * big["area_px"] + (max(width, height) / 64) ** 2 * 4
    )
