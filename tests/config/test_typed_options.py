"""Typed options of quantize schemes and exporters, checked when a recipe or preset loads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.config.loader import list_presets, preset_names
from edgeft.recipe import load_preset, load_recipe
from edgeft.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
HEAD = "name: t\nmodel: smollm2-135m\n"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """cwd = tmp_path (messages show relative paths); devices/ and export/ come from the checkout."""
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    return tmp_path


def recipe(folder: Path, body: str, name: str = "x.yaml") -> str:
    (folder / "recipes" / name).write_text(HEAD + body)
    return f"recipes/{name}"


def validate_cli(path: str) -> tuple[int, list[str]]:
    res = CliRunner().invoke(cli, ["recipes", "validate", path])
    text = res.stderr if res.stderr else res.output
    return res.exit_code, [line.removeprefix("FAIL ") for line in text.splitlines()]


def test_unknown_scheme_fails_recipes_validate_with_did_you_mean(in_tmp):
    path = recipe(in_tmp, "quantize:\n  - {name: q, scheme: int8-dynamic}\n  - {name: a, scheme: int4-rtnn}\n")
    code, lines = validate_cli(path)
    assert code == 2
    assert lines[0].startswith("recipes/x.yaml: quantize.1.scheme: unknown quantize scheme 'int4-rtnn' "
                               "(did you mean 'int4-rtn'?); valid choices: ")
    assert "int8-static" in lines[0]


def test_unknown_option_names_the_key_and_suggests(in_tmp):
    path = recipe(in_tmp, "quantize:\n  - {name: q, scheme: int8-dynamic}\n"
                          "  - {name: a, scheme: int4-rtn, options: {block_sise: 32}}\n")
    code, lines = validate_cli(path)
    assert code == 2
    assert lines == ["recipes/x.yaml: quantize.1.options.block_sise: unknown option for scheme int4-rtn; "
                     "did you mean 'block_size'? (valid options: block_size, symmetric, accuracy_level, "
                     "nodes_to_exclude, lm_head, embeddings)"]


@pytest.mark.parametrize("scheme, option, value, expect", [
    ("int4-rtn", "block_size", '"big"', "'big' is not a valid choice; valid choices: 16, 32, 64, 128, 256"),
    ("int4-gptq", "damp", '"lots"', "Input should be a valid number"),
    ("int4-gptq", "damp", "2.0", "Input should be less than 1 (got 2.0)"),
    ("int8-static", "calibrate_method", "kl", "'kl' is not a valid choice; valid choices: minmax, entropy"),
    ("auto", "candidates", "[int3/b32]", "candidate 'int3/b32': expected intN/bB"),
    ("bnb-nf4", "keep_fp32", "lm_head", "Input should be a valid list"),
])
def test_ill_typed_option_names_the_key(in_tmp, scheme, option, value, expect):
    path = recipe(in_tmp, f"quantize:\n  - name: a\n    scheme: {scheme}\n    options:\n      {option}: {value}\n")
    code, lines = validate_cli(path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"recipes/x.yaml: quantize.0.options.{option}: ") and expect in lines[0], lines


def test_option_rules_across_fields(in_tmp):
    path = recipe(in_tmp, "quantize:\n  - {name: a, scheme: auto, options: {fill_size: true}}\n")
    with pytest.raises(ConfigError, match=r"^recipes/x\.yaml: quantize\.0\.options: fill_size needs max_size_mb"):
        load_recipe(path)


def test_unknown_preset_in_export_extra_fails(in_tmp):
    path = recipe(in_tmp, "export:\n  extra: [gguf-q4_0, genai-in4]\n")
    code, lines = validate_cli(path)
    assert code == 2
    assert lines[0].startswith("recipes/x.yaml: export.extra.1: unknown export preset 'genai-in4' "
                               "(did you mean 'genai-int4'?); valid choices: ")


def test_bad_option_from_set_says_so(in_tmp):
    path = recipe(in_tmp, "quantize:\n  - {name: a, scheme: int4-rtn}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path, ["quantize.0.options.block_size=33"])
    assert str(e.value).startswith("recipes/x.yaml: quantize.0.options.block_size: 33 is not a valid choice")
    assert str(e.value).endswith("[from --set quantize.0.options.block_size=33]")


def test_run_dry_run_fails_before_anything_runs(in_tmp):
    path = recipe(in_tmp, "quantize:\n  - {name: a, scheme: int4-rtn, options: {block_sise: 32}}\n")
    res = CliRunner().invoke(cli, ["run", path, "--dry-run", "--runs", str(in_tmp / "runs")])
    assert isinstance(res.exception, ConfigError), res.output
    assert str(res.exception).startswith("recipes/x.yaml: quantize.0.options.block_sise: unknown option for scheme "
                                         "int4-rtn; did you mean 'block_size'?")
    assert not (in_tmp / "runs").exists()
    assert "would run" not in res.output


@pytest.mark.parametrize("command", ["finetune", "validate", "package"])
def test_stage_commands_get_the_same_checks(in_tmp, command):
    path = recipe(in_tmp, "quantize:\n  - {name: a, scheme: int4-rtnn}\n")
    res = CliRunner().invoke(cli, [command, path, "--runs", str(in_tmp / "runs")])
    assert isinstance(res.exception, ConfigError) and "quantize.0.scheme" in str(res.exception)
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_validates(name, monkeypatch):
    monkeypatch.chdir(REPO)
    needs_shared = "shared/data/" in (REPO / "recipes" / f"{name}.yaml").read_text()
    if needs_shared and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip(f"recipes/{name}.yaml reads ../shared/data, which is not beside this checkout")
    code, lines = validate_cli(f"recipes/{name}.yaml")
    assert code == 0, lines


def test_every_shipped_preset_validates(monkeypatch):
    monkeypatch.chdir(REPO)
    assert [p.name for p in list_presets()] == preset_names() and len(preset_names()) >= 10


def test_preset_options_are_checked_when_the_preset_loads(tmp_path):
    bad = tmp_path / "genai-x.yaml"
    bad.write_text("name: genai-x\nformat: genai\nruntime: onnxruntime-genai\noptions:\n  precison: int4\n"
                   "  block_size: 48\n")
    with pytest.raises(ConfigError) as e:
        load_preset(bad)
    lines = str(e.value).splitlines()
    assert lines[0] == (f"{bad}: options.precison: unknown option for genai export; did you mean 'precision'? "
                        f"(valid options: {lines[0].split('(valid options: ')[1]}")
    assert lines[1].startswith(f"{bad}: options.block_size: 48 is not a valid choice")


def test_onnx_presets_take_no_options(tmp_path):
    bad = tmp_path / "onnx-x.yaml"
    bad.write_text("name: onnx-x\nformat: onnx\nruntime: onnxruntime\noptions: {max_cache_len: 8}\n")
    with pytest.raises(ConfigError, match=r"options\.max_cache_len: unknown option for onnx export \(valid options: "
                                          r"none\)"):
        load_preset(bad)


def test_recipe_naming_a_broken_preset_fails(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "export").mkdir(parents=True)
    (home / "export" / "gguf-x.yaml").write_text("name: gguf-x\nformat: gguf\nruntime: llama.cpp\n"
                                                 "options: {qtype: Q3_K}\n")
    (home / "export" / "onnx-kv.yaml").write_text((REPO / "export" / "onnx-kv.yaml").read_text())
    monkeypatch.setenv("EDGEFT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(HEAD + "export:\n  extra: [gguf-x]\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(tmp_path / "r.yaml")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'r.yaml'}: export.extra.0: preset 'gguf-x' is invalid: ")
    assert "home/export/gguf-x.yaml: options.qtype: 'Q3_K' is not a valid choice" in msg


def test_exporter_without_options_model_passes_options_through(monkeypatch, caplog):
    from edgeft.exporters import EXPORTERS

    monkeypatch.delitem(EXPORTERS._options, "gguf")
    with caplog.at_level(logging.DEBUG, logger="edgeft.exporters"):
        p = load_preset("gguf-q4_0")
    assert p.options["qtype"] == "Q4_0"
    assert "registers no options model; options passed through unchecked" in caplog.text


def test_options_models_are_registered_next_to_their_code():
    from edgeft.config.options import Options
    from edgeft.exporters import EXPORTERS
    from edgeft.quantize import SCHEMES

    for name in SCHEMES.names():
        model = SCHEMES.get(name).options_model
        assert issubclass(model, Options) and model.model_config["extra"] == "forbid", name
        assert all(f.description for f in model.model_fields.values()), name
    for fmt in ("onnx", "genai", "gguf", "torchscript", "pte", "tflite"):
        model = EXPORTERS.options_of(fmt)
        assert issubclass(model, Options) and all(f.description for f in model.model_fields.values()), fmt
    assert SCHEMES.get("int4-rtn").options["block_size"][0] == 32  # (default, description) table from the model


def test_a_scheme_with_an_options_table_still_checks_names():
    from edgeft.quantize.registry import Scheme

    s = Scheme("demo", "a demo", "int8", "dynamic", lambda i, o, opts: {}, {"alpha": (1, "a knob")})
    assert s.options == {"alpha": (1, "a knob")}
    assert s.options_model().alpha == 1
    with pytest.raises(ConfigError, match="alhpa: unknown option"):
        s.options_model.of({"alhpa": 2})


def test_quantize_cli_bad_option_fails_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", "from edgeft.cli import main; main()", "quantize", str(tmp_path),
                          "--out", str(tmp_path / "q"), "--scheme", "int4-rtn", "--opt", "block_sise=32"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: --opt: block_sise: unknown option for scheme int4-rtn; did you mean "
                               "'block_size'?")
    assert not (tmp_path / "q").exists()


def test_recipes_schema_publishes_the_options_of_every_scheme():
    import json

    import yaml

    from edgeft.quantize import SCHEMES

    res = CliRunner().invoke(cli, ["recipes", "schema"], catch_exceptions=False)
    schema = json.loads(res.output)
    spec = schema["$defs"]["QuantizeSpec"]
    assert spec["properties"]["scheme"]["enum"] == SCHEMES.names()
    branch = {b["if"]["properties"]["scheme"]["const"]: b["then"]["properties"]["options"]["$ref"]
              for b in spec["allOf"]}
    assert sorted(branch) == SCHEMES.names()
    rtn = schema["$defs"][branch["int4-rtn"].split("/")[-1]]
    assert rtn["additionalProperties"] is False and rtn["properties"]["block_size"]["enum"] == [16, 32, 64, 128, 256]
    assert "task_metric" not in schema["$defs"][branch["auto"].split("/")[-1]]["properties"]  # Python API only
    for f in (REPO / "recipes").glob("*.yaml"):  # what the shipped recipes use is in the schema
        for q in yaml.safe_load(f.read_text()).get("quantize", []):
            props = schema["$defs"][branch[q["scheme"]].split("/")[-1]]["properties"]
            assert set(q.get("options", {})) <= set(props), (f.name, q)


def test_preset_schema_publishes_the_options_of_every_format(tmp_path):
    import json

    import yaml

    out = tmp_path / "preset.schema.json"
    res = CliRunner().invoke(cli, ["recipes", "schema", "--preset", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and out.is_file()
    schema = json.loads(out.read_text())
    branch = {b["if"]["properties"]["format"]["const"]: b["then"]["properties"]["options"]["$ref"].split("/")[-1]
              for b in schema["allOf"]}
    assert set(branch) == {"onnx", "genai", "gguf", "torchscript", "pte", "tflite"}
    for f in (REPO / "export").glob("*.yaml"):
        p = yaml.safe_load(f.read_text())
        assert set(p.get("options", {})) <= set(schema["$defs"][branch[p["format"]]].get("properties", {})), f.name
