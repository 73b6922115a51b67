"""The documented loop: monitor's review file, corrected, goes back into the recipe as ``data.extra_train``."""

from __future__ import annotations

import json

from conftest import tiny_recipe_dict, write_recipe


def test_reviewed_rows_are_appended_to_the_train_split(tiny_lm_dir, tmp_path):
    from edgeft.pipeline.run import Pipeline
    from edgeft.recipe import load_recipe

    review = tmp_path / "review.jsonl"
    rows = [{"prompt": "dim the hall lights to 20", "response": '{"intent":"lights"}', "score": 2.1, "rank": 1,
             "strategy": "entropy", "scope": "served", "model": "tiny-0.0.1/int8", "drift_score": 0.3},
            {"prompt": "wake me at 7", "response": '{"intent":"alarm"}', "score": 1.9, "rank": 2}]
    review.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_lm_dir))
    plain = load_recipe(recipe, [])
    rec = load_recipe(recipe, ['data.extra_train=["review.jsonl"]'])  # as `edgeft run ... --set` takes it
    assert rec.data.extra_train == ["review.jsonl"]
    p = Pipeline(rec, recipe, tmp_path / "runs")
    p.execute(only=["data"])
    train = [json.loads(x) for x in (p.run.stage_dir("data") / "train.jsonl").read_text().splitlines()]
    assert len(train) == 24 + 2 and train[-2:] == [{k: r[k] for k in ("prompt", "response")} for r in rows]
    stage = json.loads((p.run.stage_dir("data") / "stage.json").read_text())
    assert stage["metrics"]["source"]["n_extra_train"] == 2
    # the data stage's key changes, so the stages after it re-run; without extra_train they would not
    assert Pipeline(plain, recipe, tmp_path / "runs").params("data") != p.params("data")
