"""``edgeft.run`` end to end on the tiny recipe: stage records, report, bundle, skipping and reruns.

One full run is shared by the module. Tests that rerun stages work on a copy of its run folder,
so they do not depend on the order they run in.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import edgeft
from artifact_checks import check_run
from conftest import read_json
from edgeft.errors import VerifyError
from edgeft.pipeline.rundir import STAGES

pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean", "ignore:Exporting aten..index operator",
    "ignore:The given NumPy array is not writable", "ignore:mtime may not be reliable",
)

ARTIFACTS = ["base", "merged", "onnx-fp32", "int8", "int4"]
DEVICES = ["host", "phone-cpu", "edge-tpu"]
UPSTREAM = ["data", "finetune", "merge", "export"]
DOWNSTREAM = ["quantize", "validate", "package"]


@pytest.fixture(scope="module")
def first(tiny_recipe_module, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    res = edgeft.run(tiny_recipe_module, runs_root=runs)
    return res


@pytest.fixture
def clone(first, tmp_path) -> Path:
    """A private copy of the shared run's ``runs/`` folder (same recipe, same stage keys)."""
    runs = tmp_path / "runs"
    shutil.copytree(first.run_dir.parent, runs, symlinks=True)
    return runs


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".tmp-", ".old-")))


def test_every_stage_recorded_ok(first):
    assert first.skipped == []
    assert list(first.timings) == STAGES
    for stage in STAGES:
        rec = read_json(first.run_dir / stage / "stage.json")
        assert rec["status"] == "ok" and rec["stage"] == stage, rec
        assert re.fullmatch(r"[0-9a-f]{64}", rec["key"])
        assert rec["seconds"] >= 0 and "metrics" in rec and "edgeft" in rec
    assert _leftovers(first.run_dir) == []
    ft = read_json(first.run_dir / "finetune" / "stage.json")["metrics"]
    assert ft["steps"] == 3 and ft["eval_history"] and ft["base_model_source"].startswith("local folder")
    assert (first.run_dir / "recipe.yaml").is_file()


def test_report_lists_artifacts_and_devices(first):
    assert first.report is not None
    rep = first.report.to_dict()  # what report.json holds
    assert rep == read_json(first.run_dir / "validate" / "report.json")
    assert list(rep["artifacts"]) == ARTIFACTS
    assert list(rep["devices"]) == DEVICES
    assert rep["passed"] is True, rep["gates"]
    assert rep["artifacts"]["merged"]["role"] == "reference" and rep["artifacts"]["base"]["role"] == "base"
    for name in ARTIFACTS:
        acc = rep["artifacts"][name]["accuracy"]
        assert 0.0 <= acc["exact_match"] <= 1.0 and acc["perplexity"] > 1.0
        assert acc["perplexity_general"] > 1.0 and acc["perplexity_general"] != acc["perplexity"]
    assert rep["protocol"]["perplexity_general"]["windows"] == 2
    general_gates = [g for g in rep["gates"] if g["name"].startswith("perplexity_general")]
    assert {g["artifact"] for g in general_gates} == {"onnx-fp32", "int8", "int4"}
    for name in ("int8", "int4"):
        a = rep["artifacts"][name]
        assert a["size_bytes"] < rep["artifacts"]["onnx-fp32"]["size_bytes"]
        assert a["latency"]["decode_tok_s"] > 0
    assert rep["devices"]["host"]["required"] and rep["devices"]["host"]["passed"]
    assert set(rep["devices"]["host"]["deployable"]) == {"onnx-fp32", "int8", "int4"}
    tpu = rep["devices"]["edge-tpu"]
    assert tpu["required"] is False
    assert not tpu["results"]["int4"]["compatible"]
    # the Edge TPU runs full-integer .tflite only: an ONNX artifact is refused for its format, with the export fix
    assert tpu["results"]["int4"]["reasons"] == ["format onnx is not supported on edge-tpu (formats: tflite)"]
    assert any("litert-int8-edgetpu" in s for s in tpu["results"]["int4"]["suggestions"])


def test_bundle_verifies(first):
    from edgeft.release import verify

    assert first.bundle is not None and first.bundle.is_dir()
    assert first.tarball is not None and first.tarball.name == "tiny-0.0.1.tar.gz"
    res = verify(first.bundle)
    paths = {e["path"] for e in res.manifest["files"]}
    for name in ("onnx-fp32", "int8", "int4"):
        assert f"artifacts/{name}/model.onnx" in paths
    assert {"report.json", "recipe.yaml", "README.md", "tokenizer/tokenizer.json"} <= paths
    assert res.n_files == len(paths)
    assert verify(first.tarball).n_files == res.n_files


