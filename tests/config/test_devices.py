"""Every shipped device profile and export preset loads, and a typo in one fails helpfully."""

from __future__ import annotations

import re
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgeft.config import (
    DeviceProfile,
    ExportPreset,
    device_names,
    list_devices,
    list_presets,
    load_device,
    load_preset,
    preset_names,
)
from edgeft.cli import cli
from edgeft.config.profile_template import profile_template
from edgeft.config.profiles import EDIT_ME
from edgeft.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEVICE_FILES = sorted((REPO / "devices").glob("*.yaml"))
PRESET_FILES = sorted((REPO / "export").glob("*.yaml"))


@pytest.fixture
def repo_cwd(monkeypatch):
    monkeypatch.delenv("EDGEFT_HOME", raising=False)
    monkeypatch.chdir(REPO)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An EDGEFT_HOME holding copies of the shipped devices/ and export/."""
    shutil.copytree(REPO / "devices", tmp_path / "devices")
    shutil.copytree(REPO / "export", tmp_path / "export")
    monkeypatch.setenv("EDGEFT_HOME", str(tmp_path))
    return tmp_path


def test_required_profiles_are_shipped():
    names = {f.stem for f in DEVICE_FILES}
    assert {"phone-cpu", "phone-npu", "edge-tpu", "pi5", "jetson-orin-nano", "mcu", "host"} <= names
    assert "onnx-kv" in {f.stem for f in PRESET_FILES}


def test_every_file_in_devices_folder_is_a_loadable_profile(repo_cwd):
    """Nothing in devices/ is silently skipped: *.yaml files are profiles, the template is not one."""
    for path in sorted((REPO / "devices").iterdir()):
        if path.name == "TEMPLATE.yaml.example":
            continue
        assert path.suffix == ".yaml", f"{path.name}: not a profile (profiles are devices/<name>.yaml)"
        assert load_device(path.stem).name == path.stem
    assert "TEMPLATE" not in device_names()


def test_one_profile_per_device_class(repo_cwd):
    classes = {d.class_ for d in list_devices()}
    assert {"mobile", "tpu", "edge", "host"} <= classes


@pytest.mark.parametrize("path", DEVICE_FILES, ids=lambda p: p.stem)
def test_device_file_loads(path, repo_cwd):
    by_path = load_device(path)
    by_name = load_device(path.stem)
    assert isinstance(by_name, DeviceProfile)
    assert by_path == by_name
    assert by_name.name == path.stem
    assert by_name.source.strip() and by_name.description.strip()
    assert by_name.cpu.threads <= max(by_name.cpu.cores, by_name.cpu.threads)
    assert by_name.memory.model_budget_mb <= by_name.memory.total_mb
    # numbers not measured must say how they were estimated
    assert "estimate" in by_name.source or "measurement" in by_name.source
    # a profile started with `edgeft devices add` is not shipped before its placeholders are replaced
    assert EDIT_ME not in by_name.source and EDIT_ME not in by_name.description


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_preset_file_loads(path, repo_cwd):
    preset = load_preset(path.stem)
    assert isinstance(preset, ExportPreset)
    assert preset.name == path.stem
    assert load_preset(path) == preset


def test_list_devices_and_presets(repo_cwd):
    assert [d.name for d in list_devices()] == device_names() == sorted(f.stem for f in DEVICE_FILES)
    assert [p.name for p in list_presets()] == preset_names()


def test_edge_tpu_is_full_integer_static(repo_cwd):
    tpu = load_device("edge-tpu")
    assert tpu.class_ == "tpu"
    assert tpu.precisions == ["int8"] and tpu.int8_modes == ["full-integer"]
    assert tpu.static_shapes and tpu.onchip_param_mb == 8
    # a model larger than the on-chip memory still runs (weights stream), so storage is the hard limit
    assert tpu.max_model_mb is not None and tpu.max_model_mb > tpu.onchip_param_mb
    # the Edge TPU runs .tflite only; its op list is Coral's, in TFLite builtin op names
    assert tpu.formats == ["tflite"] and tpu.op_allowlist is None
    assert tpu.tflite.runtime == "edgetpu" and tpu.tflite.innermost_dims == 3
    ops = tpu.tflite.op_allowlist
    assert len(set(ops)) == len(ops), "duplicate op in the allow-list"
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE"} <= set(ops)
    assert not set(ops) & {"GATHER", "BATCH_MATMUL", "GELU", "DEQUANTIZE"}  # not on Coral's list
    assert "coral.ai/docs/edgetpu/models-intro" in tpu.source


def test_host_profile_has_no_budgets(repo_cwd):
    host = load_device("host")
    assert host.class_ == "host"
    assert host.budgets.model_dump() == {
        "ttft_ms": None,
        "decode_tok_s": None,
        "per_inference_ms": None,
        "ram_mb": None,
        "size_mb": None,
    }
    assert host.source.startswith("measurement")  # host numbers are measured, not datasheet estimates


def test_typo_in_copied_profile_names_file_and_key(home):
    path = home / "devices" / "pi5.yaml"
    path.write_text(path.read_text().replace("bandwidth_gbps:", "bandwith_gbps:"))
    with pytest.raises(ConfigError) as e:
        load_device("pi5")
    first = str(e.value).splitlines()[0]
    assert "pi5.yaml: memory.bandwith_gbps: unknown key; did you mean 'bandwidth_gbps'?" in first
    assert "valid keys: total_mb, model_budget_mb, bandwidth_gbps" in first
    # the consequent "required key missing" is the same problem, not a second line
    assert len(str(e.value).splitlines()) == 1


def test_bad_value_in_profile(home):
    path = home / "devices" / "pi5.yaml"
    text = path.read_text()
    assert "bandwidth_gbps: 10.0" in text
    path.write_text(text.replace("bandwidth_gbps: 10.0", "bandwidth_gbps: -1"))
    with pytest.raises(ConfigError, match=r"pi5\.yaml: memory\.bandwidth_gbps: Input should be greater than 0"):
        load_device("pi5")


def test_literal_error_lists_choices(home):
    path = home / "devices" / "pi5.yaml"
    path.write_text(path.read_text().replace("class: edge", "class: edgee").replace("[onnx, torchscript, tflite, pte]",
                                                                                           "[onnx, tflite-micro]"))
    with pytest.raises(ConfigError) as e:
        load_device("pi5")
    msg = str(e.value)
    assert "class: 'edgee' is not a valid choice (did you mean 'edge'?); valid choices: mobile, tpu, edge, host" in msg
    assert "formats.1: 'tflite-micro' is not a valid choice" in msg
    assert "valid choices: onnx, torchscript, gguf, pytorch, tflite, pte" in msg


def test_unknown_device_lists_choices(repo_cwd):
    with pytest.raises(ConfigError) as e:
        load_device("pi6")
    msg = str(e.value)
    assert msg.startswith("unknown device 'pi6' (did you mean 'pi5'?); valid choices: ")
    assert msg.endswith(", ".join(sorted(f.stem for f in DEVICE_FILES)))


def test_unknown_preset_lists_choices(repo_cwd):
    with pytest.raises(ConfigError, match=r"unknown export preset 'onnx-k'.*did you mean 'onnx-kv'.*valid choices: .*onnx-kv"):
        load_preset("onnx-k")


def test_name_must_match_file_name(home):
    shutil.copy(home / "devices" / "pi5.yaml", home / "devices" / "pi4.yaml")
    with pytest.raises(ConfigError, match=r"pi4\.yaml: name: 'pi5' does not match the file name; set 'name: pi4'"):
        load_device("pi4")


def test_edgeft_home_takes_precedence(home, tmp_path, monkeypatch):
    """EDGEFT_HOME's profiles override the shipped ones of the same name; the shipped ones fill the rest."""
    (home / "devices" / "host.yaml").unlink()
    path = home / "devices" / "pi5.yaml"
    path.write_text(path.read_text().replace("threads: 4", "threads: 3"))
    monkeypatch.chdir(tmp_path)
    assert load_device("pi5").cpu.threads == 3
    assert "host" in device_names() and load_device("host").class_ == "host"  # from the shipped profiles


