"""refresh-bank's choices: which old vectors a bounded bank forgets, how candidates are split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patchbank.recall import RecallStats
from patchbank_builder.refresh import choose, split_holdout

DAY = 86400.0


def _cluster(rng: np.random.Generator, centre: float, n: int) -> np.ndarray:
    return (centre + rng.normal(size=(n, 8))).astype(np.float32)


def test_a_long_run_of_the_new_setting_forgets_the_old_setting_and_keeps_the_size() -> None:
    """A bank of 30 old-setting vectors nothing recalled for 100 half-lives and 30 new-setting vectors good
    parts keep recalling, refreshed with 30 new patches at its bound of 60: the old-setting vectors go."""
    rng = np.random.default_rng(0)
    old_setting, new_setting, patches = (
        _cluster(rng, 0.0, 30),
        _cluster(rng, 20.0, 30),
        _cluster(rng, 20.0, 30),
    )
    bank = np.concatenate([old_setting, new_setting])
    now, built = 200 * DAY, 0.0
    stats = RecallStats.empty([len(bank)])
    stats.record([np.arange(30, 60)], at=now - DAY)  # the new setting's vectors, recalled yesterday
    retention = stats.retention(now, half_life_s=2 * DAY, built_at=built)[0]
    kept = choose(bank, patches, retention, size=60, device="cpu", progress=False)
    assert len(kept) == 60 == len(set(kept.tolist()))
    dropped = sorted(set(range(90)) - set(kept.tolist()))
    assert dropped == list(range(30))  # exactly the old setting's vectors

    # the same bank whose old-setting vectors are still recalled keeps covering them (parts still made):
    # the coreset then spreads its 60 vectors over both settings
    stats.record([np.arange(0, 30)], at=now - DAY)
    retention = stats.retention(now, half_life_s=2 * DAY, built_at=built)[0]
    kept = choose(bank, patches, retention, size=60, device="cpu", progress=False)
    assert len(set(range(30)) & set(kept.tolist())) >= 15


def test_candidates_split_by_their_ids_hash_whatever_their_order() -> None:
    ids = [f"abcdef01-{i}" for i in range(10)]
    fit, held = split_holdout(ids, 0.3)
    assert len(held) == 3 and sorted(fit + held) == sorted(ids)
    assert split_holdout(list(reversed(ids)), 0.3) == (fit, held)
    assert split_holdout(ids[:2], 0.3)[1] and split_holdout(ids[:2], 0.3)[0]  # one of each at least


def test_review_records_become_candidates_with_their_confirmers_and_disputes(tmp_path: Path) -> None:
    import json

    from patchbank_builder.refresh import read_candidates

    def record(
        folder: str, ident: str, decision: str, verdict: str, who: str, note: str | None = None
    ) -> None:
        path = tmp_path / "puck" / folder
        path.mkdir(parents=True)
        body = {
            "decision": {"id": ident, "decision": decision},
            "verdict": verdict,
            "who": who,
            "note": note,
            "files": {"rgb": "rgb.png", "xyz": "xyz.tiff"},
        }
        (path / "record.json").write_text(json.dumps(body))

    record("1-a", "aaaaaaaa-1", "OK", "confirmed", "op")
    record("2-a", "aaaaaaaa-1", "OK", "missed_defect", "qa")  # the same part, said to be defective
    record("3-b", "aaaaaaaa-2", "NG", "false_alarm", "op")
    record("4-b", "aaaaaaaa-2", "NG", "false_alarm", "lead")
    record(
        "5-c", "aaaaaaaa-3", "OK", "confirmed", "auto-accept", "scored below the 0.5 quantile of the goods"
    )
    record("6-d", "aaaaaaaa-4", "NG", "confirmed", "op")  # a defect confirmed: not a candidate
    found = {c.decision_id: c for c in read_candidates(tmp_path, "puck")}
    assert sorted(found) == ["aaaaaaaa-1", "aaaaaaaa-2", "aaaaaaaa-3"]
    assert found["aaaaaaaa-1"].disputed_by == {"qa"} and found["aaaaaaaa-2"].confirmed_by == {"op", "lead"}
    assert found["aaaaaaaa-3"].auto_accept_below == 0.5 and not found["aaaaaaaa-2"].disputed_by
