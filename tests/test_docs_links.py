"""Every relative link in the manual (README.md and docs/) leads to a file of the checkout.

Pages that are being written alongside this one are listed in EXPECTED_PAGES: a link to one of them is
accepted before the page exists, so the README can point at the whole manual from the start.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_PAGES = {"docs/cluster.md", "docs/checkpoints.md", "docs/preemption.md", "docs/gpu.md",
                  "docs/troubleshooting.md"}
# [text](target) and [text](target "title"); images too. Code spans are removed first.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def manual_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def broken_links(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text() if text is None else text
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)               # code spans
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https:, mailto:, an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        try:
            rel = path.relative_to(ROOT).as_posix()
        except ValueError:
            broken.append(f"{target} (outside the checkout)")
            continue
        if not path.exists() and rel not in EXPECTED_PAGES:
            broken.append(target)
    return broken


def test_every_relative_link_of_the_manual_resolves():
    broken = {str(p.relative_to(ROOT)): b for p in manual_pages() if (b := broken_links(p))}
    assert not broken, f"links to nothing: {broken}"


def test_the_manual_links_its_pages_and_the_expected_ones():
    readme = (ROOT / "README.md").read_text()
    for page in ("docs/commands.md", "docs/trainers.md", "docs/challenge.md", "docs/reproducibility.md",
                 *sorted(EXPECTED_PAGES)):
        assert f"]({page})" in readme, f"README.md does not link {page}"


def test_a_link_to_a_missing_page_is_reported():
    page = ROOT / "docs" / "commands.md"
    text = ("[ok](trainers.md) [anchor](#x) [web](https://example.org) [expected](cluster.md) "
            "[gone](no_such_page.md#part) `[code](not_a_link.md)` [up](../README.md)")
    assert broken_links(page, text) == ["no_such_page.md#part"]
