"""The deployment files: the compose file's services and checks, the image's recipe. The image
itself is built and smoke-tested by `make container` (deploy/smoke.sh), in CI too."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_runs_busdx_orthanc_and_the_worker_with_checks():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"busdx", "orthanc", "worker"}
    busdx = services["busdx"]
    assert "BUSDX_TOKENS" in busdx["environment"]  # beyond loopback: tokens, or it won't start
    assert "/api/ready" in " ".join(busdx["healthcheck"]["test"])
    assert busdx["deploy"]["resources"]["limits"]
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    worker = services["worker"]["command"]
    assert worker[0] == "dicomweb" and "http://orthanc:8042/dicom-web" in worker


def test_the_image_serves_without_torch_as_an_unprivileged_user():
    recipe = (DEPLOY / "Containerfile").read_text()
    assert "ARG BASE=" in recipe and "HEALTHCHECK" in recipe and "USER busdx" in recipe
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith(("torch", "ray"))]


def test_new_wheels_bust_the_install_layer_cache():
    # A bind mount is not part of a step's cache key: without the checksums copied ahead of the
    # install, a host with an older image served an older busdx beside newer models (CI did).
    recipe = (DEPLOY / "Containerfile").read_text()
    copy = recipe.index("COPY dist/wheels/SHA256SUMS")
    install = recipe.index("--mount=type=bind,source=dist/wheels")
    assert copy < install and "sha256sum --check" in recipe[install:]
    assert "SHA256SUMS" in (DEPLOY / "build.sh").read_text()
