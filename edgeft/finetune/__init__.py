"""Fine-tuning stage: a registered method (what is trained) x a registered objective (what it learns from)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgeft.finetune.registry import METHODS, OBJECTIVES, TASKS, Method, Objective, save_trained

# Importing the modules registers them (one module per method/objective).
from edgeft.finetune.methods import lora as _lora  # noqa: F401,E402
from edgeft.finetune.methods import qlora as _qlora  # noqa: F401,E402
from edgeft.finetune.objectives import sft as _sft  # noqa: F401,E402

log = logging.getLogger(__name__)

__all__ = ["METHODS", "OBJECTIVES", "TASKS", "Method", "Objective", "finetune", "save_trained"]


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
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / (out_dir.name + ".work")
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = method.prepare(method.load_model(model_path, cfg, objective.task), cfg)
    log.info("fine-tuning %s with %s/%s on %d examples", model_path, method.name, objective.name, len(train))
    metrics = objective.train(model, tokenizer, method, train, eval, cfg, out_dir, work_dir, system_prompt)
    metrics.update({"method": method.name, "objective": objective.name, "base_model": str(model_path),
                    "n_train": len(train), "n_eval": len(eval)})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "finetune")
