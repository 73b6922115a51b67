"""Round-trip editing of device profiles (edgeft.config.profiles): comments and key order survive."""

from __future__ import annotations

import yaml

from edgeft.config.profiles import EDIT_ME, new_profile_text

SOURCE = """\
# Some board: the header comment describes the copied device
name: some-board   # the file name too
class: edge
description: >-
  A board with a long description
  over two lines.
# where the numbers come from
source: datasheet X, table 3
cpu:
  arch: arm64
  # four big cores, no little ones
  cores: 4
  threads: 4   # estimate: all cores
memory: {total_mb: 4096, model_budget_mb: 2048, bandwidth_gbps: 8.0}  # estimate: 4267 MT/s x 2 B x 0.9
formats: [onnx]
budgets:
  ttft_ms: 2000
"""


def test_comments_and_key_order_survive_an_edit():
    text = new_profile_text(SOURCE, "my-board", "some-board")
    for comment in ("# the file name too", "# where the numbers come from", "# four big cores, no little ones",
                    "# estimate: all cores", "# estimate: 4267 MT/s x 2 B x 0.9"):
        assert comment in text, f"{comment!r} lost:\n{text}"
    assert "header comment describes the copied device" not in text  # replaced by the new profile's header
    assert text.startswith("# my-board: device profile started from some-board by `edgeft devices add`")
    data = yaml.safe_load(text)
    assert list(data) == ["name", "class", "description", "source", "cpu", "memory", "formats", "budgets"]
    assert data["name"] == "my-board" and data["description"].startswith(EDIT_ME)
    assert data["source"].startswith(EDIT_ME) and "copied from some-board" in data["source"]
    original = yaml.safe_load(SOURCE)
    for key in ("class", "cpu", "memory", "formats", "budgets"):
        assert data[key] == original[key]
    assert "memory: {total_mb: 4096, model_budget_mb: 2048, bandwidth_gbps: 8.0}" in text  # its style too
    placeholder_lines = text.split("\ndescription:")[1].split("\ncpu:")[0].splitlines()
    assert max(len(line) for line in placeholder_lines) <= 100  # folded like the rest of the file


def test_an_edit_of_a_one_line_profile_gets_one_key_per_line():
    text = new_profile_text("{name: flow, class: edge, description: d, source: s, cpu: {arch: arm64}}\n",
                            "my-flow", "flow")
    data = yaml.safe_load(text)
    assert data["name"] == "my-flow" and data["cpu"] == {"arch": "arm64"}
    assert "\nclass: edge\n" in text
