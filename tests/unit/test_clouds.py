"""Point cloud formats: every format a sensor writes reads back as the same organized xyz (metres), sizes are
refused from the header, and the messages tell the line what to send instead."""

from __future__ import annotations

import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from plyfile import PlyData, PlyElement
from pypcd4 import Encoding, PointCloud

from patchbank.cloud_write import depth_units, encode_cloud
from patchbank.clouds import (
    Intrinsics,
    decode_cloud,
    detect_format,
    unproject,
)
from patchbank.data import list_samples, read_xyz
from patchbank.errors import InputError, PayloadTooLargeError
from patchbank.preprocess import valid_points
from tests.conftest import CATEGORY

H, W = 36, 48
CAMERA = Intrinsics(fx=120.0, fy=123.0, cx=23.5, cy=17.5, depth_scale=1.0)


def pinhole_cloud(intrinsics: Intrinsics = CAMERA, height: int = H, width: int = W) -> np.ndarray:
    """(H, W, 3) float32 metres seen by ``intrinsics``, computed independently of ``unproject``: a tilted
    plane about half a metre away, with a few points missing (0, 0, 0)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rx, ry = (u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy
    z = 0.5 / (1.0 + 0.1 * rx + 0.05 * ry)  # the plane 0.1 x + 0.05 y + z = 0.5 along each ray
    xyz = np.stack([rx * z, ry * z, z], axis=-1).astype(np.float32)
    xyz[2, 3] = 0.0
    xyz[7, :2] = 0.0
    return xyz


def same_cloud(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert np.array_equal(valid_points(a), valid_points(b))
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


# -- detection ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        ("tiff", "cloud.bin", "tiff"),
        ("npy", None, "npy"),
        ("ply", "x.pcd", "ply"),  # the bytes win over a misleading name
        ("pcd", "upload", "pcd"),
        ("depth-png", None, "png"),
    ],
)
def test_format_from_magic_bytes_first(fmt: str, name: str | None, expected: str) -> None:
    cam = CAMERA.model_copy(update={"depth_scale": 1e-5})
    data = encode_cloud(pinhole_cloud(), fmt, cam if fmt.startswith("depth") else None)
    assert detect_format(data, name, "xyz") == expected


def test_format_from_the_extension_when_the_bytes_say_nothing() -> None:
    with pytest.raises(InputError, match=r"xyz is not a readable PLY"):
        decode_cloud(b"garbage", "scan.ply", "xyz")


def test_an_unknown_format_names_the_accepted_ones() -> None:
    with pytest.raises(InputError) as err:
        decode_cloud(b"hello world", "scan.xyz", "xyz")
    msg = str(err.value)
    for name in ("TIFF", ".npy", "PLY", "PCD", "16-bit PNG"):
        assert name in msg
    assert "not a TIFF" not in msg


# -- round trips -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tiff", "npy", "ply", "ply-ascii", "pcd", "pcd-ascii"])
def test_xyz_formats_round_trip_exactly(fmt: str) -> None:
    xyz = pinhole_cloud()
    same_cloud(decode_cloud(encode_cloud(xyz, fmt), f"a.{fmt.split('-')[0]}", "xyz"), xyz, atol=0)


def test_float_depth_round_trips_within_float32() -> None:
    xyz = pinhole_cloud()
    for fmt in ("depth-tiff", "depth-npy"):
        data = encode_cloud(xyz, fmt, CAMERA)
        same_cloud(decode_cloud(data, None, "xyz", intrinsics=CAMERA), xyz, atol=1e-7)


def test_16_bit_png_depth_round_trips_within_its_quantization() -> None:
    xyz = pinhole_cloud()
    mm = CAMERA.model_copy(update={"depth_scale": 1e-3})
    tenth = CAMERA.model_copy(update={"depth_scale": 1e-5})
    for cam in (mm, tenth):
        out = decode_cloud(encode_cloud(xyz, "depth-png", cam), "d.png", "xyz", intrinsics=cam)
        valid = valid_points(xyz)
        assert np.array_equal(valid_points(out), valid)
        step = cam.depth_scale
        assert np.abs(out[..., 2] - xyz[..., 2])[valid].max() <= step / 2 + 1e-7
        # x and y follow z along the ray: their error is z's, scaled by |x| / z (< 1 here)
        assert np.abs(out - xyz)[valid].max() <= step / 2 + 1e-7


def test_unproject_is_the_pinhole_model() -> None:
    depth = np.array([[0.5, 0.0, np.nan], [1.0, 2.0, -1.0]], np.float32)
    cam = Intrinsics(fx=2.0, fy=4.0, cx=1.0, cy=0.5, depth_scale=1.0)
    xyz = unproject(depth, cam)
    assert xyz.shape == (2, 3, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz[0, 0], [(0 - 1) * 0.5 / 2, (0 - 0.5) * 0.5 / 4, 0.5])
    np.testing.assert_allclose(xyz[1, 1], [0.0, (1 - 0.5) * 2 / 4, 2.0])
    for missing in [(0, 1), (0, 2), (1, 2)]:  # zero, not finite, behind the camera
        assert (xyz[missing] == 0).all()


def test_ply_with_a_range_grid_and_missing_points(tmp_path: Path) -> None:
    """The Stanford range-grid layout (also PCL's): only measured points are vertices, the grid indexes them."""
    xyz = pinhole_cloud()
    valid = valid_points(xyz).ravel()
    points = xyz.reshape(-1, 3)[valid]
    vertex = np.array([tuple(p) for p in points], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    ids = np.cumsum(valid) - 1
    grid = np.empty(H * W, dtype=[("vertex_indices", "O")])
    grid["vertex_indices"] = [np.array([i] if ok else [], np.int32) for i, ok in zip(ids, valid, strict=True)]
    ply = PlyData(
        [PlyElement.describe(vertex, "vertex"), PlyElement.describe(grid, "range_grid")],
        obj_info=[f"num_cols {W}", f"num_rows {H}"],
    )
    buf = io.BytesIO()
    ply.write(buf)
    same_cloud(decode_cloud(buf.getvalue(), "scan.ply", "xyz"), xyz, atol=0)


def test_missing_points_as_nan_become_zero() -> None:
    xyz = pinhole_cloud()
    for fmt in ("ply", "pcd"):
        out = decode_cloud(encode_cloud(xyz, fmt), None, "xyz")
        assert np.isfinite(out).all() and (out[2, 3] == 0).all()


# -- units -------------------------------------------------------------------------------------------------


def test_an_explicit_unit_converts_to_metres() -> None:
    xyz = pinhole_cloud()
    for unit, factor in (("mm", 1e3), ("um", 1e6), ("m", 1.0)):
        data = encode_cloud((xyz.astype(np.float64) * factor).astype(np.float32), "ply")
        out = decode_cloud(data, None, "xyz", unit=unit)
        np.testing.assert_allclose(out, xyz, rtol=2e-7, atol=0)


def test_a_unit_is_refused_for_a_depth_image() -> None:
    data = encode_cloud(pinhole_cloud(), "depth-tiff", CAMERA)
    with pytest.raises(InputError, match=r"xyz_unit.*depth image.*depth_scale"):
        decode_cloud(data, None, "xyz", intrinsics=CAMERA, unit="mm")


# -- messages ----------------------------------------------------------------------------------------------


def test_a_depth_image_without_intrinsics_says_what_to_send() -> None:
    data = encode_cloud(pinhole_cloud(), "depth-png", CAMERA.model_copy(update={"depth_scale": 1e-4}))
    with pytest.raises(InputError) as err:
        decode_cloud(data, "d.png", "xyz")
    msg = str(err.value)
    assert "depth image" in msg and "intrinsics" in msg
    for key in ("fx", "fy", "cx", "cy", "depth_scale", "--intrinsics", "intrinsics.json"):
        assert key in msg


def test_intrinsics_for_another_image_size_are_refused() -> None:
    data = encode_cloud(pinhole_cloud(), "depth-tiff", CAMERA)
    cam = CAMERA.model_copy(update={"width": 640, "height": 480})
    with pytest.raises(InputError, match=r"48 x 36 depth image.*640 x 480"):
        decode_cloud(data, None, "xyz", intrinsics=cam)


def test_unorganized_ply_and_pcd_are_refused_with_the_reason() -> None:
    points = pinhole_cloud().reshape(-1, 3)
    vertex = np.array([tuple(p) for p in points], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")]).write(buf)
    with pytest.raises(InputError, match=r"unorganized PLY.*obj_info num_cols.*needs an organized cloud"):
        decode_cloud(buf.getvalue(), "scan.ply", "xyz")
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], obj_info=[f"num_cols {H * W}", "num_rows 1"]).write(buf)
    with pytest.raises(InputError, match=r"unorganized PLY.*height 1.*needs an organized cloud"):
        decode_cloud(buf.getvalue(), "scan.ply", "xyz")
    buf = io.BytesIO()
    PointCloud.from_xyz_points(points).save(buf)  # pypcd4 writes WIDTH N, HEIGHT 1
    with pytest.raises(
        InputError, match=r"unorganized PCD.*height 1.*needs an organized cloud \(width x height\)"
    ):
        decode_cloud(buf.getvalue(), "scan.pcd", "xyz")


def test_library_errors_never_echo_memory_addresses_or_paths() -> None:
    for data, name in [
        (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n", "a.ply"),
        (b"VERSION 0.7\nFIELDS x y z\nDATA ascii\n", "a.pcd"),
        (b"\x93NUMPY\x01\x00garbage", "a.npy"),
        (b"II*\x00garbage!", "a.tiff"),
        (b"\x89PNG\r\n\x1a\ngarbage", "a.png"),
    ]:
        with pytest.raises(InputError) as err:
            decode_cloud(data, name, "xyz")
        msg = str(err.value)
        assert msg.startswith("xyz ") and " at 0x" not in msg and "BytesIO" not in msg, msg
        assert not re.search(r"(^|[\s'\"(])/\w", msg), msg  # no absolute path


# -- size limits from the header ---------------------------------------------------------------------------


def _ply_header_only(width: int, height: int) -> bytes:
    return (
        f"ply\nformat binary_little_endian 1.0\nobj_info num_cols {width}\nobj_info num_rows {height}\n"
        f"element vertex {width * height}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    ).encode()


def _pcd_header_only(width: int, height: int) -> bytes:
    return (
        f"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {width}\nHEIGHT {height}\n"
        f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {width * height}\nDATA binary\n"
    ).encode()


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint16)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR: the declared size only
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # and its checksum
    return bytes(data)


def _tiff_declaring(width: int, height: int, channels: int) -> bytes:
    """A 2 x 2 TIFF whose header is rewritten to declare ``width`` x ``height`` (its data stays tiny)."""
    buf = io.BytesIO()
    small = np.zeros((2, 2, channels) if channels > 1 else (2, 2), np.float32)
    tifffile.imwrite(buf, small, photometric="rgb" if channels > 1 else "minisblack")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            assert tags[name].dtype_name == "LONG"
            data[tags[name].valueoffset : tags[name].valueoffset + 4] = value.to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        _tiff_declaring(5000, 4000, 3),
        _tiff_declaring(5000, 4000, 1),
        _npy_header_only((4000, 5000, 3)),
        _npy_header_only((4000, 5000)),
        _png_header_only(5000, 4000),
        _ply_header_only(5000, 4000),
        _pcd_header_only(5000, 4000),
    ],
    ids=["xyz-tiff", "depth-tiff", "xyz-npy", "depth-npy", "depth-png", "ply", "pcd"],
)
def test_every_format_is_refused_from_its_header(data: bytes) -> None:
    assert len(data) < 50_000
    with pytest.raises(PayloadTooLargeError, match=r"xyz is 5000 x 4000 = 20,000,000 pixels.*16,000,000"):
        decode_cloud(data, None, "xyz", max_pixels=16_000_000, intrinsics=CAMERA)


