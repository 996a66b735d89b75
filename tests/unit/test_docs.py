"""The docs that are generated from code still match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.lifecycle import mermaid

ROOT = Path(__file__).resolve().parents[2]


def test_the_lifecycle_diagram_in_the_docs_is_the_one_the_class_renders() -> None:
    doc = (ROOT / "docs" / "lifecycle.md").read_text()
    block = doc.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.strip() == mermaid().strip(), "regenerate: sessiond lifecycle"


def test_the_protocol_in_the_repository_is_the_contract_it_was_copied_from() -> None:
    """docs/PROTOCOL.md is a copy, so a clone has the wire contract; where the
    shared original sits beside the checkout (the team's workspace), the copy
    must not have drifted from it."""
    copy = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert "## WebSocket" in copy
    original = ROOT.parent / "shared" / "PROTOCOL.md"
    if original.exists():
        assert copy == original.read_text(), "copy ../shared/PROTOCOL.md to docs/PROTOCOL.md"


def test_the_kubernetes_sample_probes_what_a_node_serves_and_waits_long_enough() -> None:
    """docs/ops/kubernetes.yaml: liveness on /livez, readiness on /readyz
    (the routes the app has), and a grace period that covers the preStop
    pause, the drain it sets and the shutdown's closing of sockets."""
    yaml = pytest.importorskip("yaml")
    from service.edge.app import create_app
    from service.runtime.settings import Settings

    docs = list(yaml.safe_load_all((ROOT / "docs" / "ops" / "kubernetes.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    app = create_app(Settings(store_url="memory://", secret="x" * 32))
    served = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/livez", "/readyz"} <= served
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = float(env["SESSIOND_DRAIN_SECONDS"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pause + drain + Settings.shutdown_timeout
    assert pod["terminationGracePeriodSeconds"] > needed
