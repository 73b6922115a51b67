"""YAML loading, validation messages, --set overrides and recipe checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeft.config import (
    Recipe,
    apply_overrides,
    load_yaml,
    resource_layers,
    shipped_dir,
    user_dir,
)
from edgeft.errors import ConfigError
from edgeft.recipe import load_recipe, validate_recipes

REPO = Path(__file__).resolve().parents[2]
MINIMAL = "name: t\nmodel: smollm2-135m\n"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """cwd = tmp_path (so messages show relative paths) with the shipped devices/ and export/."""
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def errors_of(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_recipe(path, overrides)
    return str(e.value).splitlines()


# --------------------------------------------------------------------------- load_yaml


def test_load_yaml_missing_file(in_tmp):
    with pytest.raises(ConfigError, match=r"^recipes/x\.yaml: file not found$"):
        load_yaml("recipes/x.yaml")


def test_load_yaml_syntax_error_names_line(in_tmp):
    write(in_tmp / "recipes/bad.yaml", "name: t\nmodel: [smollm2\nfinetune:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as e:
        load_yaml("recipes/bad.yaml")
    msg = str(e.value)
    assert msg.startswith("recipes/bad.yaml:")
    assert "invalid YAML at line" in msg


def test_load_yaml_bad_indent_line_number(in_tmp):
    write(in_tmp / "recipes/bad.yaml", "name: t\nfinetune:\n  epochs: 1\n   lr: 2\n")
    with pytest.raises(ConfigError, match=r"recipes/bad\.yaml:4: invalid YAML at line 4"):
        load_yaml("recipes/bad.yaml")


def test_load_yaml_unclosed_bracket_says_where_it_opened(in_tmp):
    write(in_tmp / "recipes/bad.yaml", "name: t\nmodel: [smollm2\nfinetune:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"recipes/bad\.yaml:3: .*\(while parsing a flow sequence at line 2\)"):
        load_yaml("recipes/bad.yaml")


def test_load_yaml_tab_indent_hint(in_tmp):
    write(in_tmp / "recipes/tab.yaml", "name: t\nfinetune:\n\tepochs: 1\n")
    with pytest.raises(ConfigError, match=r"recipes/tab\.yaml:3: .*indent with spaces, not tabs"):
        load_yaml("recipes/tab.yaml")


def test_load_yaml_duplicate_key(in_tmp):
    write(in_tmp / "recipes/dup.yaml", "name: t\nmodel: a\nfinetune:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"recipes/dup\.yaml:5: .*duplicate key 'epochs' \(first defined at line 4\)"):
        load_yaml("recipes/dup.yaml")


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list"), ("hello\n", "a string"), ("", "empty")])
def test_load_yaml_top_level_must_be_mapping(in_tmp, text, kind):
    write(in_tmp / "recipes/x.yaml", text)
    with pytest.raises(ConfigError, match=rf"recipes/x\.yaml: .*{kind}"):
        load_yaml("recipes/x.yaml")


# --------------------------------------------------------------------------- recipe validation


def test_minimal_recipe_loads_with_defaults(in_tmp):
    recipe = load_recipe(write(in_tmp / "recipes/t.yaml", MINIMAL))
    assert isinstance(recipe, Recipe)
    assert recipe.finetune.method == "lora" and recipe.validate_.devices == ["host"]


def test_misspelled_key_names_path_and_suggests(in_tmp):
    write(in_tmp / "recipes/q.yaml", MINIMAL + "finetune:\n  lerning_rate: 0.1\n")
    (line,) = errors_of("recipes/q.yaml")
    assert line.startswith("recipes/q.yaml: finetune.lerning_rate: unknown key; did you mean 'learning_rate'?")
    assert "(valid keys: method, objective, epochs," in line


def test_export_budgets_must_name_an_extra_preset(in_tmp):
    write(in_tmp / "recipes/q.yaml", MINIMAL + "export:\n  extra: [litert-int8-full]\n  budgets:\n"
                                              "    litert-int8-ful: {accuracy: {max_degradation: 0.03}}\n")
    (line,) = errors_of("recipes/q.yaml")
    assert line.startswith("recipes/q.yaml: export: export.budgets has 'litert-int8-ful', not in export.extra "
                           "(litert-int8-full)"), line
    write(in_tmp / "recipes/r.yaml", MINIMAL + "export:\n  extra: [litert-int8-full]\n  budgets:\n"
                                              "    litert-int8-full: {accuracy: {max_degradation: 0.03}}\n")
    assert load_recipe(in_tmp / "recipes/r.yaml").export.budgets["litert-int8-full"].accuracy.max_degradation == 0.03


def test_valid_keys_use_aliases(in_tmp):
    write(in_tmp / "recipes/q.yaml", MINIMAL + "validat:\n  devices: [host]\n")
    (line,) = errors_of("recipes/q.yaml")
    assert "validat: unknown key; did you mean 'validate'?" in line
    assert "validate_" not in line


def test_key_in_wrong_section_says_where_it_belongs(in_tmp):
    write(in_tmp / "recipes/q.yaml", MINIMAL + "batch_size: 4\n")
    (line,) = errors_of("recipes/q.yaml")
    assert "recipes/q.yaml: batch_size: unknown key here; it belongs under finetune.batch_size" in line


def test_list_index_in_path(in_tmp):
    write(
        in_tmp / "recipes/q.yaml",
        MINIMAL + "quantize:\n  - {name: int8, scheme: int8-dynamic}\n  - {name: int4, shceme: int4-rtn}\n",
    )
    lines = errors_of("recipes/q.yaml")
    assert lines == [
        "recipes/q.yaml: quantize.1.shceme: unknown key; did you mean 'scheme'? (valid keys: name, scheme, options, max_ppl_increase_pct, max_accuracy_drop, budgets)"
    ]


def test_most_actionable_line_first_and_one_line_per_problem(in_tmp):
    write(
        in_tmp / "recipes/q.yaml",
        "name: t\nfinetune:\n  epochs: 0\n  batch_szie: 4\ndata:\n  metric: acc\n",
    )
    lines = errors_of("recipes/q.yaml")
    assert lines[0].startswith("recipes/q.yaml: finetune.batch_szie: unknown key; did you mean 'batch_size'?")
    assert "recipes/q.yaml: data.metric: 'acc' is not a valid choice; valid choices: exact_match" in lines
    assert "recipes/q.yaml: model: required key missing" in lines
    assert "recipes/q.yaml: finetune.epochs: Input should be greater than 0 (got 0)" in lines
    assert len(lines) == 4


def test_section_of_wrong_type(in_tmp):
    write(in_tmp / "recipes/q.yaml", MINIMAL + "finetune: 3\nexport:\n")
    lines = errors_of("recipes/q.yaml")
    assert "recipes/q.yaml: finetune: expected a mapping with keys method, objective," in lines[0] + lines[1]
    assert any(line.startswith("recipes/q.yaml: export: expected a mapping") and "(got null)" in line for line in lines)


def test_union_errors_collapse_to_one_line(in_tmp):
    write(in_tmp / "recipes/q.yaml", MINIMAL + "finetune:\n  lora:\n    target_modules: 5\n")
    (line,) = errors_of("recipes/q.yaml")
    assert line.startswith("recipes/q.yaml: finetune.lora.target_modules: ")
    assert "valid string" in line and "valid list" in line and line.endswith("(got 5)")


def test_recipe_by_bare_name(in_tmp):
    write(in_tmp / "recipes/demo.yaml", MINIMAL)
    assert load_recipe("demo").name == "t"
    with pytest.raises(ConfigError, match=r"unknown recipe 'dem' \(did you mean 'demo'\?\); valid choices: demo"):
        load_recipe("dem")
    write(in_tmp / "recipes/bad.yaml", MINIMAL + "modle: x\n")
    assert errors_of("bad")[0].startswith("recipes/bad.yaml: modle: unknown key")


def test_message_uses_path_as_given(in_tmp):
    write(in_tmp / "sub/r.yaml", MINIMAL + "modle: x\n")
    lines = errors_of(in_tmp / "sub" / "r.yaml")
    assert lines[0].startswith(f"{in_tmp / 'sub' / 'r.yaml'}: modle: unknown key")


# --------------------------------------------------------------------------- --set overrides


def test_overrides_set_nested_values_and_types():
    data = {"name": "t", "quantize": [{"name": "a", "scheme": "int8"}]}
    apply_overrides(
        data,
        ["finetune.epochs=3", "quantize.0.scheme=int4-rtn", "validate.devices=[pi5, host]", "name=x=y", "finetune.early_stopping=null"],
        "r.yaml",
    )
    assert data["finetune"] == {"epochs": 3, "early_stopping": None}
    assert data["quantize"][0]["scheme"] == "int4-rtn"
    assert data["validate"]["devices"] == ["pi5", "host"]
    assert data["name"] == "x=y"


def test_overrides_apply_before_validation(in_tmp):
    write(in_tmp / "recipes/t.yaml", MINIMAL + "quantize:\n  - {name: q, scheme: int8-dynamic}\n")
    recipe = load_recipe("recipes/t.yaml", ["finetune.learning_rate=1e-4", "quantize.0.scheme=int4-rtn", "validate.devices=[pi5]"])
    assert recipe.finetune.learning_rate == 1e-4
    assert recipe.quantize[0].scheme == "int4-rtn"
    assert recipe.validate_.devices == ["pi5"]


def test_override_without_equals_explains_syntax():
    with pytest.raises(ConfigError, match=r"r\.yaml: --set 'finetune\.epochs': missing '='; use --set KEY\.PATH=VALUE"):
        apply_overrides({}, ["finetune.epochs"], "r.yaml")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("quantize.3.scheme=x", r"quantize\.3: index out of range \(valid indexes: 0\.\.0\)"),
        ("quantize.first.scheme=x", r"quantize is a list; use a number"),
        ("name.x=1", r"cannot set name\.x: name is a string"),
        ("finetune..epochs=1", r"empty key path component"),
        ("name=[unclosed", r"value is not valid YAML"),
    ],
)
def test_override_errors_are_clear(override, expected):
    data = {"name": "t", "quantize": [{"name": "a", "scheme": "b"}]}
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(data, [override], "r.yaml")


def test_bad_override_value_is_attributed_to_set(in_tmp):
    write(in_tmp / "recipes/t.yaml", MINIMAL)
    lines = errors_of("recipes/t.yaml", ["finetune.lerning_rate=3", "finetune.epochs=-2"])
    assert lines[0] == (
        "recipes/t.yaml: finetune.lerning_rate: unknown key; did you mean 'learning_rate'? (valid keys: "
        + lines[0].split("(valid keys: ")[1].split(")")[0]
        + ") [from --set finetune.lerning_rate=3]"
    )
    assert lines[1].endswith("(got -2) [from --set finetune.epochs=-2]")


# --------------------------------------------------------------------------- folders and recipe checks


def test_resource_layers_user_folder_over_shipped(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "devices").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    (cwd / "export").mkdir(parents=True)
    monkeypatch.setenv("EDGEFT_HOME", str(home))
    monkeypatch.chdir(cwd)
    assert resource_layers("devices") == [("user", home / "devices"), ("shipped", REPO / "devices")]
    # EDGEFT_HOME set: the working directory's folders are not read
    assert resource_layers("export") == [("shipped", REPO / "export")]
    monkeypatch.delenv("EDGEFT_HOME")
    assert resource_layers("export") == [("user", cwd / "export"), ("shipped", REPO / "export")]
    assert resource_layers("recipes") == [("shipped", REPO / "recipes")]  # the checkout next to the package
    with pytest.raises(ConfigError, match="unknown resource folder 'device'"):
        resource_layers("device")


def test_validate_recipes_reports_per_file(in_tmp):
    folder = in_tmp / "recipes"
    write(folder / "good.yaml", MINIMAL + "validate:\n  devices: [host, pi5]\n  require: [pi5]\n")
    write(folder / "typo.yaml", MINIMAL + "finetune:\n  epochz: 1\n")
    write(folder / "refs.yaml", MINIMAL + "validate:\n  devices: [host, pi6]\n  require: [edge-tpu]\nexport:\n  preset: onnx\n")
    write(folder / "notes.txt", "not a recipe")
    results = dict(validate_recipes(folder))
    assert set(results) == {folder / "good.yaml", folder / "typo.yaml", folder / "refs.yaml"}
    assert results[folder / "good.yaml"] is None
    assert "finetune.epochz: unknown key; did you mean 'epochs'?" in results[folder / "typo.yaml"]
    refs = results[folder / "refs.yaml"]
    assert "validate.devices.1: unknown device 'pi6' (did you mean 'pi5'?); valid choices: edge-tpu, host, jetson-orin-nano, mcu, phone-cpu, phone-npu, pi5" in refs
    assert "validate.require.0: 'edge-tpu' is not in validate.devices" in refs
    assert "export.preset: unknown export preset 'onnx' (did you mean 'onnx-kv'?)" in refs
    assert all(line.startswith(str(folder / "refs.yaml")) for line in refs.splitlines())


def test_validate_recipes_checks_data_files_and_duplicates(in_tmp):
    recipe = write(
        in_tmp / "recipes/files.yaml",
        MINIMAL
        + "data:\n  files: {train: data/train.jsonl, eval: data/eval.jsonl}\n"
        + "quantize:\n  - {name: q, scheme: int8-dynamic}\n  - {name: q, scheme: int4-rtn}\n",
    )
    write(in_tmp / "recipes/data/train.jsonl", '{"prompt": "a", "response": "b"}\n')
    ((path, error),) = validate_recipes(recipe)
    assert path == recipe
    assert "data.files.eval: file not found" in error and "data.files.train" not in error
    assert "quantize.1.name: duplicate artifact name 'q' (also quantize.0.name)" in error


def test_validate_recipes_missing_path(in_tmp):
    with pytest.raises(ConfigError, match="nope: file not found"):
        validate_recipes(in_tmp / "nope")
    (in_tmp / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no \*\.yaml recipes"):
        validate_recipes(in_tmp / "empty")


def test_shipped_recipes_validate(monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(REPO)
    if not any((REPO / "recipes").glob("*.yaml")):
        pytest.skip("no recipes shipped yet")
    problems = [error for _, error in validate_recipes(REPO / "recipes") if error]
    if not (REPO.parent / "shared" / "data").is_dir():  # recipes on ../shared/data cannot find it here
        problems = [e for e in problems if "/shared/data/" not in e]
    assert not problems, "\n".join(problems)


def test_shipped_devices_resolve_from_tmp_cwd(in_tmp):
    # no devices/ in the tmp cwd: only the checkout's folder is read
    assert user_dir("devices") is None and shipped_dir("devices") == REPO / "devices"
    assert resource_layers("devices") == [("shipped", REPO / "devices")]
    assert resource_layers("recipes") == [("user", in_tmp / "recipes"), ("shipped", REPO / "recipes")]
    # run from the checkout, its folders are the shipped ones, read once
    shutil.rmtree(in_tmp / "recipes")
    import os

    os.chdir(REPO)
    assert resource_layers("recipes") == [("shipped", REPO / "recipes")]