def test_a_compressed_pcd_cannot_claim_more_data_than_its_points() -> None:
    buf = io.BytesIO()
    cloud = PointCloud.from_xyz_points(np.full((W * H, 3), 0.5, np.float32))  # compressible
    cloud.metadata = cloud.metadata.derive(width=W, height=H)
    cloud.save(buf, encoding=Encoding.BINARY_COMPRESSED)
    data = bytearray(buf.getvalue())
    at = data.index(b"DATA binary_compressed\n") + len("DATA binary_compressed\n")
    data[at + 4 : at + 8] = (2**31).to_bytes(4, "little")  # the uncompressed size it claims
    with pytest.raises(InputError, match=r"claims 2,147,483,648 bytes"):
        decode_cloud(bytes(data), None, "xyz")


# -- intrinsics --------------------------------------------------------------------------------------------


def test_intrinsics_load_from_json_and_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "intrinsics.json"
    path.write_text(json.dumps({"fx": 500, "fy": 500, "cx": 319.5, "cy": 239.5, "depth_scale": 0.001}))
    assert Intrinsics.from_file(path).depth_scale == 0.001
    assert Intrinsics.from_json('{"fx": 1, "fy": 2, "cx": 0, "cy": 0, "depth_scale": 1}').fy == 2
    with pytest.raises(InputError, match=r"intrinsics: fx: Input should be greater than 0"):
        Intrinsics.from_json('{"fx": 0, "fy": 2, "cx": 0, "cy": 0, "depth_scale": 1}')
    with pytest.raises(InputError, match=r"intrinsics: depth_scale: Field required"):
        Intrinsics.from_json('{"fx": 1, "fy": 2, "cx": 0, "cy": 0}')
    with pytest.raises(InputError, match=r"intrinsics is not valid JSON"):
        Intrinsics.from_json("fx=1")
    with pytest.raises(InputError, match=r"intrinsics.json: .*fy"):
        path.write_text('{"fx": 1, "fy": -1, "cx": 0, "cy": 0, "depth_scale": 1}')
        Intrinsics.from_file(path)


