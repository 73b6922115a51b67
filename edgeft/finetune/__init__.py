"""Fine-tuning stage: a registered method (what is trained) x a registered objective (what it learns from)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edgeft.finetune.registry import (METHODS, OBJECTIVES, TASKS, Method, Objective, load_trained,
                                      save_trained)

# Importing the modules registers them (one module per method/objective).
from edgeft.finetune.methods import lora as _lora  # noqa: F401,E402
from edgeft.finetune.methods import qlora as _qlora  # noqa: F401,E402
from edgeft.finetune.methods import dora as _dora  # noqa: F401,E402
from edgeft.finetune.methods import ia3 as _ia3  # noqa: F401,E402
from edgeft.finetune.methods import full as _full  # noqa: F401,E402
from edgeft.finetune.methods import freeze as _freeze  # noqa: F401,E402
from edgeft.finetune.methods import gradual_unfreeze as _gradual_unfreeze  # noqa: F401,E402
from edgeft.finetune.methods import bitfit as _bitfit  # noqa: F401,E402
from edgeft.finetune.methods import adapter as _adapter  # noqa: F401,E402
from edgeft.finetune.methods import prompt_tuning as _prompt_tuning  # noqa: F401,E402
from edgeft.finetune.methods import prefix_tuning as _prefix_tuning  # noqa: F401,E402
from edgeft.finetune.methods import p_tuning as _p_tuning  # noqa: F401,E402
from edgeft.finetune.objectives import sft as _sft  # noqa: F401,E402
from edgeft.finetune.objectives import classify as _classify  # noqa: F401,E402
from edgeft.finetune.objectives import clm as _clm  # noqa: F401,E402
from edgeft.finetune.objectives import dpo as _dpo  # noqa: F401,E402
from edgeft.finetune.objectives import distill as _distill  # noqa: F401,E402
from edgeft.finetune.objectives import multitask as _multitask  # noqa: F401,E402
from edgeft.finetune.objectives import image_classify as _image_classify  # noqa: F401,E402
from edgeft.finetune.objectives import grpo as _grpo  # noqa: F401,E402
from edgeft.finetune.objectives import reward as _reward  # noqa: F401,E402

log = logging.getLogger(__name__)

__all__ = ["METHODS", "OBJECTIVES", "TASKS", "Method", "Objective", "finetune", "load_trained", "save_trained"]


def finetune(model_path: Path, train: list[dict], eval: list[dict], out_dir: Path, cfg=None,
             system_prompt: str = "", work_dir: Path | None = None) -> dict:
    """Fine-tune ``model_path`` on prompt/response records; write ``out_dir/adapter`` and ``out_dir/metrics.json``.

    ``cfg`` is an :class:`edgeft.config.FinetuneConfig` (defaults if None). ``work_dir`` keeps
    checkpoints across interruptions (default: ``out_dir/../.work``); rerunning resumes from the last one.
    """
    import torch
    from transformers import AutoTokenizer, set_seed

    from edgeft.config.schema import FinetuneConfig

    cfg = cfg or FinetuneConfig()
    method = METHODS.get(cfg.method, "finetune.method")
    objective = OBJECTIVES.get(cfg.objective, "finetune.objective")
    if cfg.litert_qat is not None:
        from edgeft.finetune import litert_qat

        litert_qat.check(cfg)
    if objective.task == "image-cls":  # records {image, label}: a PyTorch loop of its own, no tokenizer
        if cfg.init_adapter:
            from edgeft.errors import UnsupportedError

            raise UnsupportedError("finetune.init_adapter: objective image-classify does not continue an adapter; "
                                   "remove init_adapter")
        return _image_classify.finetune_images(model_path, train, eval, out_dir, cfg, work_dir)
    if cfg.qat is not None:
        from edgeft.finetune import qat

        qat.check(cfg)
        if cfg.bf16_base:  # the fake quantizer rounds the fp32 weights the export will round, not bf16 copies
            cfg = cfg.model_copy(update={"bf16_base": False})
    if cfg.padding_free and not method.padding_free:
        # virtual tokens are prepended per row: packed examples would share them and attend to each other
        log.info("method %s: batching with padding (finetune.padding_free ignored)", method.name)
        cfg = cfg.model_copy(update={"padding_free": False})
    if objective.num_labels is not None:  # the objective fixes the head (reward: one score per sequence)
        cfg = cfg.model_copy(update={"num_labels": objective.num_labels})
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / (out_dir.name + ".work")
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    from edgeft.finetune.launch import in_launched_process, launch

    if cfg.processes > 1 and not in_launched_process():  # accelerate launch: N processes, DDP
        return launch(model_path, train, eval, out_dir, cfg, system_prompt, work_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = method.prepare(method.load_model(model_path, cfg, objective.task), cfg)
    if cfg.init_adapter:  # continue an adapter trained before (e.g. GRPO from the sft run's adapter)
        from edgeft.finetune.objectives.common import load_init_adapter

        load_init_adapter(model, Path(cfg.init_adapter), method)
    installed, preserve, extra = None, None, {}
    if cfg.qat is not None:  # int4 fake quantization while training (edgeft.finetune.qat)
        import dataclasses

        from edgeft.finetune import qat

        installed = qat.prepare(model, cfg.qat)
        switch = qat.callback(installed, cfg.qat.start_step)
        method = dataclasses.replace(method, callbacks=lambda m, c, f=method.callbacks: [*f(m, c), switch])
        if cfg.qat.preserve is not None:  # general text distilled from the base too (objective sft: qat.check)
            preserve = qat.build_preserve(model, tokenizer, cfg.qat.preserve, installed, cfg.seed)
            extra["aux_loss"] = preserve.loss
    log.info("fine-tuning %s with %s/%s on %d examples", model_path, method.name, objective.name, len(train))
    metrics = objective.train(model, tokenizer, method, train, eval, cfg, out_dir, work_dir, system_prompt, **extra)
    if installed is not None:
        installed.remove()
        metrics["qat"] = qat.record(cfg.qat, installed, preserve)
        _mark_qat(out_dir / method.produces, metrics["qat"])
    metrics.update({"method": method.name, "objective": objective.name, "base_model": str(model_path),
                    "n_train": len(train), "n_eval": len(eval)})
    if int(os.environ.get("RANK", "0")) == 0:  # several processes: the main one writes
        from edgeft.fileio import atomic_write_text

        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _mark_qat(target: Path, info: dict) -> None:
    """Add the QAT grid to the finetune result's marker, so merge and quantize know which int4 grid it trained on."""
    from edgeft.finetune.registry import MARKER, read_marker
    from edgeft.fileio import atomic_write_text

    if int(os.environ.get("RANK", "0")) != 0 or not (Path(target) / MARKER).is_file():
        return
    marker = read_marker(target)
    marker["qat"] = info
    atomic_write_text(Path(target) / MARKER, json.dumps(marker, indent=2))


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "finetune")
