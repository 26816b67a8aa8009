"""refresh-bank from review records the live service wrote: confirmed-good parts join the bank, the guard
evaluates before publishing, and a defective part confirmed as good once is held back: none of its patches
joins the bank, so it does not teach the bank that its defect is normal."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from patchbank import bank as bankfmt
from patchbank.data import SampleRef, list_samples
from patchbank.predict import predict
from patchbank.scorer import load_scorer
from patchbank_builder.refresh import RefreshRequest, refresh_bank
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.test_recall_service import banks, sample, uploads  # noqa: F401 (banks: a fixture)


def review(url: str, part: dict[str, tuple[str, bytes]], reviewers: list[str]) -> tuple[str, bool]:
    """Score a part, then have each reviewer say it is good; its decision id and whether it was NG."""
    r = httpx.post(f"{url}/score", data={"category": CATEGORY, "map": "none"}, files=part, timeout=60)
    assert r.status_code == 200, r.text
    ng = r.json()["is_anomalous"]
    ident = httpx.get(f"{url}/recent", params={"category": CATEGORY, "limit": 1}).json()["decisions"][0]["id"]
    for who in reviewers:
        verdict = "false_alarm" if ng else "confirmed"
        f = httpx.post(f"{url}/feedback", json={"decision_id": ident, "verdict": verdict, "who": who})
        assert f.status_code == 201, f.text
    return ident, ng


def test_a_defect_confirmed_good_once_is_held_back_and_adds_nothing_to_the_bank(
    banks: Path,  # noqa: F811
    demo_root: Path,
) -> None:
    scorer = load_scorer(banks, CATEGORY)
    tests = uploads(demo_root)
    refs = list_samples(demo_root, CATEGORY, "test")
    flagged = [
        (part, ref)
        for part, ref, p in zip(tests, refs, predict(scorer, [sample(t) for t in tests]), strict=True)
        if p.is_anomalous and ref.kind != "good"
    ]
    assert flagged, "the bank must flag a defect for this test to mean anything"
    defect, ref = flagged[0]
    kind, on_defect = ref.kind, defect_patches(ref)
    goods = [
        {"rgb": ("rgb.png", r.rgb.read_bytes()), "xyz": ("xyz.tiff", r.xyz.read_bytes())}
        for r in list_samples(demo_root, CATEGORY, "train")[:5]
    ]
    settings = ServiceSettings(banks=banks, device="cpu", recent_samples=20)
    with live_server(create_app(settings)) as url:
        reviewed = [review(url, g, ["operator", "supervisor"]) for g in goods]
        poisoned, was_ng = review(url, defect, ["operator"])  # a mistake: one reviewer calls the defect good
        assert was_ng
        once = refresh_bank(
            RefreshRequest(category=CATEGORY, banks=banks, data_root=demo_root, publish=False, progress=False)
        )
        review(url, defect, [])  # scored again: a new decision of the same part ...
        twice, _ = review(url, defect, ["operator", "supervisor"])  # ... that two reviewers call good
    held = refresh_bank(
        RefreshRequest(category=CATEGORY, banks=banks, data_root=demo_root, publish=False, progress=False)
    )

    assert "confirmed by 1 of the 2 reviewers needed" in once.held_back[poisoned]
    assert poisoned not in once.used + once.held_out
    assert sorted(once.used + once.held_out) == sorted(ident for ident, _ in reviewed)
    written = bankfmt.read_manifest(banks / CATEGORY / once.version)
    assert written.parent == once.parent == scorer.bank.manifest.version and written.refresh is not None
    assert written.refresh.held_back == [poisoned] and written.refresh.confirmations == 2
    bound = [2 * len(ix) for ix in scorer.bank.indices]  # the default: twice the built size
    assert written.refresh.bound == bound and [m.kept + m.added for m in once.members] == bound
    assert once.before and once.after  # the guard evaluated both versions on the test split
    # held back, none of the defect's patches is in the refreshed bank; confirmed by two, the same part is
    # taken as good: its patches join (or it sets the thresholds, as the split of its id decides)
    assert joined(banks, once.version, defect, on_defect) == 0, f"the {kind} defect's patches joined the bank"
    assert twice in held.used + held.held_out
    if twice in held.used:
        assert joined(banks, held.version, defect, on_defect) > 0


def defect_patches(ref: SampleRef) -> np.ndarray:
    """(784,) bool: the 28 x 28 patches the defect's ground truth covers (features no good part has)."""
    from patchbank.data import read_mask
    from patchbank.preprocess import resize_mask

    mask = resize_mask(read_mask(ref, (1, 1)), 224)
    return mask.reshape(28, 8, 28, 8).any(axis=(1, 3)).ravel()


def joined(where: Path, version: str, part: dict[str, tuple[str, bytes]], patches: np.ndarray) -> int:
    """How many of a part's ``patches`` have features that are vectors of a bank version (exactly)."""
    scorer = load_scorer(where, CATEGORY, version)
    feats = scorer.features([sample(part).prepare(scorer.image_size)])
    count = 0
    for f, index in zip(feats, scorer.bank.indices, strict=True):
        bank = {v.tobytes() for v in np.ascontiguousarray(index.vectors, dtype=np.float32)}
        count += sum(p.astype(np.float32).tobytes() in bank for p in f[0][patches])
    return count


def test_auto_accept_keeps_ok_parts_well_below_the_goods_and_is_off_by_default(
    banks: Path,  # noqa: F811
    demo_root: Path,
    tmp_path: Path,
) -> None:

    from patchbank_builder.refresh import read_candidates
    from tests.integration.test_replicas import wait_for

    m = load_scorer(banks, CATEGORY).bank.manifest
    below = float(np.quantile(m.score_stats.image_scores, 0.5))
    parts = uploads(demo_root) + [
        {"rgb": ("rgb.png", r.rgb.read_bytes()), "xyz": ("xyz.tiff", r.xyz.read_bytes())}
        for r in list_samples(demo_root, CATEGORY, "train")
    ]
    for name, quantile in (("off", None), ("on", 0.5)):
        folder = tmp_path / name
        settings = ServiceSettings(banks=banks, device="cpu", feedback_dir=folder, auto_accept_below=quantile)
        with live_server(create_app(settings)) as url:
            answers = [
                httpx.post(
                    f"{url}/score", data={"category": CATEGORY, "map": "none"}, files=p, timeout=60
                ).json()
                for p in parts
            ]
            decisions = httpx.get(f"{url}/recent", params={"category": CATEGORY, "limit": 100}).json()[
                "decisions"
            ]
            kept = {d["id"] for d in decisions if d["decision"] == "OK" and d["image_score"] < below}
            if quantile is None:
                assert not folder.exists()  # off by default: nothing is kept without a review
                continue
            assert kept and len(kept) < len(
                answers
            )  # not the NG parts (nor OK ones at or above the quantile)
            want = len(kept)
            wait_for(lambda f=folder, n=want: len(read_candidates(f, CATEGORY)) == n)
        found = read_candidates(folder, CATEGORY)
        assert {c.decision_id for c in found} == kept and all(
            c.confirmed_by == {"auto-accept"} for c in found
        )