# --------------------------------------------------------------------------- new profiles


def test_phone_npu_is_int8_qdq_static(repo_cwd):
    npu = load_device("phone-npu")
    assert npu.class_ == "mobile" and npu.formats == ["onnx", "tflite"]
    assert npu.precisions == ["int8"] and npu.int8_modes == ["static", "full-integer"]
    assert npu.static_shapes and npu.cpu.threads == 1
    ops = set(npu.op_allowlist)
    assert len(ops) == len(npu.op_allowlist), "duplicate op in the allow-list"
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm", "Softmax", "LayerNormalization", "Gather",
            "Reshape", "Transpose"} <= ops
    assert not ops & {"MatMulNBits", "DynamicQuantizeLinear", "Loop", "If"}  # not run by the QNN HTP backend
    assert "QNN" in npu.source and "x0.25" in npu.source


def test_jetson_profile(repo_cwd):
    jetson = load_device("jetson-orin-nano")
    assert jetson.class_ == "edge" and jetson.cpu.threads == jetson.cpu.cores == 6
    assert jetson.formats == ["onnx", "torchscript", "pytorch"]
    assert jetson.precisions == ["fp32", "fp16", "int8", "int4"]
    assert "68 GB/s" in jetson.source and "40 TOPS" in jetson.source


def _onnx_artifact(**kw) -> dict:
    art = {"name": "int8", "format": "onnx", "precision": "int8", "int8_mode": "full-integer",
           "size_bytes": 30 * 1024 * 1024, "est_ram_mb": 90.0, "onnx": None}
    art.update(kw)
    return art


