"""The README and docs/ as a reader follows them: every relative link leads to a file of the repository (and to a
heading there, when it names one), and the README stays a short first page that a fresh clone can follow."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ +(.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or not file.is_relative_to(REPO):
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_readme_is_a_short_first_page_that_needs_nothing_beside_the_clone():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220, "the README is the newcomer's page: move reference text into docs/"
    assert "make train" in text and "make test" in text
    assert "../shared" not in text  # a user's clone has no ../shared
    assert len(PAGES) - 1 >= 3
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (REPO / image).stat().st_size < 200_000, f"{image}: keep git-tracked pictures small"
