"""Scoring methods by name: which banks a method keeps and how their scores combine.

A method is what a bank scores with; an extractor is one of its parts. A method name is one or more
registered feature extractors (:mod:`patchbank.features`):

- ``fpfh``, ``rgb``, ``dino``, ``rgb+fpfh``, ``cpmf``, ``cfm``: one bank of that extractor's patch features
  (``rgb+fpfh`` is BTF's per-patch concatenation, a single bank);
- ``rgb/fpfh``, ``rgb/cpmf``, ``dino/fpfh``, ...: late fusion, one bank per extractor, their scores aligned
  and combined (:mod:`patchbank.fusion`); the rule is ``max`` unless the name ends in ``@svm``
  (``rgb/fpfh@svm``, M3DM's one-class-SVM fusion);
- ``point-fpfh``: a 3D-only bank of unorganized 360-degree clouds (Real3D-AD), point-neighbourhood FPFH
  (:mod:`patchbank.points`); its ``input`` is ``points``, and it joins no other member.

``rgb/fpfh`` is the default: on demo data from two seeds it has the best mean I-AUROC and AU-PRO of every
method (docs/BENCHMARKS.md, Detection). A method's scoring rule (:mod:`patchbank.rules`) is the published
one for BTF's configurations (``fpfh``, ``rgb+fpfh``) and the product's for every other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from patchbank.errors import InputError
from patchbank.features import EXTRACTORS, list_extractors
from patchbank.fusion import FUSION_RULES
from patchbank.points.features import POINT_EXTRACTORS
from patchbank.rules import PRODUCT, PUBLISHED, Scoring

DEFAULT_METHOD = "rgb/fpfh"
PUBLISHED_METHODS = (("fpfh",), ("rgb+fpfh",))
MEMBER_SEP = "/"
RULE_SEP = "@"


@dataclass(frozen=True)
class Method:
    """A parsed method name: its member extractors, in order, the fusion rule (None: one bank), and what it
    scores (``image``: RGB + organized cloud; ``points``: one unorganized cloud, :mod:`patchbank.points`)."""

    name: str
    members: tuple[str, ...]
    fusion: str | None
    input: Literal["image", "points"] = "image"

    @property
    def published(self) -> bool:
        """BTF's configurations (``fpfh``, ``rgb+fpfh``): scored by the published rule, as the papers."""
        return self.members in PUBLISHED_METHODS

    def scoring(self, options: dict[str, Any] | None = None) -> Scoring:
        """The method's scoring rule (the published one for BTF's configurations, the product's for every
        other), with ``options`` (e.g. from ``--scoring.*`` flags) overriding it."""
        base = PUBLISHED if self.published else PRODUCT
        if not options:
            return base
        try:
            return Scoring.model_validate({**base.model_dump(), **options})
        except ValidationError as exc:
            raise InputError(f"scoring options {options}: {exc.errors()[0]['msg']}") from exc

    @property
    def needs_weights(self) -> bool:
        """Whether any member loads backbone weights (registry metadata of its extractor)."""
        if self.input == "points":
            return False
        return any(EXTRACTORS.get(m).needs_weights for m in self.members)


def parse_method(name: str) -> Method:
    """``rgb/fpfh@svm`` -> Method(members=("rgb", "fpfh"), fusion="svm"); InputError naming what is wrong."""
    text = name.strip()
    base, sep, rule = text.partition(RULE_SEP)
    members = tuple(m.strip() for m in base.split(MEMBER_SEP))
    points = [m for m in members if m in POINT_EXTRACTORS]
    if points:
        if len(members) > 1 or sep:
            raise InputError(f"method {name!r}: {points[0]} scores point clouds alone (no fusion, no rule)")
        return Method(points[0], members, None, "points")
    known = list_extractors()
    unknown = [m for m in members if m not in known]
    if unknown or not all(members):
        raise InputError(
            f"unknown method {name!r}: {', '.join(unknown) or 'an empty member'} is not a feature extractor "
            f"(known: {', '.join(known)}; join them with {MEMBER_SEP!r} for late fusion, e.g. {DEFAULT_METHOD}; "
            f"3D-only: {', '.join(POINT_EXTRACTORS.names())})"
        )
    if len(set(members)) != len(members):
        raise InputError(f"method {name!r} names a member twice")
    if len(members) == 1:
        if sep:
            raise InputError(f"method {name!r}: a fusion rule needs two or more members, e.g. rgb/fpfh@svm")
        return Method(text, members, None)
    rule = rule or "max"
    if rule not in FUSION_RULES:
        raise InputError(
            f"method {name!r}: unknown fusion rule {rule!r}; known: {', '.join(FUSION_RULES.names())}"
        )
    canonical = MEMBER_SEP.join(members) + ("" if rule == "max" else RULE_SEP + rule)
    return Method(canonical, members, rule)