def test_mcu_takes_full_integer_tflite_only(repo_cwd):
    from edgeft.validate.compat import check

    mcu = load_device("mcu")
    assert mcu.formats == ["tflite"] and mcu.precisions == ["int8"] and mcu.int8_modes == ["full-integer"]
    assert mcu.tflite.runtime == "tflite-micro" and mcu.static_shapes
    assert mcu.max_model_mb == 2 and mcu.memory.total_mb == 1 and mcu.budgets.ram_mb == 0.5
    assert "tflite micro interpreter" in mcu.description.lower()
    for fmt in ("onnx", "torchscript", "pytorch"):
        res = check(_onnx_artifact(format=fmt, size_bytes=512 * 1024, est_ram_mb=0.5), mcu)
        assert res["reasons"] == [f"format {fmt} is not supported on mcu (formats: tflite)"]
        assert res["suggestions"] == ["export with litert-int8-full (full-integer int8 .tflite; litert-image-int8 for an image model) for mcu"]


def test_phone_npu_rejects_weight_only_int8(repo_cwd):
    from edgeft.validate.compat import check

    res = check(_onnx_artifact(int8_mode="weight-only"), load_device("phone-npu"))
    assert not res["compatible"]
    assert any("int8 weight-only quantization" in r and "phone-npu" in r for r in res["reasons"])
    assert check(_onnx_artifact(int8_mode="static"), load_device("phone-npu"))["compatible"]


