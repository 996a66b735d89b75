"""The docs that are generated from code still match the code."""

from __future__ import annotations

from pathlib import Path

from domain.lifecycle import mermaid

ROOT = Path(__file__).resolve().parents[2]


def test_the_lifecycle_diagram_in_the_docs_is_the_one_the_class_renders() -> None:
    doc = (ROOT / "docs" / "lifecycle.md").read_text()
    block = doc.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.strip() == mermaid().strip(), "regenerate: sessiond lifecycle"
