"""The drift monitor through the live service: recent OK scores against the calibration goods', the
reviewed false-alarm rate, and both as Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

import httpx

from patchbank.data import list_samples
from patchbank.drift import MIN_RECENT, drift_stats
from patchbank.scorer import load_scorer
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.test_recall_service import banks, uploads  # noqa: F401 (banks: a fixture)


def test_drift_and_reviewed_false_alarms_are_reported_and_exported(banks: Path, demo_root: Path) -> None:  # noqa: F811
    goods = [
        {"rgb": ("rgb.png", r.rgb.read_bytes()), "xyz": ("xyz.tiff", r.xyz.read_bytes())}
        for r in list_samples(demo_root, CATEGORY, "train") + list_samples(demo_root, CATEGORY, "validation")
    ]
    parts = goods + uploads(demo_root)
    m = load_scorer(banks, CATEGORY).bank.manifest
    with (
        live_server(create_app(ServiceSettings(banks=banks, device="cpu"))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        answers = []
        for part in parts:
            r = client.post("/score", data={"category": CATEGORY, "map": "none"}, files=part)
            answers.append(r.json())
        ok = [a["image_score"] for a in answers if not a["is_anomalous"]]
        ng = client.get("/recent", params={"category": CATEGORY, "limit": 100}).json()["decisions"]
        ng_ids = [d["id"] for d in ng if d["decision"] == "NG"]
        assert len(ok) >= MIN_RECENT and len(ng_ids) >= 2
        client.post("/feedback", json={"decision_id": ng_ids[0], "verdict": "false_alarm", "who": "op"})
        client.post("/feedback", json={"decision_id": ng_ids[1], "verdict": "confirmed", "who": "op"})
        info = client.get(f"/categories/{CATEGORY}/drift").json()
        metrics = client.get("/metrics").text
    want = drift_stats(ok, m.score_stats.image_scores, m.thresholds.image)
    assert (
        info["n_recent"] == want.n_recent == len(ok) and info["ks"] == want.ks and info["shift"] == want.shift
    )
    assert info["reviewed_ng"] == 2 and info["false_alarms"] == 1 and info["reviewed_false_alarm_rate"] == 0.5
    assert f'patchbank_drift_ks{{category="{CATEGORY}"}} {want.ks}' in metrics
    assert (
        f'patchbank_feedback_total{{category="{CATEGORY}",decision="NG",verdict="false_alarm"}} 1.0'
        in metrics
    )