def test_stages_describe_their_artifacts_and_validate_and_package_read_them(first):
    """artifact.json beside each stage's output says what the report and the bundle say, and generate reads it."""
    from edgeft.artifacts import Artifact

    arts = check_run(first.run_dir, first.report, "causal-lm", first.bundle)
    assert set(arts) == {"merged", "onnx-fp32", "int8", "int4"}
    assert (arts["merged"].stage, arts["merged"].format, arts["merged"].producer) == ("merge", "pytorch", "lora")
    assert (arts["onnx-fp32"].stage, arts["onnx-fp32"].producer) == ("export", "onnx-kv")
    assert (arts["int8"].producer, arts["int8"].options["block_size"]) == ("int8-weight", 32)
    bundled = Artifact.load(first.bundle / "artifacts" / "int4")
    assert bundled == arts["int4"]
    out = edgeft.generate(first.bundle / "artifacts" / "int4", "set a timer for 5 minutes", max_new_tokens=4)
    assert isinstance(out, str)
    # export.drafts: the training answers' n-gram table travels with every ONNX artifact into the bundle,
    # and the runtime speculates with it by default
    from edgeft.runtime.lm import OrtLM

    for name in ("onnx-fp32", "int8", "int4"):
        assert "drafts.json" in arts[name].files, name
    assert "drafts.json" in bundled.files and OrtLM(first.bundle / "artifacts" / "int4").drafts is not None


def test_tampered_bundle_names_the_file(first, tmp_path):
    from edgeft.release import verify

    bundle = tmp_path / first.bundle.name
    shutil.copytree(first.bundle, bundle)
    target = bundle / "artifacts" / "int4" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(VerifyError) as ei:
        verify(bundle)
    msg = str(ei.value)
    assert "artifacts/int4/model.onnx: sha256 mismatch" in msg
    assert "1 problem" in msg, msg


def test_second_run_skips_every_stage(first, clone, tiny_recipe_module):
    res = edgeft.run(tiny_recipe_module, runs_root=clone)
    assert res.skipped == STAGES
    assert res.timings == {}
    assert res.report is not None and list(res.report.artifacts) == ARTIFACTS
    assert res.bundle == clone / "tiny" / "package" / first.bundle.name


def _keys(run_dir: Path) -> dict[str, str]:
    return {s: read_json(run_dir / s / "stage.json")["key"] for s in STAGES}


def test_from_quantize_reruns_quantize_to_package_only(first, clone, tiny_recipe_module):
    before = _keys(clone / "tiny")
    res = edgeft.run(tiny_recipe_module, runs_root=clone, from_stage="quantize")
    assert res.skipped == UPSTREAM
    assert list(res.timings) == DOWNSTREAM
    assert _keys(clone / "tiny") == before  # same parameters: same keys, only recomputed
    for s in STAGES:
        assert read_json(clone / "tiny" / s / "stage.json")["status"] == "ok"
    assert _leftovers(clone / "tiny") == []
    edgeft.verify(res.bundle)


def test_changed_quantize_option_reruns_quantize_and_later(first, clone, tiny_recipe_module):
    before = _keys(clone / "tiny")
    res = edgeft.run(tiny_recipe_module, ["quantize.1.options.block_size=16"], runs_root=clone)
    assert res.skipped == UPSTREAM
    assert list(res.timings) == DOWNSTREAM
    after = _keys(clone / "tiny")
    assert all(after[s] == before[s] for s in UPSTREAM)
    assert all(after[s] != before[s] for s in DOWNSTREAM)
    q = read_json(clone / "tiny" / "quantize" / "int4" / "quantize_report.json")
    assert q["options"]["block_size"] == 16
    assert read_json(clone / "tiny" / "quantize" / "int8" / "quantize_report.json")["options"]["block_size"] == 32
    edgeft.verify(res.bundle)


