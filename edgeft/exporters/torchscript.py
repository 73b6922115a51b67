"""TorchScript export (``torch.jit.trace``) of a decoder LM with a KV cache, or of an encoder/classifier.

Decoder: transformers' own export recipe for decoder-only LMs,
``transformers.integrations.executorch.TorchExportableModuleForDecoderOnlyLM``, wraps the model
with a ``StaticCache`` (one pre-allocated key and value buffer per layer, ``[1, kv_heads,
max_cache_len, head_dim]``) and switches mask creation to a variant without ``vmap``. A
``DynamicCache`` grows by concatenation and is a Python object between steps, which tracing
cannot carry; the static cache is a set of module buffers updated in place (``index_copy_``),
which tracing records and TorchScript keeps in the saved module. A thin module around it
returns the buffers as outputs, so one call gives ``(logits, key_0, value_0, key_1, ...)``.

Two methods are traced into one ``model.pt`` and share the cache buffers:

- ``prefill(input_ids [1, n], cache_position [n])`` -> logits ``[1, n, vocab]`` and the cache;
- ``forward(input_ids [1, 1], cache_position [1])`` -> the same, one cached decode step.

``cache_position`` holds the absolute positions of the new tokens; the mask hides every cache
slot after the last position, so stale entries of an earlier sequence never leak into a new
one and no reset is needed between sequences. Batch size is 1 (one prompt at a time, as the ONNX
decode loop does) and a sequence holds at most ``max_cache_len`` tokens.

Encoder (BertModel/MiniLM) or sequence classifier: ``(input_ids, attention_mask)`` ->
``last_hidden_state`` or ``logits``, traced with a padded batch; parity is checked on a batch of
another size and length so a shape baked into the trace would show.

Parity: the prefill and one cached decode step (logits and every layer's key/value for the
filled positions) against eager PyTorch with a ``DynamicCache``, in the style of the ONNX
exporter; any output past the tolerance raises :class:`~edgeft.errors.ParityError`.

Size: ``model.pt`` holds the weights, the (zero) KV cache buffers (``2 * layers * kv_heads *
max_cache_len * head_dim * 4`` bytes: 23.6 MB for SmolLM2-135M at 512) and ~0.3 MB of TorchScript
code and debug tables.

``mobile: true`` runs ``torch.utils.mobile_optimizer.optimize_for_mobile`` (conv/linear packing
for XNNPACK, ops fused) and also writes ``model.ptl`` for the PyTorch Mobile lite interpreter.
It needs a PyTorch build with XNNPACK (the ARM/mobile builds and most x86 pip wheels; the x86
CPU wheel this project pins has none, so the option raises :class:`UnsupportedError` there).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from pydantic import Field

from edgeft.artifacts import ARTIFACT_FILE, model_kind, size_of
from edgeft.config.options import Options
from edgeft.errors import UnsupportedError
from edgeft.exporters.parity import check_outputs

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
LITE_FILE = "model.ptl"
META_FILE = "torchscript.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ptl", ".onnx", ".onnx_data")
SKIPPED_FILES = (META_FILE, ARTIFACT_FILE, "stage.json")


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, config and chat template travel with the artifact; weights, reports, descriptions and the run's
    stage record do not."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.endswith("report.json") \
                and not f.name.endswith(".safetensors.index.json") and f.name not in SKIPPED_FILES:
            shutil.copy2(f, dst / f.name)


# --------------------------------------------------------------------------- decoder


def _kv_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{side}" for i in range(n_layers) for side in ("key", "value")]


def static_cache_recipe(model, max_cache_len: int, what: str):
    """transformers' static-cache export recipe around ``model`` (its generation settings switched to a static
    cache), shared by the TorchScript and ExecuTorch decoder exports. ``what`` names the export in errors."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model.config.use_cache = True
    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    try:
        recipe = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache_len)
    except (AssertionError, ValueError) as e:
        raise UnsupportedError(f"{what} of {type(model).__name__}: transformers' static-cache export "
                               f"recipe refuses it ({e})") from e
    if not hasattr(recipe.model, "key_cache_0"):
        raise UnsupportedError(f"{what} of {type(model).__name__}: only models with one full-attention "
                               "static cache are supported (sliding-window/hybrid caches are not)")
    return recipe


