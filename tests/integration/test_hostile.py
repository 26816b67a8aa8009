"""A hostile client against a live server: small requests that used to cost a replica gigabytes, or open
admin routes. Memory is read from the server process's own /proc status (a memory figure, not a timing)."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.cloud_write import encode_cloud
from patchbank.clouds import Intrinsics
from patchbank.data import list_samples
from patchbank_builder.build import BuildResult
from patchbank_service.app import create_app
from patchbank_service.live import free_port, live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY

MiB = 1024 * 1024
STALL_S = 1.5  # the test server's header and body read timeouts


def vm_kib(pid: int, field: str) -> int:
    """A ``Vm*`` figure of a process, KiB (VmHWM: its peak resident size so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class Served(NamedTuple):
    url: str
    pid: int
    log: Path


@pytest.fixture(scope="module")
def server(
    fpfh_build: tuple[Path, BuildResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """``patchbank serve`` in its own process (its memory is its own), on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    env = {
        **os.environ,
        "PATCHBANK_LOG_JSON": "false",
        "PATCHBANK_HEADER_TIMEOUT_S": str(STALL_S),
        "PATCHBANK_BODY_TIMEOUT_S": str(STALL_S),
    }
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
        yield Served(url, proc.pid, log)
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


def test_a_compressed_xyz_bomb_is_refused_from_its_header(server: Served, demo_root: Path) -> None:
    url, pid, _ = server
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


def test_an_rgb_bomb_is_refused_from_its_header(server: Served, demo_root: Path) -> None:
    url, _, _ = server
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


def test_the_admin_route_is_closed_without_an_admin_key(server: Served) -> None:
    url, _, _ = server
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


def post_score(url: str, rgb: bytes, xyz: bytes, timeout: float = 60, **data: str) -> httpx.Response:
    return httpx.post(
        f"{url}/score",
        data={"category": CATEGORY, "map": "none", **data},
        files={"rgb": ("a.png", rgb), "xyz": ("a.tiff", xyz)},
        timeout=timeout,
    )


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_a_batch_over_the_cap_is_refused_before_it_costs_anything(server: Served, demo_root: Path) -> None:
    """20 small pairs used to cost 600 MB and 14 s of one queue slot; now 413 naming the setting."""
    url, pid, _ = server
    rgb, xyz = sample(demo_root)
    before = vm_kib(pid, "VmHWM")
    files = [("rgb", (f"{i}.png", rgb)) for i in range(20)] + [("xyz", (f"{i}.tiff", xyz)) for i in range(20)]
    r = httpx.post(f"{url}/score/batch", data={"category": CATEGORY}, files=files, timeout=60)
    grown_mib = (vm_kib(pid, "VmHWM") - before) / 1024
    assert r.status_code == 413, r.text
    assert "20 samples" in r.json()["detail"] and "PATCHBANK_MAX_BATCH_SAMPLES" in r.json()["detail"]
    assert grown_mib < 50, f"the server's peak grew by {grown_mib:.0f} MiB"


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(
        next(line.split()[1] for line in text.splitlines() if line.startswith("patchbank_queue_depth "))
    )


def test_every_sample_of_a_batch_counts_against_admission(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path
) -> None:
    """A batch of 3 fills a queue of 1 + 2: a single request meanwhile gets 503 + Retry-After, not a wait."""
    rgb, xyz = sample(demo_root)
    settings = ServiceSettings(
        banks=fpfh_build[0], device="cpu", concurrency=1, queue_size=2, max_batch_samples=3, log_json=False
    )
    with live_server(create_app(settings)) as url:
        files = [("rgb", (f"{i}.png", rgb)) for i in range(3)] + [
            ("xyz", (f"{i}.tiff", xyz)) for i in range(3)
        ]
        batch: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: batch.append(
                httpx.post(f"{url}/score/batch", data={"category": CATEGORY}, files=files, timeout=120)
            )
        )
        worker.start()
        deadline = time.monotonic() + 30
        while queue_depth(url) < 3 and worker.is_alive():
            assert time.monotonic() < deadline, "the batch was never admitted"
            time.sleep(0.01)
        single = post_score(url, rgb, xyz)
        worker.join(timeout=120)
    assert single.status_code == 503 and single.headers["Retry-After"], single.text
    assert "3 of 3 samples admitted" in single.json()["detail"]
    assert batch[0].status_code == 200 and len(batch[0].json()["results"]) == 3


def test_settings_refuse_a_batch_cap_that_could_never_be_admitted() -> None:
    with pytest.raises(ValueError, match="could never be admitted"):
        ServiceSettings(concurrency=1, queue_size=2, max_batch_samples=4)


def read_until_closed(sock: socket.socket, within_s: float) -> bytes:
    """What the server sends until it closes the connection; fails if it is still open after ``within_s``."""
    sock.settimeout(within_s)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept a stalled connection open for {within_s} s") from None
    return got


def test_stalled_clients_are_dropped_while_others_are_served(server: Served, demo_root: Path) -> None:
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    rgb, xyz = sample(demo_root)
    silent = socket.create_connection((host, int(port)))
    half_headers = socket.create_connection((host, int(port)))
    half_headers.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; bo")
    half_body = socket.create_connection((host, int(port)))
    half_body.sendall(
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="category"\r\n\r\n'
    )
    try:
        assert post_score(url, rgb, xyz).status_code == 200  # served while the three stall
        for sock in (silent, half_headers, half_body):
            read_until_closed(sock, within_s=STALL_S + 10)
    finally:
        for sock in (silent, half_headers, half_body):
            sock.close()
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_connections_beyond_the_limit_are_answered_503(fpfh_build: tuple[Path, BuildResult]) -> None:
    settings = ServiceSettings(banks=fpfh_build[0], device="cpu", max_connections=4, log_json=False)
    with live_server(create_app(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(4)]
        try:
            time.sleep(0.2)
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 503
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the limit did not free up"
            time.sleep(0.05)


def test_garbage_in_is_refused_not_decided(server: Served, demo_root: Path) -> None:
    url, _, _ = server
    rgb, xyz = sample(demo_root)
    colour = Image.open(io.BytesIO(rgb))
    for side in (1, 2):
        r = post_score(url, png(colour.resize((side, side))), xyz)
        assert r.status_code == 400 and "smallest accepted is 32 pixels" in r.json()["detail"], r.text
    buf = io.BytesIO()
    tifffile.imwrite(buf, tifffile.imread(io.BytesIO(xyz))[::40, ::40], photometric="rgb")  # 4 x 3 points
    tiny_cloud = post_score(url, rgb, buf.getvalue())
    assert tiny_cloud.status_code == 400 and "xyz is 4 x 3 pixels" in tiny_cloud.json()["detail"], (
        tiny_cloud.text
    )
    grey = post_score(url, png(colour.convert("L")), xyz)
    assert grey.status_code == 400 and "greyscale" in grey.json()["detail"], grey.text
    rgba = post_score(url, png(colour.convert("RGBA")), xyz)  # a colour layout: converted, same score
    assert rgba.status_code == 200
    assert rgba.json()["image_score"] == post_score(url, rgb, xyz).json()["image_score"]
    twice = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY},
        files=[("rgb", ("a.png", rgb)), ("rgb", ("b.png", png(colour.rotate(90)))), ("xyz", ("a.tiff", xyz))],
        timeout=60,
    )
    assert twice.status_code == 400 and "rgb was sent 2 times" in twice.json()["detail"], twice.text
    empty = httpx.post(
        f"{url}/score",
        data={"category": ""},
        files={"rgb": ("a.png", rgb), "xyz": ("a.tiff", xyz)},
        timeout=60,
    )
    assert empty.status_code == 404 and "no category given" in empty.json()["detail"], empty.text


def test_echoed_values_are_bounded_and_details_leak_nothing(server: Served, demo_root: Path) -> None:
    url, _, log = server
    rgb, xyz = sample(demo_root)
    long_category = "c" * 100_000
    r = httpx.post(
        f"{url}/score",
        data={"category": long_category},
        files={"rgb": ("a.png", rgb), "xyz": ("a.tiff", xyz)},
        timeout=60,
    )
    assert r.status_code == 404 and len(r.text) < 400 and "100,000 characters" in r.json()["detail"]
    long_id = "i" * 1_000_000
    r = post_score(url, rgb, xyz, sample_id=long_id)
    assert r.status_code == 422 and len(r.text) < 400, r.text[:400]
    assert long_id[:1000] not in log.read_text()
    garbage = post_score(url, b"\x89PNG\r\n\x1a\n" + bytes(64), xyz)
    assert garbage.status_code == 400
    assert " at 0x" not in garbage.text and "BytesIO" not in garbage.text, garbage.text


def test_the_api_key_is_checked_before_the_body_is_read(fpfh_build: tuple[Path, BuildResult]) -> None:
    """An unauthenticated 60 MB upload is refused from its headers: the answer comes before the body."""
    settings = ServiceSettings(banks=fpfh_build[0], device="cpu", api_keys=["k1"], log_json=False)
    with live_server(create_app(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 60000000\r\n\r\n"
            )
            sock.settimeout(10)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200  # health needs no key
        assert httpx.get(f"{url}/categories", timeout=10).status_code == 401
        assert httpx.get(f"{url}/categories", headers={"X-API-Key": "k1"}, timeout=10).status_code == 200


def test_readiness_says_not_ready_when_nothing_can_be_scored(
    fpfh_build: tuple[Path, BuildResult], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    app = create_app(ServiceSettings(banks=empty, device="cpu", log_json=False))
    with live_server(app, ready_path="/healthz") as url:
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{url}/readyz", timeout=10)).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"
        assert "no bank is loaded" in ready.json()["reasons"][0]
    settings = ServiceSettings(
        banks=fpfh_build[0], device="cpu", required_categories=[CATEGORY, "gasket"], log_json=False
    )
    with live_server(create_app(settings), ready_path="/healthz") as url:
        deadline = time.monotonic() + 60
        while (ready := httpx.get(f"{url}/readyz", timeout=10)).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["categories"] == [CATEGORY]
        assert ready.json()["reasons"] == [
            "required category gasket is not loaded: no bank for it under the banks directory"
        ]
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_serve_refuses_wrong_settings_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATCHBANK_MAX_BATCH_SAMPLES": "20", "PATCHBANK_CONCURRENCY": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "patchbank", "serve", "--banks", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "PATCHBANK_CONCURRENCY: Input should be greater than or equal to 1" in run.stderr


def test_a_millimetre_cloud_is_refused_until_its_unit_is_said(server: Served, demo_root: Path) -> None:
    url, _, _ = server
    rgb, xyz = sample(demo_root)
    metres = tifffile.imread(io.BytesIO(xyz))
    buf = io.BytesIO()
    tifffile.imwrite(buf, metres * 1000.0, photometric="rgb")
    mm = buf.getvalue()
    refused = post_score(url, rgb, mm)
    assert refused.status_code == 400 and "millimetres" in refused.json()["detail"], refused.text
    assert "xyz_unit=mm" in refused.json()["detail"]
    said = post_score(url, rgb, mm, xyz_unit="mm")
    assert said.status_code == 200, said.text
    assert said.json()["image_score"] == pytest.approx(
        post_score(url, rgb, xyz).json()["image_score"], abs=1e-5
    )


def test_sensor_formats_over_http(server: Served, demo_root: Path) -> None:
    """An organized PLY scores like the TIFF; a depth image scores like the TIFF within the rounding a depth
    image implies (see tests/integration/test_formats.py), with the bank's camera (the category's
    calibration/camera_parameters.json, stored at build) or the one sent; bad intrinsics get a 400."""
    url, _, _ = server
    rgb, xyz = sample(demo_root)
    metres = tifffile.imread(io.BytesIO(xyz))
    camera = Intrinsics(fx=240.0, fy=240.0, cx=79.5, cy=59.5, depth_scale=1.0)  # the demo's 160 x 120 camera
    reference = post_score(url, rgb, xyz).json()["image_score"]
    ply = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY, "map": "none"},
        files={"rgb": ("a.png", rgb), "xyz": ("a.ply", encode_cloud(metres, "ply"))},
        timeout=60,
    )
    assert ply.status_code == 200 and ply.json()["image_score"] == reference, ply.text
    depth = {"rgb": ("a.png", rgb), "xyz": ("a.tiff", encode_cloud(metres, "depth-tiff", camera))}
    bare = httpx.post(f"{url}/score", data={"category": CATEGORY, "map": "none"}, files=depth, timeout=60)
    assert bare.status_code == 200, bare.text
    assert bare.json()["image_score"] == pytest.approx(reference, rel=1e-4)
    given = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY, "map": "none", "intrinsics": camera.model_dump_json()},
        files=depth,
        timeout=60,
    )
    assert given.status_code == 200, given.text
    assert given.json()["image_score"] == pytest.approx(reference, rel=1e-4)
    wrong = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY, "intrinsics": '{"fx": -1}'},
        files=depth,
        timeout=60,
    )
    assert wrong.status_code == 400 and "intrinsics" in wrong.json()["detail"], wrong.text
