"""docs/ is the design reference the code cites: every cited file exists, and the error
table lists every code the HTTP layer maps."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_the_code_cites_is_in_the_repository() -> None:
    cited: set[str] = set()
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        text = path.read_text()
        if path != Path(__file__).resolve():
            assert "DESIGN" + ".md" not in text and "http_" + "errors" not in text, path
        cited |= set(re.findall(r"\bdocs/[\w./-]+\.(?:md|json)", text))
    assert cited, "the code cites docs/"
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, missing


def test_errors_doc_lists_every_http_code() -> None:
    from duet.controller.app import STATUS

    doc = (ROOT / "docs" / "errors.md").read_text()
    for code, status in STATUS.items():
        assert re.search(rf"\| `{code}` \| {status} \|", doc), code


def test_docs_link_only_to_files_that_exist() -> None:
    for md in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", md.read_text()):
            if "://" not in target:
                assert (md.parent / target).exists(), f"{md.name} links to {target}"
