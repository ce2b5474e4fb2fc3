"""The test tiers: explicit markers, registered once, and `make test-fast` leaving out every one of them."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from conftest import HEAVY_FIXTURES, unmarked_heavy_tests

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("slow", "subprocess", "stress")


class _Item:
    def __init__(self, nodeid: str, fixtures: set[str], markers: set[str]):
        self.nodeid, self.fixturenames, self._markers = nodeid, sorted(fixtures), markers

    def get_closest_marker(self, name: str):
        return getattr(pytest.mark, name) if name in self._markers else None


def test_a_test_on_a_heavy_workspace_must_say_slow():
    heavy = sorted(HEAVY_FIXTURES)[0]
    items = [_Item("t.py::unmarked", {heavy, "tmp_path"}, set()), _Item("t.py::marked", {heavy}, {"slow"}),
             _Item("t.py::light", {"tmp_path"}, set()), _Item("t.py::other_tier", {heavy}, {"subprocess"})]
    assert unmarked_heavy_tests(items) == ["t.py::unmarked", "t.py::other_tier"]


def test_every_tier_is_registered_and_left_out_by_make_test_fast():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {m.split(":", 1)[0] for m in config["markers"]}
    assert set(TIERS) <= registered and "--strict-markers" in config["addopts"]
    recipe = (ROOT / "Makefile").read_text().split("\ntest-fast:", 1)[1].split("\n\n", 1)[0]
    expression = re.search(r'-m "([^"]+)"', recipe).group(1)
    assert expression == " and ".join(f"not {t}" for t in TIERS), expression
