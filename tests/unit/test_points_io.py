"""Reading unorganized clouds and Real3D-AD labels: every encoding back to the same points, sizes refused
from the header before decoding, and malformed input refused with the field named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from plyfile import PlyData, PlyElement
from pypcd4 import Encoding, PointCloud

from patchbank.errors import InputError, PayloadTooLargeError
from patchbank.points.io import MIN_POINTS, read_labels, read_points


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    return np.random.default_rng(0).normal(scale=10.0, size=(500, 3)).astype(np.float32)


def pcd_bytes(xyz: np.ndarray, encoding: Encoding = Encoding.BINARY) -> bytes:
    buf = io.BytesIO()
    PointCloud.from_xyz_points(xyz).save(buf, encoding=encoding)
    return buf.getvalue()


def ply_bytes(xyz: np.ndarray, text: bool = False, faces: bool = False) -> bytes:
    vertex = np.array([tuple(p) for p in xyz], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    elements = [PlyElement.describe(vertex, "vertex")]
    if faces:
        face = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
        elements.append(PlyElement.describe(face, "face"))
    buf = io.BytesIO()
    PlyData(elements, text=text).write(buf)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", [Encoding.ASCII, Encoding.BINARY, Encoding.BINARY_COMPRESSED])
def test_pcd_encodings_read_back_the_points_in_order(cloud: np.ndarray, encoding: Encoding) -> None:
    got = read_points(pcd_bytes(cloud, encoding), "c.pcd", "xyz", 10_000)
    assert got.dtype == np.float32 and got.shape == cloud.shape
    np.testing.assert_allclose(got, cloud, rtol=1e-6, atol=1e-5)  # ascii writes rounded decimals


@pytest.mark.parametrize(("text", "faces"), [(False, False), (True, False), (False, True)])
def test_ply_vertices_read_back(cloud: np.ndarray, text: bool, faces: bool) -> None:
    got = read_points(ply_bytes(cloud, text, faces), "c.ply", "xyz", 10_000)
    np.testing.assert_allclose(got, cloud, rtol=1e-6, atol=1e-5)


def test_npy_is_read_without_unpickling(cloud: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, cloud.astype(np.float64))
    np.testing.assert_array_equal(read_points(buf.getvalue(), None, "xyz", 10_000), cloud)
    objects = io.BytesIO()
    np.save(objects, np.array([[None, 1, 2]] * MIN_POINTS, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="xyz"):
        read_points(objects.getvalue(), "c.npy", "xyz", 10_000)


def test_a_non_finite_point_refuses_the_cloud_naming_it(cloud: np.ndarray) -> None:
    bad = cloud.copy()
    bad[7, 1] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(InputError, match=r"cloud has 2 of 500 points that are not finite.*index 7"):
        read_points(pcd_bytes(bad), "c.pcd", "cloud", 10_000)


def header_only_pcd(points: int) -> bytes:
    return (
        "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
        f"WIDTH {points}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA binary\n"
    ).encode() + b"\0" * 24


def test_the_count_is_checked_from_the_header_before_decoding(cloud: np.ndarray) -> None:
    """A few bytes claiming a billion points are a 413, not a decode attempt (nor a truncation error)."""
    with pytest.raises(PayloadTooLargeError, match=r"1,000,000,000 points; the limit is 1,000"):
        read_points(header_only_pcd(10**9), "big.pcd", "xyz", 1_000)
    ply = b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\nproperty float x\n"
    ply += b"property float y\nproperty float z\nend_header\n" + b"\0" * 12
    with pytest.raises(PayloadTooLargeError):
        read_points(ply, "big.ply", "xyz", 1_000)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3)})
    with pytest.raises(PayloadTooLargeError):
        read_points(npy.getvalue() + b"\0" * 12, "big.npy", "xyz", 1_000)
    with pytest.raises(PayloadTooLargeError):
        read_points(pcd_bytes(cloud), "c.pcd", "xyz", 499)


@pytest.mark.parametrize(
    ("data", "name", "match"),
    [
        (b"", "c.pcd", "xyz is empty"),
        (b"hello world", "c.txt", "xyz is not a point cloud"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, None, "xyz is a PNG image"),
        (b"# .PCD v0.7\nFIELDS x y\nDATA ascii\n", None, "xyz is not a readable PCD"),
        (b"ply\nformat ascii 1.0\nelement face 1\nproperty float q\nend_header\n1\n", None, "vertex"),
    ],
)
def test_malformed_input_names_the_field(data: bytes, name: str | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        read_points(data, name, "xyz", 10_000)


def test_truncated_and_fieldless_pcds_are_refused(cloud: np.ndarray) -> None:
    whole = pcd_bytes(cloud)
    with pytest.raises(InputError, match="xyz is not a readable PCD"):
        read_points(whole[: len(whole) // 2], "c.pcd", "xyz", 10_000)
    intensity = PointCloud.from_points(cloud[:, :1], ("intensity",), (np.float32,))
    buf = io.BytesIO()
    intensity.save(buf)
    with pytest.raises(InputError, match="without x, y, z"):
        read_points(buf.getvalue(), "c.pcd", "xyz", 10_000)


def test_too_few_points_are_refused(cloud: np.ndarray) -> None:
    with pytest.raises(InputError, match=f"at least {MIN_POINTS}"):
        read_points(pcd_bytes(cloud[:10]), "c.pcd", "xyz", 10_000)


def test_labels_read_x_y_z_label_lines(cloud: np.ndarray) -> None:
    labels = np.arange(len(cloud)) % 7 == 0
    text = "\n".join(f"{x:.9g} {y:.9g} {z:.9g} {int(v)}" for (x, y, z), v in zip(cloud, labels, strict=True))
    points, got = read_labels(text.encode(), "gt.txt")
    np.testing.assert_array_equal(points, cloud)
    np.testing.assert_array_equal(got, labels)
    _, floats = read_labels(text.replace(" ", ",").replace(",1\n", ",1.000000\n").encode(), "gt.txt")
    np.testing.assert_array_equal(floats, labels)  # commas and float labels are read too


def test_bad_label_files_are_refused(cloud: np.ndarray) -> None:
    three = "\n".join(f"{x} {y} {z}" for x, y, z in cloud).encode()
    with pytest.raises(InputError, match="labels has 3 columns"):
        read_labels(three, "labels")
    with pytest.raises(InputError, match="labels is not a table"):
        read_labels(b"1 2 3 x\n" * 100, "labels")
    with pytest.raises(InputError, match="labels must be 0"):
        read_labels(b"1 2 3 -1\n" * 100, "gt.txt")
    with pytest.raises(PayloadTooLargeError):
        read_labels(b"1 2 3 0\n" * 100, "gt.txt", max_points=99)
