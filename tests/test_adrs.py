"""Every ADR is minimal MADR with a Confirmation naming a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADRS = sorted((ROOT / "docs" / "adr").glob("*.md"))


def test_every_adr_has_status_date_and_confirmation() -> None:
    assert ADRS, "docs/adr/ holds the decisions"
    for path in ADRS:
        assert re.fullmatch(r"\d{4}-[a-z0-9-]+\.md", path.name), path.name
        text = path.read_text()
        assert text.startswith("---\nstatus: "), f"{path.name}: front matter with status"
        assert "\ndate: " in text.split("---", 2)[1], f"{path.name}: date"
        for section in (
            "## Context and Problem Statement",
            "## Decision Outcome",
            "### Confirmation",
        ):
            assert section in text, f"{path.name}: missing {section}"
        confirmation = text.split("### Confirmation", 1)[1]
        named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", confirmation)
        assert named, f"{path.name}: Confirmation names no test"
        for file, test in named:
            test_file = ROOT / file
            assert test_file.exists(), f"{path.name}: {file} does not exist"
            if test:
                assert f"def {test}(" in test_file.read_text(), f"{path.name}: no {file}::{test}"


# Numbers given to decisions written on branches not merged yet; once their
# files are here, this can be emptied.
TAKEN_ELSEWHERE = {22, 23}


def test_adr_numbers_are_unique_and_consecutive() -> None:
    numbers = [int(p.name[:4]) for p in ADRS]
    expected = [n for n in range(1, max(numbers) + 1) if n in numbers or n not in TAKEN_ELSEWHERE]
    assert numbers == expected