# -- the readers of the product use it ---------------------------------------------------------------------


def test_decode_xyz_delegates_and_keeps_its_signature() -> None:
    xyz = pinhole_cloud()
    same_cloud(decode_cloud(encode_cloud(xyz, "pcd"), "a.pcd", "xyz", 10_000), xyz, atol=0)
    data = encode_cloud(xyz, "depth-tiff", CAMERA)
    same_cloud(decode_cloud(data, "a.tiff", intrinsics=CAMERA), xyz, atol=1e-7)


def test_a_dataset_of_depth_images_reads_with_its_category_intrinsics(
    demo_root: Path, tmp_path: Path
) -> None:
    src = list_samples(demo_root, CATEGORY, "test")[0]
    xyz = read_xyz(src.xyz)
    cam = Intrinsics(fx=240.0, fy=240.0, cx=79.5, cy=59.5, depth_scale=1.0)
    kind = tmp_path / CATEGORY / "test" / "good"
    for sub in ("rgb", "xyz"):
        (kind / sub).mkdir(parents=True)
    (kind / "rgb" / "000.png").write_bytes(src.rgb.read_bytes())
    (kind / "xyz" / "000.tiff").write_bytes(encode_cloud(xyz, "depth-tiff", cam))
    with pytest.raises(InputError, match="intrinsics"):
        decode_cloud((kind / "xyz" / "000.tiff").read_bytes())
    (tmp_path / CATEGORY / "intrinsics.json").write_text(cam.model_dump_json())
    (ref,) = list_samples(tmp_path, CATEGORY, "test")
    assert ref.intrinsics == cam
    same_cloud(read_xyz(ref.xyz, ref.intrinsics), xyz, atol=1e-7)


def test_depth_units_refuse_what_a_16_bit_png_cannot_hold() -> None:
    xyz = pinhole_cloud()
    with pytest.raises(InputError, match=r"65535.*depth_scale"):
        depth_units(xyz, CAMERA.model_copy(update={"depth_scale": 1e-6}), integer=True)
