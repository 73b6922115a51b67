"""Multi-process fine-tuning through ``accelerate launch`` (DDP; DeepSpeed/FSDP via an accelerate config).

:func:`edgeft.finetune.finetune` calls :func:`launch` when ``finetune.processes > 1`` and it is not
already inside a launched process. The records and settings go to ``work_dir/launch/``, then
``accelerate launch`` starts ``processes`` copies of :mod:`edgeft.finetune.worker`; each runs the same
:func:`edgeft.finetune.finetune` (the Trainer shards the batches, averages gradients, and only the
main process writes the adapter and ``metrics.json``). Without a GPU the processes talk over gloo
(``--multi_gpu`` is accelerate's name for its torchrun launcher; with ``use_cpu`` the Trainer
selects the CPU backend). ``finetune.accelerate_config`` passes an accelerate config file through
unchanged (``accelerate config`` writes one; DeepSpeed/FSDP/multi-node settings live there).

Run by hand, the equivalent is ``accelerate launch --num_processes N -m edgeft.finetune.worker SPEC``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from edgeft.errors import ConfigError, StageError

log = logging.getLogger(__name__)


def in_launched_process() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(cfg, spec: Path) -> list[str]:
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.processes),
           "--main_process_port", str(_free_port())]
    if cfg.accelerate_config:
        conf = Path(cfg.accelerate_config)
        if not conf.is_file():
            raise ConfigError(f"finetune.accelerate_config: file not found: {conf} "
                              f"(write one with `accelerate config --config_file {conf}`)")
        cmd += ["--config_file", str(conf)]
    else:
        # no config: plain DDP (torchrun launcher; gloo on CPU, nccl on GPUs)
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if not torch.cuda.is_available():
            cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // cfg.processes))]
    return cmd + ["-m", "edgeft.finetune.worker", str(spec)]


def launch(model_path: Path, train: list[dict], eval: list[dict], out_dir: Path, cfg, system_prompt: str,
           work_dir: Path) -> dict:
    """Fine-tune in ``cfg.processes`` processes; return the main process's metrics."""
    from edgeft.data.readers import write_jsonl
    from edgeft.fileio import atomic_write_text

    d = Path(work_dir) / "launch"
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "eval.jsonl", eval)
    spec = atomic_write_text(d / "spec.json", json.dumps({
        "model_path": str(model_path), "out_dir": str(Path(out_dir).resolve()), "work_dir": str(Path(work_dir).resolve()),
        "system_prompt": system_prompt, "cfg": cfg.model_dump(mode="json"),
        "train": str((d / "train.jsonl").resolve()), "eval": str((d / "eval.jsonl").resolve())}))
    cmd = command(cfg, spec)
    log.info("launching %d training processes: %s", cfg.processes, " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (d / "launch.log").write_text(res.stdout)
    if res.returncode != 0:
        tail = "\n".join(res.stdout.strip().splitlines()[-15:])
        raise StageError(f"finetune: {cfg.processes} training processes failed (exit {res.returncode}); "
                         f"full log in {d / 'launch.log'}:\n{tail}")
    metrics_file = Path(out_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise StageError(f"finetune: the launched processes wrote no {metrics_file}; see {d / 'launch.log'}")
    return json.loads(metrics_file.read_text())
