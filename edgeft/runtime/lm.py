"""Run a causal LM artifact (PyTorch folder or ONNX with KV cache) behind one small interface.

Used by export/quantize (parity, quality), validate (accuracy, latency) and benchmarks.
Greedy decoding only: validation needs deterministic outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import ModelSourceError

log = logging.getLogger(__name__)


class CausalLM:
    """Interface: ``logits`` for scoring, ``generate`` for the task metric, ``timed_generate`` for latency."""

    name = "lm"
    threads = 1

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [seq, vocab] (float32) for one sequence of token ids [seq]."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int]) -> list[list[int]]:
        """Greedy continuation of each prompt (batched, left-padded), stopping at any eos id."""
        raise NotImplementedError

    def timed_generate(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        """Generate exactly ``new_tokens`` tokens for one prompt; return (ttft_s, [per-token decode s])."""
        raise NotImplementedError


# --------------------------------------------------------------------------- ONNX Runtime


def find_onnx(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if not found:
        raise ModelSourceError(f"{path}: no .onnx file in this folder; export the model first (`edgeft export`)")
    return found[0]


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class OrtLM(CausalLM):
    """An optimum-style decoder graph: input_ids, attention_mask, [position_ids], past_key_values.N.key/value."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = find_onnx(path)
        self.name = str(path)
        self.threads = threads
        self.sess = ort.InferenceSession(str(self.path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values")]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.present_names = [n for n in self.output_names if n.startswith("present")]
        if "input_ids" not in self.inputs or "logits" not in self.output_names:
            raise ModelSourceError(f"{self.path}: not a causal-LM graph (needs input_ids -> logits)")
        if len(self.past_names) != len(self.present_names):
            raise ModelSourceError(f"{self.path}: past/present KV inputs and outputs do not pair up")
        shape = self.inputs[self.past_names[0]].shape if self.past_names else None
        self.kv_heads = shape[1] if shape else 0
        self.head_dim = shape[3] if shape else 0
        self.has_pos = "position_ids" in self.inputs

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}

    def step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if self.has_pos:
            pos = np.cumsum(mask, axis=1) - 1
            pos = np.where(mask == 0, 1, pos)
            feeds["position_ids"] = pos[:, -ids.shape[1]:].astype(np.int64)
        feeds.update(past)
        outs = self.sess.run(None, feeds)
        named = dict(zip(self.output_names, outs))
        present = {p.replace("present", "past_key_values"): named[p] for p in self.present_names}
        return named["logits"], present

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, np.int64)[None, :]
        logits, _ = self.step(ids, np.ones_like(ids), self._empty_past(1))
        return logits[0].astype(np.float32)

    def generate(self, prompts, max_new_tokens, eos_ids):
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = np.zeros((b, width), np.int64)
        mask = np.zeros((b, width), np.int64)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
        past = self._empty_past(b)
        out: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, bool)
        eos = set(eos_ids)
        for _ in range(max_new_tokens):
            logits, past = self.step(ids, mask, past)
            nxt = logits[:, -1, :].argmax(-1)
            for i in range(b):
                if not done[i]:
                    if int(nxt[i]) in eos:
                        done[i] = True
                    else:
                        out[i].append(int(nxt[i]))
            if done.all():
                break
            ids = nxt[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        return out

    def timed_generate(self, prompt, new_tokens):
        ids = np.asarray(prompt, np.int64)[None, :]
        mask = np.ones_like(ids)
        past = self._empty_past(1)
        t0 = time.perf_counter()
        logits, past = self.step(ids, mask, past)
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(new_tokens - 1):
            nxt = logits[:, -1, :].argmax(-1)[:, None]
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            t = time.perf_counter()
            logits, past = self.step(nxt, mask, past)
            steps.append(time.perf_counter() - t)
        return ttft, steps


# --------------------------------------------------------------------------- PyTorch


class TorchLM(CausalLM):
    """A transformers folder (or an in-memory model) run in eager PyTorch, fp32."""

    def __init__(self, path_or_model, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        if isinstance(path_or_model, (str, Path)):
            self.name = str(path_or_model)
            self.model = AutoModelForCausalLM.from_pretrained(str(path_or_model), torch_dtype=torch.float32)
        else:
            self.name = type(path_or_model).__name__
            self.model = path_or_model
        self.model.eval()

    def logits(self, input_ids):
        import torch

        with torch.inference_mode():
            ids = torch.as_tensor(np.asarray(input_ids, np.int64))[None, :]
            return self.model(input_ids=ids).logits[0].float().numpy()

    def generate(self, prompts, max_new_tokens, eos_ids):
        import torch

        b = len(prompts)
        width = max(len(p) for p in prompts)
        pad = int(list(eos_ids)[0])
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(list(p))
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            g = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=list(eos_ids), pad_token_id=pad)
        out = []
        eos = set(eos_ids)
        for row in g[:, width:].tolist():
            seq = []
            for t in row:
                if t in eos:
                    break
                seq.append(t)
            out.append(seq)
        return out

    def timed_generate(self, prompt, new_tokens):
        import torch

        ids = torch.as_tensor(list(prompt))[None, :]
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True)
            ttft = time.perf_counter() - t0
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            steps = []
            for _ in range(new_tokens - 1):
                t = time.perf_counter()
                out = self.model(input_ids=nxt, past_key_values=past, use_cache=True)
                steps.append(time.perf_counter() - t)
                past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
        return ttft, steps


def load_lm(path: Path, fmt: str, threads: int = 1) -> CausalLM:
    if fmt == "onnx":
        return OrtLM(path, threads)
    if fmt == "pytorch":
        return TorchLM(path, threads)
    raise ModelSourceError(f"{path}: no runtime for format {fmt!r} (supported: onnx, pytorch)")
