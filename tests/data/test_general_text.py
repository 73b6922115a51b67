"""validate.perplexity.general: the built-in python-docs text, a file, start_fraction, and a missing file at load."""

from __future__ import annotations

import pytest

from edgeft.config.schema import GeneralTextConfig
from edgeft.data.readers import general_text
from edgeft.errors import ConfigError


def test_python_docs_is_english_prose_from_the_stdlib():
    text = general_text(GeneralTextConfig())
    assert len(text) > 100_000 and 'The "if" statement' in text


def test_start_fraction_keeps_the_tail_from_a_line_start(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = general_text(GeneralTextConfig(text="t.txt", start_fraction=0.9), tmp_path)
    assert tail.startswith("line ") and tail.endswith("line 99\n")
    assert 8 <= tail.count("\n") <= 11
    assert general_text(GeneralTextConfig(text=str(f)), tmp_path) == f.read_text()


def test_a_missing_general_text_file_fails_when_the_recipe_loads(tmp_path):
    from edgeft.recipe import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text("name: t\nmodel: smollm2-135m\ndata: {generated: {generator: intents, n_train: 8, n_eval: 4}}\n"
                 "validate: {perplexity: {general: {text: nowhere.txt}}}\n")
    with pytest.raises(ConfigError, match=r"validate\.perplexity\.general\.text: file not found: .*nowhere\.txt"):
        load_recipe(r)
