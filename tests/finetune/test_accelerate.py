"""Multi-process fine-tuning: ``finetune.processes: 2`` runs ``accelerate launch`` with 2 CPU processes (DDP, gloo)."""

from __future__ import annotations

import json
import re

from conftest import SYSTEM_PROMPT


def test_two_cpu_processes_train_together_and_write_one_adapter(tiny_lm_dir, tmp_path):
    from edgeft.config.schema import FinetuneConfig
    from edgeft.data.intents import generate
    from edgeft.finetune import finetune
    from edgeft.finetune.launch import command

    train, _ = generate(64, 1, 0)
    text = "".join(f"{r['prompt']} -> {r['response']}\n" for r in train)
    cfg = FinetuneConfig(objective="clm", processes=2, epochs=3, batch_size=4, max_seq_len=64, learning_rate=5e-3,
                         eval_examples=0, early_stopping=None)
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = command(cfg, tmp_path / "spec.json")
    assert "accelerate.commands.launch" in cmd and cmd[-3:-1] == ["-m", "edgeft.finetune.worker"]
    m = finetune(tiny_lm_dir, [{"text": text}], [{"text": text[:1500]}], out, cfg, SYSTEM_PROMPT, work_dir=work)

    log = (work / "launch" / "launch.log").read_text()
    assert {"[rank 0]", "[rank 1]"} <= set(re.findall(r"\[rank \d\]", log))  # both processes trained
    assert m["processes"] == 2
    # same data, sharded: each optimizer step takes batch_size blocks per process
    assert m["steps"] == 3 * -(-m["train_blocks"] // (4 * 2))
    losses = [h["loss"] for h in m["loss_history"]]
    assert losses[-1] < losses[0], losses
    assert m["eval_perplexity"] < m["base_eval_perplexity"]
    writes = re.findall(r"\[rank (\d)\] process (\d) of 2 wrote (\S+)", log)
    assert len(writes) == 1 and writes[0][:2] == ("0", "0"), writes  # exactly one adapter, by the main process
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "metrics.json"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
