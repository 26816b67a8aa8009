"""The loaded banks of a serving process: category -> scorer (a ``BankScorer``, or a ``PointBankScorer`` for a
3D-only bank), swapped atomically on reload.

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
from patchbank.errors import NotFoundError, PatchbankError, shorten
from patchbank.features import FeatureExtractor
from patchbank.points.scorer import PointBankScorer, load_point_scorer
from patchbank.preprocess import Prepared
from patchbank.scorer import BankScorer, member_extractor, recorded_spec

Scorer = BankScorer | PointBankScorer  # an RGB + 3D bank's, or a 3D-only bank's

log = logging.getLogger(__name__)


class LoadedBanks:
    def __init__(self, banks: Path, device: str = "cpu", weights_override: str | None = None) -> None:
        self.banks = Path(banks)
        self.device = device
        self.weights_override = weights_override
        self._scorers: dict[str, Scorer] = {}
        self._extractors: dict[str, FeatureExtractor] = {}
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}

    def load_all(self) -> dict[str, str]:
        """Load the active bank of every category; returns {category: error} for those skipped (a refused
        ACTIVE among them: the other categories load)."""
        for category in bankfmt.list_categories(self.banks):
            try:
                self.reload(category)
            except PatchbankError as exc:
                log.error("skipping bank %s: %s", category, exc)
        return self.errors

    def reload(self, category: str, version: str | None = None, origin: str | None = None) -> Scorer:
        """Load (or re-load) a category's bank and swap it in; the old one keeps serving on failure, and the
        failure stays in ``errors`` until a version of the category loads. ``origin`` (e.g. "named in Redis")
        tells a refusal where the version came from."""
        try:
            bank = bankfmt.load_bank(self.banks, category, version, device=self.device, origin=origin)
            scorer: Scorer
            if bank.manifest.input == "points":
                scorer = load_point_scorer(bank)
            else:
                scorer = BankScorer(bank, [self._extractor_for(m) for m in bank.manifest.members])
        except PatchbankError as exc:
            with self._lock:
                self._errors[category] = str(exc)
            raise
        with self._lock:
            self._scorers[category] = scorer
            self._errors.pop(category, None)
        sizes = "+".join(str(len(ix)) for ix in bank.indices)
        log.info("loaded bank %s (%s, %s vectors)", bank.ref, bank.manifest.method, sizes)
        return scorer

    @property
    def errors(self) -> dict[str, str]:
        """{category: why its bank is not loaded, or why the version asked for was refused} (a snapshot)."""
        with self._lock:
            return dict(self._errors)

    def clear_error(self, category: str) -> None:
        """Forget a category's load failure (the version it was asked to serve is the one it serves)."""
        with self._lock:
            self._errors.pop(category, None)

    def _extractor_for(self, member: bankfmt.Member) -> FeatureExtractor:
        key = recorded_spec(member).model_dump_json() + "|" + (member.weights.params_sha256 or "")
        with self._lock:
            cached = self._extractors.get(key)
        if cached is not None:
            return cached
        extractor = member_extractor(member, self.device, self.weights_override)
        with self._lock:
            return self._extractors.setdefault(key, extractor)

    def get(self, category: str) -> Scorer:
        with self._lock:
            scorer = self._scorers.get(category)
        if scorer is None:
            known = ", ".join(self.categories()) or "none loaded"
            what = f"unknown category {shorten(category)}" if category else "no category given"
            raise NotFoundError(f"{what} (loaded: {known})")
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
