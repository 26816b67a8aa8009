"""FAISS index backends for a bank's patch vectors, chosen by name (as patchcore-inspection's two wrappers).

A bank's vectors are stored in an ``IndexIDMap2`` whose ids record each vector's origin
(``training sample * 784 + patch``), so held-out scoring can leave one training sample out of the search.
``flat``: exact L2 (``IndexFlatL2``). GPU: the inner index moves to a GPU when faiss-gpu and a GPU are
present, and back to the CPU to save; results are the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from patchbank.errors import BankError, InputError

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat",)


def _faiss():  # imported lazily: the light client never needs it
    import faiss

    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class PatchIndex:
    """Nearest-neighbour search over a bank's (M, D) float32 vectors, each tagged with an int64 origin id."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, kind: str = "flat", device: str = "cpu") -> None:
        if kind not in INDEX_KINDS:
            raise InputError(f"unknown index kind {kind!r}; known: {', '.join(INDEX_KINDS)}")
        faiss = _faiss()
        self.kind = kind
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        cpu = faiss.IndexFlatL2(self.vectors.shape[1])
        cpu.add(self.vectors)
        self._cpu = cpu
        self._search_index = cpu
        if device.startswith("cuda") and gpu_available():
            self._gpu_res = faiss.StandardGpuResources()
            self._search_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, cpu)
        elif device.startswith("cuda"):
            log.info("faiss-gpu or a GPU is not available: searching on the CPU")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int = 1, exclude_rows: np.ndarray | None = None) -> np.ndarray:
        """(Q, k) int64 row numbers of the k nearest vectors of (Q, D) queries (ascending distance).

        ``exclude_rows``: (M,) bool, rows left out of the search (CPU; for leave-one-out scoring).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if exclude_rows is None:
            _, rows = self._search_index.search(q, k)
        else:
            faiss = _faiss()
            keep = np.packbits(~exclude_rows, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(exclude_rows), faiss.swig_ptr(keep))
            _, rows = self._cpu.search(q, k, params=faiss.SearchParameters(sel=sel))
        return rows

    def save(self, path: Path) -> None:
        """Write the CPU index (an IndexIDMap2 over the flat index) with ``faiss.write_index``."""
        faiss = _faiss()
        idmap = faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
        idmap.add_with_ids(self.vectors, self.ids)
        faiss.write_index(idmap, str(path))

    @classmethod
    def load(cls, path: Path, kind: str = "flat", device: str = "cpu") -> PatchIndex:
        faiss = _faiss()
        try:
            idmap = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise BankError(f"cannot read FAISS index {path}: {exc}") from exc
        if not isinstance(idmap, faiss.IndexIDMap2):
            raise BankError(
                f"{path} is a {type(idmap).__name__}, expected an IndexIDMap2 written by patchbank"
            )
        ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
        vectors = faiss.rev_swig_ptr(faiss.downcast_index(idmap.index).get_xb(), idmap.ntotal * idmap.d)
        return cls(np.array(vectors, dtype=np.float32).reshape(idmap.ntotal, idmap.d), ids, kind, device)