def trace_decoder(model, max_cache_len: int = 512, example_len: int = 8):
    """Trace ``model`` (an eager HF causal LM, fp32 or dynamically quantized) into a ScriptModule with
    ``prefill`` and ``forward`` (see the module docstring). ``model`` is modified (static-cache
    generation settings, the traceable mask function)."""
    import torch

    if max_cache_len < example_len + 1:
        raise UnsupportedError(f"max_cache_len {max_cache_len} is too small; use at least {example_len + 1}")
    model.eval()
    recipe = static_cache_recipe(model, max_cache_len, "TorchScript export")
    static = recipe.model
    n_layers = len(static.static_cache)

    class DecoderWithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.recipe = recipe

        def _cache(self) -> list:
            out = []
            for i in range(n_layers):
                out += [getattr(static, f"key_cache_{i}"), getattr(static, f"value_cache_{i}")]
            return out

        def forward(self, input_ids, cache_position):
            logits = self.recipe(input_ids=input_ids, cache_position=cache_position)
            return (logits, *self._cache())

        def prefill(self, input_ids, cache_position):
            return self.forward(input_ids, cache_position)

    wrapper = DecoderWithCache().eval()
    ids = torch.arange(3, 3 + example_len, dtype=torch.long)[None]
    with torch.no_grad():
        traced = torch.jit.trace_module(
            wrapper, {"prefill": (ids, torch.arange(example_len)),
                      "forward": (ids[:, :1], torch.tensor([example_len], dtype=torch.long))},
            check_trace=False)
    meta = {"kind": "causal-lm", "max_cache_len": max_cache_len, "num_layers": n_layers,
            "outputs": ["logits", *_kv_names(n_layers)], "methods": ["prefill", "forward"],
            "inputs": ["input_ids [1, n]", "cache_position [n]"]}
    return traced, meta


def _eager_reference(model, ids: np.ndarray) -> tuple[dict, dict]:
    """Eager outputs for prefill (all tokens but the last) and one cached step (the last token)."""
    import torch

    from edgeft.exporters.onnx import kv_pairs

    t = torch.as_tensor(ids)
    with torch.inference_mode():
        out1 = model(input_ids=t[:, :-1], use_cache=True)
        ref1 = {"logits": out1.logits.float().numpy().copy()}
        for i, (k, v) in enumerate(kv_pairs(out1.past_key_values)):
            ref1[f"present.{i}.key"], ref1[f"present.{i}.value"] = k.numpy().copy(), v.numpy().copy()
        out2 = model(input_ids=t[:, -1:], past_key_values=out1.past_key_values, use_cache=True)
        ref2 = {"logits": out2.logits.float().numpy().copy()}
        for i, (k, v) in enumerate(kv_pairs(out2.past_key_values)):
            ref2[f"present.{i}.key"], ref2[f"present.{i}.value"] = k.numpy().copy(), v.numpy().copy()
    return ref1, ref2


def _script_outputs(outs, n_filled: int, names: list[str]) -> dict:
    got = {"logits": outs[0].float().numpy().copy()}
    for name, buf in zip(names[1:], outs[1:]):
        got[name] = buf[:, :, :n_filled].numpy().copy()  # the filled slots of the static cache
    return got


def decoder_parity(eager_model, scripted, ids: np.ndarray, tolerance: float, stage: str = "torchscript export"
                   ) -> list[dict]:
    """Prefill + one cached decode step of ``scripted`` vs ``eager_model``, every output (logits, KV)."""
    import torch

    ref1, ref2 = _eager_reference(eager_model, ids)
    names = ["logits"] + [k for k in ref1 if k != "logits"]
    n = ids.shape[1] - 1
    t = torch.as_tensor(ids)
    with torch.inference_mode():
        cand1 = _script_outputs(scripted.prefill(t[:, :-1], torch.arange(n)), n, names)
        cand2 = _script_outputs(scripted(t[:, -1:], torch.tensor([n])), n + 1, names)
    checks = check_outputs(f"{stage} (prefill)", ref1, cand1, tolerance)
    checks += check_outputs(f"{stage} (cached decode step)", ref2, cand2, tolerance)
    return [dict(c.to_dict(), step=("prefill" if i < len(ref1) else "decode")) for i, c in enumerate(checks)]


