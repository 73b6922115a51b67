"""LoRA SFT throughput: edgeft's fine-tune stage vs a plain transformers ``Trainer`` + PEFT script.

    flock /tmp/edgeft-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/finetune_speed.py [--omp-wait-policy PASSIVE]

Both contenders train SmolLM2-135M-Instruct (fp32) with LoRA r=16 / alpha=32 / all-linear on the
same chat-templated quickstart examples (``edgeft.data.intents``, loss on the answer tokens only),
batch 8, the same learning-rate schedule, seed and 2 torch threads, each in a fresh subprocess;
the order alternates between repeats and medians are printed.

* ``baseline`` is what a practitioner writes: ``AutoModelForCausalLM`` + ``get_peft_model`` +
  ``Trainer`` with ``DataCollatorForSeq2Seq(padding="longest")`` (dynamic padding to the longest
  example of each batch, labels padded with -100; ``DataCollatorForLanguageModeling`` would
  overwrite the prompt mask), default ``TrainingArguments`` otherwise.
* ``edgeft`` is ``edgeft.finetune.finetune`` with the ``recipes/quickstart.yaml`` finetune
  settings; ``--contender NAME:key=value,...`` adds an edgeft run with FinetuneConfig overrides
  (how each speed setting is measured on its own).

``--qlora`` runs the same comparison for QLoRA: the baseline loads the base NF4 (double-quantized,
bf16 compute on CUDA) with ``prepare_model_for_kbit_training``'s defaults, edgeft uses
``method: qlora``; on CUDA each contender also reports its peak GPU memory
(``torch.cuda.max_memory_allocated``).

tokens/s = real (non-pad) tokens trained / wall time of the optimizer steps (``on_step_begin`` to
``on_step_end``; ``edgeft.finetune.speed``), the same for every contender; "eval s" is the time
spent evaluating during training. The compared metric is measured the same way for every
contender after training, by one function on the trained model in fp32 (no autocast): eval loss =
mean cross-entropy over all answer tokens of the eval split, and greedy exact match on it. Peak
RAM is the child process's VmHWM at the end of the last optimizer step (``StepTimer.peak_rss_mb``):
model loading and training, not the evaluation edgeft runs after the steps (early stopping) and
the plain script does not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEED_SETTINGS = ("precision", "answer_only_lm_head", "chunked_lm_head", "padding_free", "packed_attention",
                  "shared_prefix", "bf16_base", "gradient_checkpointing", "group_by_length", "optim", "torch_compile")


def _quickstart_finetune(overrides: dict):
    import yaml

    from edgeft.config.schema import FinetuneConfig

    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    ft = dict(recipe["finetune"])
    system_prompt = recipe["data"]["system_prompt"]
    ft.update(threads=2, **overrides)  # exact match during training on the recipe's eval_examples
    return FinetuneConfig(**ft), system_prompt


def _data(n_train: int, n_eval: int):
    from edgeft.data.intents import generate

    return generate(n_train, n_eval, seed=0)


def _encode(tok, system_prompt: str, r: dict, max_len: int | None = None) -> dict:
    """Chat template, loss on the answer only (labels -100 on the prompt): what both contenders train and score."""
    from edgeft.data.templates import conversation_text, prompt_ids

    ids = tok(conversation_text(tok, system_prompt, r["prompt"], r["response"]),
              add_special_tokens=False).input_ids[:max_len]
    n_prompt = len(prompt_ids(tok, system_prompt, r["prompt"]))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * n_prompt + ids[n_prompt:]}


def _evaluate(model, tok, records, system_prompt: str, batch_size: int = 8) -> dict:
    """The compared metric, the same code for every contender: fp32 eval loss on the answers and exact match."""
    import torch

    from edgeft.finetune.objectives.sft import exact_match

    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            rows = [(e["input_ids"], e["labels"]) for e in
                    (_encode(tok, system_prompt, r) for r in records[i:i + batch_size])]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in rows], device=model.device)
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows], device=model.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows], device=model.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            nll += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100,
                                                     reduction="sum").item()
            count += int((target != -100).sum())
    return {"eval_loss": nll / count, "exact_match": exact_match(model, tok, records, system_prompt)["exact_match"]}


def run_edgeft(args, overrides: dict) -> dict:
    from edgeft.finetune import finetune
    from edgeft.models import resolve_model

    cfg, system_prompt = _quickstart_finetune({"method": "qlora", **overrides} if args.qlora else overrides)
    train, ev = _data(args.examples, args.eval_examples)
    cfg = cfg.model_copy(update={"epochs": args.epochs})
    from transformers import AutoTokenizer

    from edgeft.finetune import load_trained

    base = resolve_model("smollm2-135m").path
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = finetune(base, train, ev, Path(tmp) / "out", cfg, system_prompt, work_dir=Path(tmp) / "work")
        wall = time.perf_counter() - t0
        final = _evaluate(load_trained(Path(tmp) / "out" / "adapter"), AutoTokenizer.from_pretrained(str(base)), ev,
                          system_prompt)
    return {"tokens_per_second": m["tokens_per_second"], "step_seconds": m["step_seconds"],
            "trained_tokens": m["trained_tokens"], "steps": m["steps"], "train_loss": m["train_loss"], **final,
            "eval_seconds": m["train_seconds"] - m["step_seconds"], "wall_seconds": wall,
            "peak_rss_mb": m["steps_peak_rss_mb"], "peak_gpu_mb": _peak_gpu_mb(),
            "settings": {k: getattr(cfg, k) for k in SPEED_SETTINGS}}


def _peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def run_baseline(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    from edgeft.finetune import speed
    from edgeft.models import resolve_model

    cfg, system_prompt = _quickstart_finetune({})
    torch.set_num_threads(2)
    set_seed(cfg.seed)
    path = str(resolve_model("smollm2-135m").path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cuda = torch.cuda.is_available()
    if args.qlora:  # the usual QLoRA script: NF4 double-quantized base, prepare_model_for_kbit_training defaults
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb,
                                                     device_map={"": 0} if cuda else None)
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    train, ev = _data(args.examples, args.eval_examples)

    train_ds, eval_ds = ([_encode(tok, system_prompt, r, cfg.max_seq_len) for r in rs] for rs in (train, ev))
    timer = speed.step_timer()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, num_train_epochs=args.epochs, learning_rate=cfg.learning_rate,
                                  lr_scheduler_type=cfg.lr_scheduler, warmup_ratio=cfg.warmup_ratio,
                                  per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
                                  max_grad_norm=cfg.max_grad_norm, logging_steps=5, save_strategy="no",
                                  eval_strategy="no", seed=cfg.seed, data_seed=cfg.seed, report_to=[],
                                  disable_tqdm=True, use_cpu=not cuda, bf16=cuda and args.qlora)
        trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                          data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100),
                          callbacks=[timer])
        t0 = time.perf_counter()
        result = trainer.train()
        t1 = time.perf_counter()
        final = _evaluate(model, tok, ev, system_prompt)
    trained = sum(len(x["input_ids"]) for x in train_ds) * args.epochs
    return {"tokens_per_second": trained / timer.seconds, "step_seconds": timer.seconds, "trained_tokens": trained,
            "steps": trainer.state.global_step, "train_loss": result.training_loss, **final,
            "eval_seconds": t1 - t0 - timer.seconds, "wall_seconds": t1 - t0,
            "peak_rss_mb": timer.peak_rss_mb, "peak_gpu_mb": _peak_gpu_mb(),
            "settings": {"collator": "DataCollatorForSeq2Seq(padding=longest)", "qlora": args.qlora}}


def _parse_contender(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    overrides = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        overrides[k] = json.loads(v) if v.lower() in ("true", "false") or v.replace(".", "").isdigit() else v
    return name, overrides


def _child(args) -> None:
    name, overrides = _parse_contender(args.child)
    import logging

    logging.basicConfig(level=logging.WARNING)
    res = run_baseline(args) if name == "baseline" else run_edgeft(args, overrides)
    print("RESULT " + json.dumps({"name": name, **res}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=200, help="training examples (quickstart generator, seed 0)")
    ap.add_argument("--eval-examples", type=int, default=96, help="eval split size (eval loss and exact match)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2, help="runs per contender, order alternating")
    ap.add_argument("--contender", action="append", help="baseline, edgeft, or NAME:key=value,... (edgeft overrides)")
    ap.add_argument("--omp-wait-policy", choices=["ACTIVE", "PASSIVE"],
                    help="OMP_WAIT_POLICY for both contenders (default: the environment's, i.e. libgomp's)")
    ap.add_argument("--qlora", action="store_true",
                    help="QLoRA (NF4 base) for every contender; on CUDA the table adds peak GPU memory")
    ap.add_argument("--json", type=Path, help="also write all runs here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    contenders = args.contender or ["baseline", "edgeft"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    if args.omp_wait_policy:
        # PASSIVE puts OpenMP workers to sleep between ops: kinder to other jobs on shared cores, slower for
        # many small ops (edgeft's per-example attention and LoRA matmuls) than for few large ones
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    runs: dict[str, list[dict]] = {c.partition(":")[0]: [] for c in contenders}
    for rep in range(args.repeats):
        order = contenders if rep % 2 == 0 else contenders[::-1]
        for spec in order:
            cmd = [sys.executable, __file__, "--child", spec, "--examples", str(args.examples),
                   "--eval-examples", str(args.eval_examples), "--epochs", str(args.epochs)]
            cmd += ["--qlora"] if args.qlora else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                sys.exit(f"{spec} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            res = json.loads(line[-1][7:])
            runs[res["name"]].append(res)
            print(f"[{rep + 1}/{args.repeats}] {res['name']:<14} {res['tokens_per_second']:7.1f} tok/s  "
                  f"eval loss {res['eval_loss']:.4f}  exact match {res['exact_match']:.3f}  "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB  steps {res['step_seconds']:.1f} s  "
                  f"eval {res['eval_seconds']:.1f} s", flush=True)
    ref = statistics.median(r["tokens_per_second"] for r in runs[contenders[0].partition(":")[0]])
    print(f"\n{args.examples} examples x {args.epochs:g} epoch, batch 8, 2 threads{', QLoRA' if args.qlora else ''}; "
          f"medians of {args.repeats} runs\n")
    gpu = any(r.get("peak_gpu_mb") is not None for rs in runs.values() for r in rs)
    print("| contender | tokens/s | ratio | step s | eval s | train loss | eval loss | exact match | peak RAM MB |"
          + (" peak GPU MB |" if gpu else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in
               ("tokens_per_second", "step_seconds", "eval_seconds", "train_loss", "eval_loss", "exact_match",
                "peak_rss_mb")}
        row = (f"| {name} | {med['tokens_per_second']:.1f} | {med['tokens_per_second'] / ref:.2f}x | "
               f"{med['step_seconds']:.1f} | {med['eval_seconds']:.1f} | {med['train_loss']:.4f} | "
               f"{med['eval_loss']:.4f} | {med['exact_match']:.3f} | {med['peak_rss_mb']:.0f} |")
        if gpu:
            row += f" {statistics.median(r['peak_gpu_mb'] or 0 for r in rs):.0f} |"
        print(row)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
