"""The loaded banks of a serving process: category -> BankScorer, swapped atomically on reload.

Every category's active bank is loaded at start; a bad bank is reported and skipped, never fatal to the
others. Extractors are shared: one per distinct (feature spec, weights), built once. A category name from a
request is only looked up among the loaded banks, never joined into a filesystem path.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from patchbank import bank as bankfmt
from patchbank.errors import NotFoundError, PatchbankError
from patchbank.features import FeatureExtractor
from patchbank.preprocess import Prepared
from patchbank.scorer import BankScorer, member_extractor, recorded_spec

log = logging.getLogger(__name__)


class LoadedBanks:
    def __init__(self, banks: Path, device: str = "cpu", weights_override: str | None = None) -> None:
        self.banks = Path(banks)
        self.device = device
        self.weights_override = weights_override
        self._scorers: dict[str, BankScorer] = {}
        self._extractors: dict[str, FeatureExtractor] = {}
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}

    def load_all(self) -> dict[str, str]:
        """Load the active bank of every category; returns {category: error} for those skipped."""
        for category in bankfmt.list_categories(self.banks):
            try:
                self.reload(category)
            except PatchbankError as exc:
                self.errors[category] = str(exc)
                log.error("skipping bank %s: %s", category, exc)
        return dict(self.errors)

    def reload(self, category: str, version: str | None = None) -> BankScorer:
        """Load (or re-load) a category's bank and swap it in; the old one keeps serving on failure."""
        bank = bankfmt.load_bank(self.banks, category, version, device=self.device)
        scorer = BankScorer(bank, [self._extractor_for(m) for m in bank.manifest.members])
        with self._lock:
            self._scorers[category] = scorer
            self.errors.pop(category, None)
        sizes = "+".join(str(len(ix)) for ix in bank.indices)
        log.info("loaded bank %s (%s, %s vectors)", bank.ref, bank.manifest.method, sizes)
        return scorer

    def _extractor_for(self, member: bankfmt.Member) -> FeatureExtractor:
        key = recorded_spec(member).model_dump_json() + "|" + (member.weights.params_sha256 or "")
        with self._lock:
            cached = self._extractors.get(key)
        if cached is not None:
            return cached
        extractor = member_extractor(member, self.device, self.weights_override)
        with self._lock:
            return self._extractors.setdefault(key, extractor)

    def get(self, category: str) -> BankScorer:
        with self._lock:
            scorer = self._scorers.get(category)
        if scorer is None:
            known = ", ".join(self.categories()) or "none loaded"
            raise NotFoundError(f"unknown category {category!r} (loaded: {known})")
        return scorer

    def version_of(self, category: str) -> str | None:
        """The loaded bank version of a category, or None."""
        with self._lock:
            scorer = self._scorers.get(category)
        return scorer.bank.manifest.version if scorer else None

    def categories(self) -> list[str]:
        with self._lock:
            return sorted(self._scorers)

    def extractors(self) -> list[FeatureExtractor]:
        with self._lock:
            return list(self._extractors.values())

    def warm_up(self) -> None:
        """One forward pass per extractor (allocations, lazy imports) before the process says ready."""
        size = 224
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        xyz = np.stack([(xx - size / 2) * 1e-3, (yy - size / 2) * 1e-3, np.full_like(xx, 0.5)], axis=-1)
        dummy = Prepared(rgb=np.zeros((3, size, size), np.float32), xyz=xyz, input_size=(size, size))
        for extractor in self.extractors():
            if extractor.image_size == size:
                extractor.extract([dummy])