def save_scripted(scripted, out_dir: Path, meta: dict, mobile: bool = False) -> dict:
    """Write ``model.pt`` (and ``model.ptl`` with ``mobile``) atomically plus ``torchscript.json``."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mobile:
        from torch.utils.mobile_optimizer import optimize_for_mobile

        try:
            scripted = optimize_for_mobile(scripted, preserved_methods=[m for m in meta.get("methods", [])
                                                                        if m != "forward"])
        except RuntimeError as e:
            if "XNNPACK" in str(e):
                raise UnsupportedError(f"export option mobile: optimize_for_mobile needs a PyTorch build with XNNPACK "
                                       f"and torch {torch.__version__} here has none; export with mobile: false (the "
                                       "plain TorchScript model) or run the export with a PyTorch build that has "
                                       "XNNPACK") from e
            raise
        tmp = out_dir / f".{LITE_FILE}.tmp"
        scripted._save_for_lite_interpreter(str(tmp))
        os.replace(tmp, out_dir / LITE_FILE)
    tmp = out_dir / f".{MODEL_FILE}.tmp"
    torch.jit.save(scripted, str(tmp))
    os.replace(tmp, out_dir / MODEL_FILE)
    meta = dict(meta, mobile=mobile, torch=torch.__version__)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def export_decoder(model_dir: Path, out_dir: Path, max_cache_len: int = 512, mobile: bool = False,
                   tolerance: float = 2e-3, sample_ids: Sequence[int] | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    scripted, meta = trace_decoder(model, max_cache_len)
    seconds = time.perf_counter() - t0
    copy_side_files(model_dir, out_dir)
    meta = save_scripted(scripted, out_dir, meta, mobile)
    scripted = torch.jit.load(str(out_dir / MODEL_FILE))  # parity of what was saved, not of what is in memory
    ids = np.asarray([list(sample_ids if sample_ids is not None else range(100, 116))], np.int64)
    if ids.shape[1] < 2 or ids.shape[1] > max_cache_len:
        raise UnsupportedError(f"export parity needs 2..{max_cache_len} sample tokens, got {ids.shape[1]}")
    eager = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    checks = decoder_parity(eager, scripted, ids, tolerance)
    return {"format": "torchscript", "kind": "causal-lm", "max_cache_len": max_cache_len, "mobile": mobile,
            "export_seconds": seconds, "tolerance": tolerance, "parity": checks,
            "max_abs_diff": max(c["max_abs_diff"] for c in checks), "size_bytes": size_of(out_dir, "torchscript"),
            "torchscript": meta}


# --------------------------------------------------------------------------- encoder / classifier


def _load_encoder(model_dir: Path, kind: str):
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if kind == "classifier" else AutoModel
    # torchscript=True: tuple outputs (what tracing needs) and untied weights
    return cls.from_pretrained(str(model_dir), dtype=torch.float32, torchscript=True).eval()


def _encode(model_dir: Path, texts: Sequence[str], max_length: int = 128):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")


DEFAULT_TEXTS = ("a small example sentence", "another one, a little longer than the first example text",
                 "short", "the quick brown fox jumps over the lazy dog")


def export_encoder(model_dir: Path, out_dir: Path, kind: str, mobile: bool = False, tolerance: float = 2e-3,
                   sample_texts: Sequence[str] | None = None) -> dict:
    import torch

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    texts = list(sample_texts or DEFAULT_TEXTS)
    if len(texts) < 2:
        texts = texts + list(DEFAULT_TEXTS[:2])
    t0 = time.perf_counter()
    model = _load_encoder(model_dir, kind)
    ex = _encode(model_dir, texts[:2])  # trace on two padded texts; check on all of them (another shape)
    with torch.no_grad():
        scripted = torch.jit.trace(model, (ex["input_ids"], ex["attention_mask"]), check_trace=False)
    seconds = time.perf_counter() - t0
    output = "logits" if kind == "classifier" else "last_hidden_state"
    meta = {"kind": kind, "outputs": [output], "inputs": ["input_ids [b, s]", "attention_mask [b, s]"],
            "methods": ["forward"]}
    copy_side_files(model_dir, out_dir)
    meta = save_scripted(scripted, out_dir, meta, mobile)
    scripted = torch.jit.load(str(out_dir / MODEL_FILE))
    enc = _encode(model_dir, texts)
    with torch.inference_mode():
        ref = {output: model(enc["input_ids"], enc["attention_mask"])[0].numpy()}
        cand = {output: scripted(enc["input_ids"], enc["attention_mask"])[0].numpy()}
    if kind == "encoder":  # padded positions carry no meaning; compare the real tokens only
        mask = enc["attention_mask"].numpy()[..., None].astype(bool)
        ref, cand = ({output: np.where(mask, d[output], 0.0)} for d in (ref, cand))
    checks = [dict(c.to_dict(), step="forward") for c in check_outputs("torchscript export", ref, cand, tolerance)]
    return {"format": "torchscript", "kind": kind, "mobile": mobile, "export_seconds": seconds,
            "tolerance": tolerance, "parity": checks, "max_abs_diff": max(c["max_abs_diff"] for c in checks),
            "size_bytes": size_of(out_dir, "torchscript"), "torchscript": meta}


# --------------------------------------------------------------------------- entry points


class TorchScriptOptions(Options):
    """Options of torchscript presets."""

    owner: ClassVar[str] = "torchscript export"
    max_cache_len: int = Field(512, ge=1, description="decoder: tokens the pre-allocated KV cache holds (prompt + "
                                                      "generated)")
    mobile: bool = Field(False, description="run optimize_for_mobile and also write model.ptl (needs a PyTorch build "
                                            "with XNNPACK)")


def export_torchscript(model_dir: Path, out_dir: Path, tolerance: float = 2e-3, sample_ids: Sequence[int] | None = None,
                       sample_texts: Sequence[str] | None = None, opts: TorchScriptOptions | None = None,
                       opset: int | None = None, with_past: bool | None = None, **options) -> dict:
    """Export ``model_dir`` (HF folder) to ``out_dir/model.pt`` and check parity; returns the report.

    ``opts`` or keywords: :class:`TorchScriptOptions`. ``opset`` / ``with_past`` (ONNX-only preset
    fields the registry passes) are ignored.
    """
    o = TorchScriptOptions.of(opts, **options)
    max_cache_len, mobile = o.max_cache_len, o.mobile
    kind = model_kind(model_dir)
    if kind == "causal-lm":
        report = export_decoder(model_dir, out_dir, max_cache_len, mobile, tolerance, sample_ids)
    else:
        report = export_encoder(model_dir, out_dir, kind, mobile, tolerance, sample_texts)
    (Path(out_dir) / "export_report.json").write_text(json.dumps(report, indent=2))
    log.info("torchscript export %s: %.1f MB, max |diff| %.3g over %d outputs", out_dir,
             report["size_bytes"] / 2**20, report["max_abs_diff"], len(report["parity"]))
    return report


def export_preset(model_dir: Path, out_dir: Path, preset, tolerance: float = 2e-3,
                  sample_ids: Sequence[int] | None = None, sample_texts: Sequence[str] | None = None,
                  static_shapes=None) -> dict:
    """Export with a loaded TorchScript :class:`~edgeft.config.schema.ExportPreset` (options in ``preset.options``)."""
    if static_shapes is not None:
        raise UnsupportedError("export.static_shapes applies to ONNX exports; a TorchScript export keeps dynamic "
                               "shapes (remove export.static_shapes or use an onnx preset)")
    return export_torchscript(model_dir, out_dir, tolerance=tolerance, sample_ids=sample_ids,
                              sample_texts=sample_texts, opts=TorchScriptOptions.of(preset.options))


def _register() -> None:
    from edgeft.exporters.registry import EXPORTERS

    if "torchscript" not in EXPORTERS:
        EXPORTERS.register("torchscript", options=TorchScriptOptions)(export_torchscript)


_register()
