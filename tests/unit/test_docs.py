"""The docs that are generated from code still match the code."""

from __future__ import annotations

from pathlib import Path

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
