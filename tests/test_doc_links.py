"""Every relative link of README.md and docs/*.md names an existing file; a ``#anchor`` names one of its headings."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def links(doc: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", doc.read_text())) if not re.match(r"[a-z]+:", t)]


def test_slug_matches_github():
    # "## Performance on a GPU: where it stands" -> GitHub's #performance-on-a-gpu-where-it-stands
    assert slug("Performance on a GPU: where it stands") == "performance-on-a-gpu-where-it-stands"
    assert slug("`NumericAnswer` or `MathVerify`?") == "numericanswer-or-mathverify"


def test_the_docs_link_to_each_other():
    # the README is a landing page: it must reach every docs/ page
    readme_targets = {(ROOT / t.split("#")[0]).resolve() for t in links(ROOT / "README.md") if t.split("#")[0]}
    assert set(DOCS[1:]) <= readme_targets, sorted(str(d) for d in set(DOCS[1:]) - readme_targets)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc):
    for target in links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.relative_to(ROOT)}: link to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{doc.relative_to(ROOT)}: link to {target}: no such heading"
