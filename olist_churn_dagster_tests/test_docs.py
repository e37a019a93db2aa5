"""The README and docs/ link to each other by relative paths: every such link resolves."""

import re

from olist_churn_dagster_tests.conftest import REPO_ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    return [
        target.partition("#")[0]
        for target in LINK.findall(text)
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


def test_relative_links_resolve():
    broken = [
        f"{doc.relative_to(REPO_ROOT)} -> {target}"
        for doc in DOCS
        for target in relative_links(doc.read_text())
        if not (doc.parent / target).exists()
    ]
    assert not broken, broken


def test_readme_links_every_doc():
    readme_links = set(relative_links((REPO_ROOT / "README.md").read_text()))
    docs = {f"docs/{doc.name}" for doc in DOCS[1:]}
    assert docs <= readme_links, docs - readme_links


def test_link_finder_skips_urls_and_anchors():
    text = "[a](docs/x.md#part) [b](https://example.com/y.md) [c](#local) [d](../README.md)"
    assert relative_links(text) == ["docs/x.md", "../README.md"]