def test_failing_stage_leaves_no_temp_folder_and_keeps_old_output(first, clone, tiny_recipe_module, monkeypatch):
    from edgeft.pipeline.run import Pipeline

    run_dir = clone / "tiny"
    old_record = read_json(run_dir / "package" / "stage.json")
    bundle = run_dir / "package" / first.bundle.name

    def broken(self, tmp: Path) -> dict:
        (tmp / "half-written.bin").write_bytes(b"\0" * 1024)
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(Pipeline, "stage_package", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        edgeft.run(tiny_recipe_module, ["package.intended_use=changed"], runs_root=clone)
    assert _leftovers(run_dir) == []
    assert not list(run_dir.rglob("half-written.bin"))
    assert read_json(run_dir / "package" / "stage.json") == old_record
    edgeft.verify(bundle)
    statuses = {}
    edgeft.run(tiny_recipe_module, ["package.intended_use=changed"], runs_root=clone, dry_run=True,
               on_stage=lambda s, st: statuses.__setitem__(s, st))
    assert statuses == {**{s: "up to date (skip)" for s in STAGES[:-1]}, "package": "would run"}



def test_killed_run_resumes_fine_tuning_from_its_checkpoint(tiny_lm_dir, tmp_path, monkeypatch):
    """SIGKILL `edgeft run` once a fine-tuning checkpoint exists; the rerun keeps the data stage and
    resumes training from the checkpoint instead of starting over."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import tiny_recipe_dict, write_recipe

    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path / "cache"))
    data = tiny_recipe_dict(tiny_lm_dir, name="killme")
    data["data"]["generated"].update(n_train=64)
    data["finetune"].update(epochs=12, eval_examples=0, early_stopping=None)  # long enough to be killed
    recipe = write_recipe(tmp_path / "killme.yaml", data)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-c", "from edgeft.cli import main; main()", "-q", "run", str(recipe), "--runs", str(runs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ckpts = runs / "killme" / ".work" / "finetune" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any(ckpts.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    time.sleep(0.5)  # let the checkpoint finish writing; a half-written one must be skipped by the trainer anyway
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (runs / "killme" / "finetune" / "stage.json").exists()  # the stage never committed
    assert (runs / "killme" / "data" / "stage.json").exists()

    # Rerun with fewer epochs would change the key (and start over); the same recipe must resume.
    res = edgeft.run(recipe, runs_root=runs)
    assert "data" in res.skipped
    metrics = json.loads((runs / "killme" / "finetune" / "stage.json").read_text())["metrics"]
    assert metrics["resumed"] is True
    assert (res.bundle / "manifest.json").is_file()


def test_stage_commands_on_a_finished_run(first, clone, tiny_recipe_module, tmp_path):
    """The per-stage commands are thin wrappers: each runs on the outputs of the shared run."""
    import subprocess
    import sys

    def cli(*args):
        proc = subprocess.run([sys.executable, "-c", "from edgeft.cli import main; main()", "-q", *map(str, args)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    run_dir = clone / first.run_dir.name
    out = cli("merge", run_dir / "finetune" / "adapter", "--out", tmp_path / "merged",
              "--base", first.recipe.model)
    assert "max |logit diff|" in out and (tmp_path / "merged" / "model.safetensors").is_file()
    out = cli("export", tmp_path / "merged", "--out", tmp_path / "onnx")
    assert "prefill logits" in out and (tmp_path / "onnx" / "model.onnx").is_file()
    out = cli("quantize", tmp_path / "onnx", "--out", tmp_path / "int4", "--scheme", "int4-rtn", "--opt",
              "block_size=32")
    assert "int4-rtn:" in out and (tmp_path / "int4" / "model.onnx").is_file()
    cli("generate", tmp_path / "int4", "set a timer for 5 minutes", "--max-new-tokens", "4")  # exit 0 asserted
    out = cli("validate", tiny_recipe_module, "--runs", clone)
    assert "overall:" in out
    out = cli("package", tiny_recipe_module, "--runs", clone)
    assert "bundle:" in out


def test_failed_gate_exits_7_and_ships_nothing(first, clone, tiny_recipe_module):
    """A budget the artifacts cannot meet: report.json is written, the run exits 7, no new bundle."""
    import json
    import subprocess
    import sys

    run_dir = clone / first.run_dir.name
    proc = subprocess.run(
        [sys.executable, "-c", "from edgeft.cli import main; main()", "-q", "run", str(tiny_recipe_module), "--runs",
         str(clone), "--set", "validate.budgets.perplexity.percent_max_degradation=0", "--set",
         "validate.budgets.exact_match.threshold=1.01"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "gates failed" in proc.stderr and "report.json" in proc.stderr
    assert "overall: FAIL" in proc.stdout  # the table of what failed comes before the error line
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    assert report["passed"] is False
    assert any(not g["passed"] and g["name"] == "exact_match threshold" for g in report["gates"])
    # the package stage did not run for the failing validation: its record is still the old run's
    assert json.loads((run_dir / "package" / "stage.json").read_text())["finished_utc"] == json.loads(
        (first.run_dir / "package" / "stage.json").read_text())["finished_utc"]


def test_calibrated_scheme_draws_calibration_from_the_training_split(first, clone, tiny_recipe_module):
    import json

    res = edgeft.run(tiny_recipe_module, ["quantize.0.scheme=int8-static", "quantize.0.options={}"], runs_root=clone)
    assert {"data", "finetune", "merge", "export"} <= set(res.skipped)
    q = json.loads((res.run_dir / "quantize" / "stage.json").read_text())["metrics"]["int8"]
    assert q["scheme"] == "int8-static" and q["int8_mode"] == "static"
    assert q["options"]["calibration_windows"] > 0
    report = json.loads((res.run_dir / "validate" / "report.json").read_text())
    assert report["artifacts"]["int8"]["onnx"]["int8_mode"] == "static"