def test_docs_have_a_section_per_profile():
    text = (REPO / "docs" / "devices.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for path in DEVICE_FILES:
        assert any(f"`{path.stem}`" in h for h in headings), f"docs/devices.md has no section for {path.stem}"
    assert "## Projection vs measurement on host" in headings
    assert "edgeft devices add" in text


# --------------------------------------------------------------------------- template


def test_template_is_generated_from_the_schema():
    shipped = (REPO / "devices" / "TEMPLATE.yaml.example").read_text()
    assert shipped == profile_template(), (
        "devices/TEMPLATE.yaml.example is out of date: edgeft devices template > devices/TEMPLATE.yaml.example"
    )


def _model_in(annotation):
    """The pydantic model class of a field annotation (``X`` or ``Optional[X]``), else None."""
    from pydantic import BaseModel

    return next((a for a in (annotation, *typing.get_args(annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def test_template_documents_every_field_and_loads(tmp_path):
    text = profile_template()
    lines = text.splitlines()

    def check_documented(model_cls, indent=""):
        for attr, field in model_cls.model_fields.items():
            key = field.alias or attr
            # a set field, an unset optional field, or a field inside an unset optional section
            forms = (f"{indent}{key}:", f"{indent}# {key}:", f"# {indent}{key}:")
            at = next((i for i, line in enumerate(lines) if line.startswith(forms)), None)
            assert at is not None, f"{key}: not in the template"
            assert lines[at - 1].lstrip("# ").strip() and lines[at - 1].lstrip().startswith("#"), \
                f"{key}: no comment above it"
            inner = _model_in(field.annotation)
            if inner is not None:  # a section, or a name -> section mapping (one more key level)
                check_documented(inner, indent + ("    " if typing.get_origin(field.annotation) is dict else "  "))

    check_documented(DeviceProfile)
    assert "tflite-micro" in text and "pte" in text and "Required." in text and "Optional; default: null." in text
    # the template is a valid profile named my-board ...
    (tmp_path / "my-board.yaml").write_text(text)
    assert load_device(tmp_path / "my-board.yaml").name == "my-board"
    # ... and stays one with its commented-out optional fields enabled
    optional = ("op_allowlist|max_model_mb|onchip_param_mb|per_inference_ms|remote|ssh|python|port|tflite|runtime|"
                "innermost_dims")
    enabled = [re.sub(rf"^(\s*)# (\s*(?:{optional}):)", r"\1\2", line) for line in lines]
    (tmp_path / "my-board.yaml").write_text("\n".join(enabled) + "\n")
    full = load_device(tmp_path / "my-board.yaml")
    assert full.remote is not None and full.op_allowlist and full.budgets.per_inference_ms == 50
    assert full.max_model_mb and full.onchip_param_mb
    assert full.tflite.runtime == "edgetpu" and full.tflite.op_allowlist and full.tflite.innermost_dims == 3


# --------------------------------------------------------------------------- devices add


def _add(*args: str):
    return CliRunner().invoke(cli, ["devices", "add", *args])


def test_devices_add_copies_pi5_into_the_read_folder(home, monkeypatch):
    monkeypatch.chdir(home)
    res = _add("my-board")
    assert res.exit_code == 0, res.output
    path = home / "devices" / "my-board.yaml"
    new, pi5 = load_device("my-board"), load_device("pi5")
    assert new.name == "my-board" and new.source.startswith(EDIT_ME) and new.description.startswith(EDIT_ME)
    same = {"name", "description", "source"}
    assert new.model_dump(exclude=same) == pi5.model_dump(exclude=same)
    text = path.read_text()
    assert "# estimate: 8 GB minus OS" in text  # the numbers' comments are kept
    assert "Raspberry Pi 5" not in text  # the copied device's header, description and source are not
    assert "wrote devices/my-board.yaml (a copy of pi5" in res.output
    assert "next steps:" in res.output and "edgeft devices show my-board" in res.output
    assert "my-board" in device_names()


def test_devices_add_from_and_out(home, tmp_path):
    out = tmp_path / "elsewhere"
    res = _add("my-tpu", "--from", "edge-tpu", "--out", str(out))
    assert res.exit_code == 0, res.output
    new = load_device(out / "my-tpu.yaml")
    tpu = load_device("edge-tpu")
    assert new.op_allowlist == tpu.op_allowlist and new.int8_modes == ["full-integer"]
    assert "my-tpu" not in device_names()  # not the folder edgeft reads: the output says how to use it
    assert "move my-tpu.yaml there" in res.output


@pytest.mark.parametrize("name", ["My-Board", "my_board", "-board", "board-", "a--b", "pi 5", "", "../pi6"])
def test_devices_add_rejects_invalid_names(home, name):
    before = sorted(p.name for p in (home / "devices").iterdir())
    res = _add("--", name)
    assert isinstance(res.exception, ConfigError), res.output
    assert "invalid device name; use lowercase letters, digits and single dashes" in str(res.exception)
    assert sorted(p.name for p in (home / "devices").iterdir()) == before


def test_devices_add_rejects_a_taken_name(home, tmp_path):
    pi5 = (home / "devices" / "pi5.yaml").read_text()
    res = _add("pi5", "--from", "edge-tpu")
    assert isinstance(res.exception, ConfigError)
    assert "a device profile named 'pi5' already exists" in str(res.exception)
    assert (home / "devices" / "pi5.yaml").read_text() == pi5
    # a name edgeft already reads is taken even when writing to another folder
    res = _add("host", "--out", str(tmp_path / "elsewhere"))
    assert isinstance(res.exception, ConfigError) and "'host' already exists" in str(res.exception)
    assert not (tmp_path / "elsewhere" / "host.yaml").exists()


def test_devices_add_unknown_source_lists_choices(home):
    res = _add("my-board", "--from", "pi6")
    assert isinstance(res.exception, ConfigError)
    assert "unknown device 'pi6' (did you mean 'pi5'?)" in str(res.exception)
    assert not (home / "devices" / "my-board.yaml").exists()


def test_devices_add_removes_a_file_that_does_not_load(home, monkeypatch):
    import edgeft.config.profiles as profiles

    monkeypatch.setattr(profiles, "new_profile_text", lambda text, name, src: text.replace("threads: 4", "threads: 0"))
    res = _add("my-board")
    assert isinstance(res.exception, ConfigError)
    msg = str(res.exception)
    assert "the new profile does not load, so it was removed" in msg and "cpu.threads" in msg
    assert not (home / "devices" / "my-board.yaml").exists()


def test_devices_add_falls_back_to_a_dump_for_flow_style_yaml(home, tmp_path):
    src = tmp_path / "flow.yaml"
    data = load_device("pi5").model_dump(by_alias=True, exclude_none=True)
    data["name"] = "flow"
    src.write_text(yaml.safe_dump(data, default_flow_style=True))
    res = _add("my-flow", "--from", str(src))
    assert res.exit_code == 0, res.output
    new = load_device("my-flow")
    assert new.source.startswith(EDIT_ME) and new.memory == load_device("pi5").memory
