"""edgeft.artifacts: the artifact description (artifact.json), its one size, and the one decision of a model's kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.artifacts import (ARTIFACT_FILE, KINDS, Artifact, describe, kind_of_task, model_kind,
                              refresh, report_fields, size_of, weight_files, write)
from edgeft.errors import ModelSourceError, StageError


def _onnx_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"g" * 100)
    (root / "model.onnx_data").write_bytes(b"w" * 1000)
    (root / "tokenizer.json").write_text("{}")
    (root / "export_report.json").write_text("{}")
    (root / ".model.onnx.tmp").write_bytes(b"x" * 7)  # work in progress of a writer: not part of the artifact
    return root


def test_round_trip(tmp_path):
    folder = _onnx_folder(tmp_path / "onnx")
    a = write(folder, name="onnx-fp32", kind="causal-lm", format="onnx", stage="export", producer="onnx-kv",
              options={"opset": 18})
    assert a.files == ["export_report.json", "model.onnx", "model.onnx_data", "tokenizer.json"]
    assert a.weights == ["model.onnx", "model.onnx_data"] and a.main_file == "model.onnx"
    assert a.size_bytes == 1100 == size_of(folder, "onnx")
    assert (a.runtime, a.opens, a.load_path(folder)) == ("onnx", "folder", folder)
    assert Artifact.load(folder) == a
    saved = json.loads((folder / ARTIFACT_FILE).read_text())
    assert saved["schema_version"] == 1 and saved["precision"] == "fp32" and saved["int8_mode"] is None
    # a description written again does not list itself
    assert ARTIFACT_FILE not in write(folder, **{k: saved[k] for k in ("name", "kind", "format", "stage",
                                                                         "producer")}).files


def test_options_are_stored_as_json_values(tmp_path):
    from edgeft.config.options import Options

    folder = _onnx_folder(tmp_path / "q")

    def probe(lm) -> float:
        return 0.0

    class Opts(Options):
        block_size: int = 32
        metric: object = None
        where: object = None

    a = write(folder, name="auto", kind="causal-lm", format="onnx", stage="quantize", producer="auto",
              options=Opts(metric=probe, where=tmp_path))
    assert a.options == {"block_size": 32, "where": str(tmp_path),
                         "metric": "<function test_options_are_stored_as_json_values.<locals>.probe>"}
    assert Artifact.load(folder).options == a.options


def test_genai_runs_on_the_onnx_runtime_and_gguf_is_its_file(tmp_path):
    folder = _onnx_folder(tmp_path / "genai")
    g = describe(folder, name="genai-int4", kind="causal-lm", format="genai", stage="export", producer="genai-int4",
                 precision="int4", int8_mode=None)
    assert (g.format, g.runtime, g.precision) == ("genai", "onnx", "int4")
    q = tmp_path / "gguf"
    q.mkdir()
    (q / "model-q8_0.gguf").write_bytes(b"q" * 64)
    (q / "tokenizer.json").write_text("{}")  # beside the file for other tools; the .gguf carries its tokenizer
    a = describe(q, name="gguf-q8_0", kind="causal-lm", format="gguf", stage="export", producer="gguf-q8_0",
                 precision="int8", int8_mode="weight-only")
    assert a.files == a.weights == ["model-q8_0.gguf"] and a.opens == "main_file"
    assert a.load_path(q) == q / "model-q8_0.gguf" and a.size_bytes == 64 == size_of(q / "model-q8_0.gguf", "gguf")


def test_size_of_counts_the_weights_of_each_format(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"t" * 10)
    (tmp_path / "embeddings.safetensors").write_bytes(b"e" * 5)
    (tmp_path / "model.pt").write_bytes(b"p" * 3)
    (tmp_path / "model.ptl").write_bytes(b"l" * 2)
    (tmp_path / "config.json").write_text("{}")
    assert size_of(tmp_path, "tflite") == 15 and size_of(tmp_path, "torchscript") == 5
    assert size_of(tmp_path, "pytorch") == 5  # embeddings.safetensors counts as weights of an HF folder
    assert weight_files(tmp_path, "pte") == [] and size_of(tmp_path, "pte") == 0
    with pytest.raises(ValueError, match="unknown artifact format 'onnxx'"):
        size_of(tmp_path, "onnxx")


def test_refresh_rereads_files_that_changed(tmp_path):
    folder = _onnx_folder(tmp_path / "q")
    write(folder, name="int8", kind="classifier", format="onnx", stage="quantize", producer="int8-static",
          precision="int8", int8_mode="static")
    (folder / "model.onnx_data").unlink()
    a = refresh(folder)
    assert a.size_bytes == 100 and "model.onnx_data" not in a.files and a.int8_mode == "static"
    assert Artifact.load(folder) == a


def test_missing_description_names_the_stage_to_rerun(tmp_path):
    with pytest.raises(StageError) as ei:
        Artifact.load(tmp_path / "export", "export")
    msg = str(ei.value)
    assert "\n" not in msg and f"{tmp_path / 'export' / ARTIFACT_FILE}: missing" in msg
    assert "`edgeft run RECIPE --from export`" in msg


@pytest.mark.parametrize("change,field", [
    ({"precision": "int3"}, "precision"),
    ({"kind": "decoder"}, "kind"),
    ({"colour": "red"}, "colour"),
    ({"files": ["../model.onnx"]}, "files"),
    ({"main_file": "other.onnx"}, "(top level)"),
])
def test_invalid_description_is_one_line_naming_file_and_field(tmp_path, change, field):
    folder = _onnx_folder(tmp_path / "onnx")
    write(folder, name="onnx-fp32", kind="causal-lm", format="onnx", stage="export", producer="onnx-kv")
    data = {**json.loads((folder / ARTIFACT_FILE).read_text()), **change}
    (folder / ARTIFACT_FILE).write_text(json.dumps(data))
    with pytest.raises(StageError) as ei:
        Artifact.load(folder)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{folder / ARTIFACT_FILE}: {field}"), msg


def test_unreadable_description(tmp_path):
    (tmp_path / ARTIFACT_FILE).write_text("{not json")
    with pytest.raises(StageError, match=r"artifact.json: unreadable"):
        Artifact.load(tmp_path)


def test_describe_without_the_model_file_fails_in_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(StageError, match=r"no pte model file here \(looked for model.pte, \*.pte\)"):
        describe(tmp_path, name="x", kind="causal-lm", format="pte", stage="export", producer="executorch-fp32")


@pytest.mark.parametrize("config,kind", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "causal-lm"),
    ({"model_type": "qwen2"}, "causal-lm"),  # a decoder config without architectures
    ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, "classifier"),
    ({"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}, "classifier"),
    ({"architectures": ["BertModel"], "model_type": "bert"}, "encoder"),
    ({"architectures": ["ViTForImageClassification"], "model_type": "vit"}, "image-classifier"),
    ({"architectures": ["EfficientNetLite"], "model_type": "efficientnet-lite"}, "image-classifier"),
])
def test_model_kind_from_config_and_folder(tmp_path, config, kind):
    assert model_kind(config) == kind
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_kind(tmp_path) == kind == model_kind(str(tmp_path))


def test_image_model_types_include_edgefts_own():
    from edgeft.artifacts import IMAGE_MODEL_TYPES
    from edgeft.models.vision import MODEL_TYPE

    assert MODEL_TYPE in IMAGE_MODEL_TYPES


def test_model_kind_of_a_folder(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        model_kind(tmp_path)
    assert model_kind(tmp_path, default="causal-lm") == "causal-lm"
    (tmp_path / "model.onnx").write_bytes(b"g")  # an export folder without config.json: its description answers
    write(tmp_path, name="onnx-fp32", kind="image-classifier", format="onnx", stage="export", producer="onnx-image")
    assert model_kind(tmp_path) == "image-classifier"


@pytest.mark.parametrize("inputs,output,dims,kind", [
    (["pixel_values"], "logits", 2, "image-classifier"),
    (["input_ids", "past_key_values.0.key"], "logits", 3, "causal-lm"),
    (["input_ids"], "logits", 3, "causal-lm"),  # no KV cache: [batch, seq, vocab] logits
    (["input_ids", "attention_mask"], "logits", 2, "classifier"),
    (["input_ids", "attention_mask"], "last_hidden_state", 3, "encoder"),
])
def test_model_kind_of_a_graph_exported_elsewhere(tmp_path, inputs, output, dims, kind):
    """A folder with an ONNX graph and neither config.json nor artifact.json: the graph's inputs and outputs say."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1] * 2) for n in inputs]
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, [1] * dims)
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0]], [output])], "g", ins, [out])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    assert model_kind(tmp_path) == kind


