"""``edgeft.run`` with the ``clm`` and ``multitask`` objectives through every stage.

Raw-text runs have no prompt/response task, so export samples, calibration, held-out windows and
validate all read the text splits; exact match is not measured (null) and not gated.
"""

from __future__ import annotations

import pytest

import edgeft
from conftest import read_json, tiny_recipe_dict, write_recipe

pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean", "ignore:The given NumPy array is not writable",
)

TEXT = "".join(f"Line {i}: the keeper lit the lamp and watched the {w} sea.\n"
               for i, w in zip(range(400), ["dark", "grey", "calm", "wild"] * 100))


def test_clm_run_end_to_end(tiny_lm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus.txt").write_text(TEXT)
    r = tiny_recipe_dict(tiny_lm_dir, "tiny-clm")
    r["data"] = {"text": {"path": "corpus.txt", "eval_fraction": 0.1, "chunk_chars": 400}}
    r["finetune"].update(objective="clm", max_seq_len=64)
    r["quantize"] = [{"name": "int8", "scheme": "int8-weight", "options": {"block_size": 32}},
                     {"name": "int4-gptq", "scheme": "int4-gptq", "options": {"block_size": 32}}]
    r["validate"]["devices"] = ["host"]
    res = edgeft.run(write_recipe(tmp_path / "clm.yaml", r), runs_root=tmp_path / "runs")
    report = read_json(res.run_dir / "validate" / "report.json")
    arts = report["artifacts"]
    assert set(arts) >= {"merged", "onnx-fp32", "int8", "int4-gptq"}
    for name, a in arts.items():
        assert a["accuracy"]["exact_match"] is None and a["accuracy"]["n_examples"] == 0, name
        assert a["accuracy"]["perplexity"] > 1, name
    names = {g["name"].split()[0] for g in report["gates"]}
    assert "perplexity" in names and "exact_match" not in names
    assert report["passed"]


def test_multitask_run_validates_each_task_with_its_prompt(tiny_lm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path / "cache"))
    r = tiny_recipe_dict(tiny_lm_dir, "tiny-multitask")
    r["finetune"].update(objective="multitask", multitask={"tasks": [
        {"name": "intents", "generated": {"generator": "intents", "n_train": 16, "n_eval": 4, "seed": 0},
         "weight": 1.0, "system_prompt": "Parse the request into JSON.", "metric": "exact_match"},
        {"name": "labels", "generated": {"generator": "intents", "n_train": 16, "n_eval": 4, "seed": 1},
         "weight": 1.0, "system_prompt": "Name the intent.", "metric": "accuracy"}]})
    r["quantize"] = [{"name": "int8", "scheme": "int8-weight", "options": {"block_size": 32}}]
    r["validate"].update(devices=["host"], eval_examples=6)
    res = edgeft.run(write_recipe(tmp_path / "mt.yaml", r), runs_root=tmp_path / "runs")
    report = read_json(res.run_dir / "validate" / "report.json")
    for name in ("merged", "int8"):
        acc = report["artifacts"][name]["accuracy"]
        assert set(acc["per_task"]) == {"intents", "labels"}, name  # round-robin keeps both in 6 examples
        assert "accuracy" in acc["per_task"]["labels"] and "exact_match" in acc["per_task"]["intents"]
        assert acc["n_examples"] == 6
