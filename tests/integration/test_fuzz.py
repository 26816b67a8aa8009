"""Schema fuzzing of the live service: schemathesis, run as its command line against the service's own
OpenAPI document, generates requests (valid and invalid, a bounded number per operation) and checks that
none gets a 5xx and that every answer matches the documented status codes, content types and schemas."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from patchbank_builder.build import BuildResult
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY

EXAMPLES = 30  # per operation and phase: a few dozen, bounded in count
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_no_server_error_and_every_answer_as_documented(
    fpfh_build: tuple[Path, BuildResult], tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    service = ServiceSettings(banks=fpfh_build[0], device="cpu", log_json=False, queue_size=16)
    with live_server(create_app(service)) as url:
        spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
        for schema in spec["components"]["schemas"].values():  # generated requests name a loaded bank, so
            if "category" in schema.get("properties", {}):  # they reach decoding, not only the 404
                schema["properties"]["category"] = {"type": "string", "enum": [CATEGORY]}
        (tmp_path / "openapi.json").write_text(json.dumps(spec))
        args = ["openapi.json", "--url", url, "--checks", CHECKS, "--max-examples", str(EXAMPLES)]
        run = subprocess.run(
            [cli, "run", *args, "--generation-deterministic", "--request-timeout", "60", "--no-color"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,  # its report files stay out of the checkout
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and int(generated[1]) > 100 and generated[1] == generated[2], run.stdout[-2000:]