def test_model_kind_of_a_transformers_config():
    from transformers import BertConfig

    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    cfg.architectures = ["BertForSequenceClassification"]
    assert model_kind(cfg) == "classifier"


@pytest.mark.parametrize("kind", KINDS)
def test_report_fields_round_trip(kind):
    from edgeft.validate.report import ValidationReport

    report = ValidationReport.parse({"schema_version": 1, "recipe": "r", "reference": "merged", "passed": True,
                                     **report_fields(kind)})
    assert report.variant == kind


def test_objective_tasks_map_to_kinds():
    import edgeft.finetune  # noqa: F401 - registers the objectives
    from edgeft.finetune.registry import OBJECTIVES, TASKS

    assert {kind_of_task(t) for t in TASKS} <= set(KINDS)
    assert kind_of_task(OBJECTIVES.get("classify").task) == "classifier"
    assert kind_of_task(OBJECTIVES.get("sft").task) == "causal-lm"


def test_a_run_from_before_artifact_descriptions_fails_naming_the_stage(tiny_lm_dir, tmp_path):
    """An old run folder (stages finished before artifact.json existed): validate and package refuse in one line,
    naming the first stage without a description and the --from that re-runs it."""
    from conftest import tiny_recipe_dict, write_recipe
    from edgeft.pipeline.run import Pipeline
    from edgeft.recipe import load_recipe

    d = tiny_recipe_dict(tiny_lm_dir, "old-run")
    d["validate"]["include_base"] = False
    path = write_recipe(tmp_path / "old.yaml", d)
    p = Pipeline(load_recipe(path), path, tmp_path / "runs")
    merge, export = p.run.stage_dir("merge"), p.run.stage_dir("export")
    for folder, weights in ((merge, "model.safetensors"), (export, "model.onnx")):
        folder.mkdir(parents=True)
        (folder / weights).write_bytes(b"w" * 8)
        (folder / "config.json").write_text((tiny_lm_dir / "config.json").read_text())
    with pytest.raises(StageError) as ei:
        p.artifacts()
    assert "the merge stage" in str(ei.value) and "--from merge" in str(ei.value)
    write(merge, name="merged", kind="causal-lm", format="pytorch", stage="merge", producer="lora")
    with pytest.raises(StageError) as ei:
        p.artifacts()
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{export / ARTIFACT_FILE}: missing")
    assert "the export stage" in msg and "`edgeft run RECIPE --from export`" in msg
