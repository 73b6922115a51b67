"""Every shipped device profile and export preset loads, and a typo in one fails helpfully."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
    assert {"phone-cpu", "edge-tpu", "pi5", "host"} <= names
    assert "onnx-kv" in {f.stem for f in PRESET_FILES}


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
    assert {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear"} <= set(tpu.op_allowlist)


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
    assert host.compute.fp32_gflops == 69


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
    path.write_text(path.read_text().replace("class: edge", "class: edgee").replace("[onnx, torchscript]", "[onnx, tflite]"))
    with pytest.raises(ConfigError) as e:
        load_device("pi5")
    msg = str(e.value)
    assert "class: 'edgee' is not a valid choice (did you mean 'edge'?); valid choices: mobile, tpu, edge, host" in msg
    assert "formats.1: 'tflite' is not a valid choice" in msg
    assert "valid choices: onnx, torchscript, gguf, pytorch" in msg


def test_unknown_device_lists_choices(repo_cwd):
    with pytest.raises(ConfigError) as e:
        load_device("pi6")
    msg = str(e.value)
    assert msg.startswith("unknown device 'pi6' (did you mean 'pi5'?); valid choices: ")
    assert "edge-tpu, host, phone-cpu, pi5" in msg


def test_unknown_preset_lists_choices(repo_cwd):
    with pytest.raises(ConfigError, match=r"unknown export preset 'onnx-k'.*did you mean 'onnx-kv'.*valid choices: .*onnx-kv"):
        load_preset("onnx-k")


def test_name_must_match_file_name(home):
    shutil.copy(home / "devices" / "pi5.yaml", home / "devices" / "pi4.yaml")
    with pytest.raises(ConfigError, match=r"pi4\.yaml: name: 'pi5' does not match the file name; set 'name: pi4'"):
        load_device("pi4")


def test_edgeft_home_takes_precedence(home, tmp_path, monkeypatch):
    (home / "devices" / "host.yaml").unlink()
    monkeypatch.chdir(tmp_path)
    assert "host" not in device_names()
    with pytest.raises(ConfigError, match="unknown device 'host'"):
        load_device("host")
