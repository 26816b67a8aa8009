"""Index kinds and backends against brute force: real FAISS (flat, HNSW), torch, files written and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchbank.errors import BankError, InputError
from patchbank.index import PatchIndex


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 48)).astype(np.float32)
    vectors = (centres[rng.integers(0, 40, 2000)] + 0.3 * rng.normal(size=(2000, 48))).astype(np.float32)
    queries = (centres[rng.integers(0, 40, 300)] + 0.3 * rng.normal(size=(300, 48))).astype(np.float32)
    ids = np.arange(2000, dtype=np.int64) * 3 + 1
    return vectors, ids, queries


def exact(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    d = torch.cdist(torch.from_numpy(queries).double(), torch.from_numpy(vectors).double())
    if exclude is not None:
        d[:, torch.from_numpy(exclude)] = torch.inf
    return d.topk(k, largest=False).indices.numpy()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_backends_find_the_brute_force_neighbours(data, backend: str) -> None:
    vectors, ids, queries = data
    index = PatchIndex(vectors, ids, "flat", backend=backend)
    np.testing.assert_array_equal(index.search(queries, k=3), exact(vectors, queries, 3))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_excluded_rows_are_never_returned(data, kind: str, backend: str) -> None:
    vectors, ids, queries = data
    exclude = np.zeros(len(vectors), dtype=bool)
    exclude[::2] = True
    rows = PatchIndex(vectors, ids, kind, backend=backend).search(queries, k=2, exclude_rows=exclude)
    assert not exclude[rows].any()
    if kind == "flat":
        np.testing.assert_array_equal(rows, exact(vectors, queries, 2, exclude))


def test_hnsw_is_approximate_but_close(data) -> None:
    vectors, ids, queries = data
    rows = PatchIndex(vectors, ids, "hnsw", backend="faiss").search(queries, k=1)[:, 0]
    recall = (rows == exact(vectors, queries, 1)[:, 0]).mean()
    assert recall > 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_saved_index_loads_with_its_vectors_ids_and_results(data, kind: str, tmp_path: Path) -> None:
    vectors, ids, queries = data
    index = PatchIndex(vectors, ids, kind)
    index.save(tmp_path / "index.faiss")
    loaded = PatchIndex.load(tmp_path / "index.faiss", kind)
    np.testing.assert_array_equal(loaded.vectors, vectors)
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_array_equal(loaded.search(queries, k=2), index.search(queries, k=2))


def test_a_torch_backend_index_saves_a_faiss_file(data, tmp_path: Path) -> None:
    vectors, ids, queries = data
    PatchIndex(vectors, ids, "flat", backend="torch").save(tmp_path / "index.faiss")
    loaded = PatchIndex.load(tmp_path / "index.faiss", "flat")
    np.testing.assert_array_equal(loaded.search(queries, k=1), exact(vectors, queries, 1))


def test_a_kind_the_file_does_not_hold_is_refused(data, tmp_path: Path) -> None:
    vectors, ids, _ = data
    PatchIndex(vectors, ids, "hnsw").save(tmp_path / "index.faiss")
    with pytest.raises(BankError, match="manifest says 'flat'"):
        PatchIndex.load(tmp_path / "index.faiss", "flat")


def test_unknown_kind_and_backend_are_refused(data) -> None:
    vectors, ids, _ = data
    with pytest.raises(InputError, match="unknown index kind 'ivf'"):
        PatchIndex(vectors, ids, "ivf")
    with pytest.raises(InputError, match="unknown search backend 'annoy'"):
        PatchIndex(vectors, ids, backend="annoy")
