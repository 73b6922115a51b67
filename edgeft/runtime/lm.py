"""Run a causal LM artifact (PyTorch folder or ONNX with KV cache) behind one small interface.

Used by export/quantize (parity, quality), validate (accuracy, latency) and benchmarks.
Greedy decoding only: validation needs deterministic outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeft.errors import ModelSourceError

log = logging.getLogger(__name__)


def greedy_decode(prefill: Callable[[], np.ndarray], step: Callable[[int], np.ndarray], new_tokens: int,
                  eos: set[int] | None) -> tuple[list[int], float, list[float]]:
    """The greedy loop every runtime shares: ``prefill()`` returns the logits row after the prompt (timed
    as time to first token), ``step(token)`` feeds one token and returns the next logits row (each timed).
    Stops at an eos id or after ``new_tokens`` tokens; returns (tokens, ttft_s, per-step seconds)."""
    out: list[int] = []
    steps: list[float] = []
    t0 = time.perf_counter()
    nxt = int(prefill().argmax())
    ttft = time.perf_counter() - t0
    while eos is None or nxt not in eos:
        out.append(nxt)
        if len(out) >= new_tokens:
            break
        t = time.perf_counter()
        nxt = int(step(nxt).argmax())
        steps.append(time.perf_counter() - t)
    return out, ttft, steps


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


_KV_DTYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32}


def session_options(threads: int, spinning: bool | None = None, opt_level: str = "all"):
    """CPU session options: ``threads`` intra-op threads (the calling thread is one of them).

    ``spinning`` sets ``session.intra_op.allow_spinning`` (ORT's default is on: idle pool threads
    busy-wait for the next op, which saves a wake-up per op when the cores are otherwise free and
    costs a core when they are not); ``None`` keeps ORT's default.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[opt_level]
    so.log_severity_level = 3
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def _has_shared_kv_attention(path: Path) -> bool:
    """True for graphs whose attention is ORT's GroupQueryAttention (onnxruntime-genai's model builder).

    GQA reads the past and writes the present in one buffer of fixed capacity, so the decode loop
    can allocate the KV cache once. Only the graph structure is read (no external weight data).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "GroupQueryAttention" for n in model.graph.node)


def head_dim_from_config(folder: Path, graph: Path) -> int:
    """KV head size from the config files beside a graph whose KV inputs leave it symbolic."""
    import json

    for name in ("genai_config.json", "config.json"):
        f = Path(folder) / name
        if f.is_file():
            cfg = json.loads(f.read_text())
            dec = cfg.get("model", {}).get("decoder", {})
            if "head_size" in dec:
                return int(dec["head_size"])
            if "head_dim" in cfg:
                return int(cfg["head_dim"])
            if "hidden_size" in cfg and "num_attention_heads" in cfg:
                return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    raise ModelSourceError(f"{graph}: KV head size is symbolic and no config.json/genai_config.json "
                           "next to the graph says it; keep the config files with the model")


class OrtLM(CausalLM):
    """A decoder graph with KV cache: input_ids, attention_mask, [position_ids], past_key_values.N.key/value.

    Two graph families run here: optimum's export (attention built from MatMul/Softmax; the
    present KV is the past plus the new token, a new tensor each step) and onnxruntime-genai's
    model builder (GroupQueryAttention, whose past and present may share one buffer).

    ``io_binding=True`` is the bound loop: inputs and outputs are bound to buffers that live for the
    whole generation. For GroupQueryAttention graphs the KV cache is allocated once at its final
    length and bound as both past and present, and the token, mask and logits row are pre-bound, so a
    decode step allocates and copies nothing; for optimum graphs the present OrtValues are bound back
    as the next step's past without a round trip through numpy. ``io_binding=False`` is the plain
    ``session.run`` loop, the reference the bound loop is tested against. ``None`` (default) picks
    what measured faster (docs/benchmarks.md, "Decode speed vs llama.cpp"): bound for
    GroupQueryAttention graphs (+7%), plain for optimum graphs (the chained OrtValues were ~6% slower).
    """

    def __init__(self, path: Path, threads: int = 1, io_binding: bool | None = None, spinning: bool | None = None,
                 opt_level: str = "all") -> None:
        import onnxruntime as ort

        self.path = find_onnx(path)
        self.name = str(path)
        self.threads = threads
        self.sess = ort.InferenceSession(str(self.path), session_options(threads, spinning, opt_level),
                                         providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values")]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.present_names = [n for n in self.output_names if n.startswith("present")]
        if "input_ids" not in self.inputs or "logits" not in self.output_names:
            raise ModelSourceError(f"{self.path}: not a causal-LM graph (needs input_ids -> logits)")
        if len(self.past_names) != len(self.present_names):
            raise ModelSourceError(f"{self.path}: past/present KV inputs and outputs do not pair up")
        for p in self.past_names:
            if p.replace("past_key_values", "present") not in self.output_names:
                raise ModelSourceError(f"{self.path}: input {p} has no matching present output")
        first = self.inputs[self.past_names[0]] if self.past_names else None
        self.kv_heads = first.shape[1] if first else 0
        self.head_dim = first.shape[3] if first else 0
        if first is not None and not isinstance(self.head_dim, int):
            self.head_dim = head_dim_from_config(self.path.parent, self.path)
        self.kv_dtype = _KV_DTYPES.get(first.type, np.float32) if first else np.float32
        self.has_pos = "position_ids" in self.inputs
        self.shared_kv = bool(self.past_names) and _has_shared_kv_attention(self.path)
        self.io_binding = self.shared_kv if io_binding is None else io_binding
        self.vocab = self.sess.get_outputs()[self.output_names.index("logits")].shape[-1]

    # ------------------------------------------------------------------ plain loop (reference)
    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.kv_dtype) for n in self.past_names}

    def step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        """One ``session.run``: new tokens ``ids`` [b, s] after the cache ``past``; returns (logits, present)."""
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

    # ------------------------------------------------------------------ bound loop (fast path)
    def _bound(self, prompt: np.ndarray, capacity: int) -> "_BoundDecoder":
        if self.shared_kv:
            return _SharedKVDecoder(self, prompt, capacity)
        return _ChainedKVDecoder(self, prompt, capacity)

    def _decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        """Greedy decode of one prompt; returns (tokens, ttft_s, per-step seconds)."""
        ids = np.asarray(prompt, np.int64)[None, :]
        if not self.io_binding:
            state = {"mask": np.ones_like(ids), "past": self._empty_past(1)}

            def run(tokens: np.ndarray) -> np.ndarray:
                logits, state["past"] = self.step(tokens, state["mask"], state["past"])
                return logits[0, -1]

            def step(token: int) -> np.ndarray:
                state["mask"] = np.concatenate([state["mask"], np.ones((1, 1), np.int64)], axis=1)
                return run(np.asarray([[token]], np.int64))

            return greedy_decode(lambda: run(ids), step, new_tokens, eos)
        bound = {}

        def prefill() -> np.ndarray:
            bound["dec"] = self._bound(ids, ids.shape[1] + new_tokens)
            return bound["dec"].prefill()

        return greedy_decode(prefill, lambda token: bound["dec"].next(token), new_tokens, eos)

    # ------------------------------------------------------------------ CausalLM
    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, np.int64)[None, :]
        if self.io_binding and self.shared_kv:
            return self._bound(ids, ids.shape[1]).prefill(all_positions=True).astype(np.float32)
        logits, _ = self.step(ids, np.ones_like(ids), self._empty_past(1))
        return logits[0].astype(np.float32)

    def generate(self, prompts, max_new_tokens, eos_ids):
        """Greedy continuation of each prompt.

        Prompts run one at a time: on a CPU a batch of left-padded prompts costs as much as the
        prompts one by one, and GroupQueryAttention's shared KV buffer has no notion of left padding.
        """
        eos = set(int(e) for e in eos_ids)
        return [self._decode(p, max_new_tokens, eos)[0] for p in prompts]

    def timed_generate(self, prompt, new_tokens):
        """Exactly ``new_tokens`` greedy tokens (EOS ignored). TTFT is prefill + first argmax; each
        step is one decode run + its argmax."""
        _, ttft, steps = self._decode(prompt, new_tokens, None)
        return ttft, steps


class _BoundDecoder:
    """Shared state of the IO-bound loops: the binding, the token and mask buffers, the logits row."""

    def __init__(self, lm: OrtLM, prompt: np.ndarray, capacity: int) -> None:
        self.lm = lm
        self.io = lm.sess.io_binding()
        self.n_prompt = prompt.shape[1]
        self.capacity = capacity
        self.total = 0  # tokens in the cache after the last run
        self.prompt = np.ascontiguousarray(prompt, np.int64)
        self.token = np.zeros((1, 1), np.int64)
        self.mask = np.ones((1, capacity), np.int64)
        self.positions = np.arange(capacity, dtype=np.int64)[None, :].copy()
        self.row = np.empty((1, 1, lm.vocab), np.float32)
        # Outputs keep the order of their first binding (re-binding a name replaces it in place):
        # logits first, then the presents in graph order, so get_outputs()[1 + i] is present i.
        self.io.bind_output("logits", "cpu")

    def _bind_array(self, name: str, arr: np.ndarray, shape=None, output: bool = False) -> None:
        shape = list(arr.shape if shape is None else shape)
        bind = self.io.bind_output if output else self.io.bind_input
        bind(name, "cpu", 0, arr.dtype, shape, arr.ctypes.data)

    def _bind_tokens(self, ids: np.ndarray, start: int) -> None:
        n = ids.shape[1]
        self._bind_array("input_ids", ids)
        self._bind_array("attention_mask", self.mask, (1, start + n))
        if self.lm.has_pos:
            self._bind_array("position_ids", self.positions[:, start:start + n])

    def _run(self) -> None:
        self.lm.sess.run_with_iobinding(self.io)


class _SharedKVDecoder(_BoundDecoder):
    """GroupQueryAttention graph: one KV buffer per layer and side, bound as both past and present."""

    def __init__(self, lm: OrtLM, prompt: np.ndarray, capacity: int) -> None:
        super().__init__(lm, prompt, capacity)
        shape = (1, lm.kv_heads, capacity, lm.head_dim)
        self.kv = {n: np.zeros(shape, lm.kv_dtype) for n in lm.past_names}
        for name, buf in self.kv.items():
            self._bind_array(name, buf)
            self._bind_array(name.replace("past_key_values", "present"), buf, output=True)

    def prefill(self, all_positions: bool = False) -> np.ndarray:
        self._bind_tokens(self.prompt, 0)
        logits = np.empty((1, self.n_prompt, self.lm.vocab), np.float32)
        self._bind_array("logits", logits, output=True)
        self._run()
        self.total = self.n_prompt
        self._bind_array("logits", self.row, output=True)
        self._bind_array("input_ids", self.token)
        return logits[0] if all_positions else logits[0, -1]

    def next(self, token: int) -> np.ndarray:
        if self.total >= self.capacity:
            raise ModelSourceError(f"{self.lm.path}: KV buffer of {self.capacity} tokens is full")
        self.token[0, 0] = token
        self._bind_array("attention_mask", self.mask, (1, self.total + 1))
        if self.lm.has_pos:
            self._bind_array("position_ids", self.positions[:, self.total:self.total + 1])
        self._run()
        self.total += 1
        return self.row[0, 0]


class _ChainedKVDecoder(_BoundDecoder):
    """Optimum graph (the present is a new, longer tensor each step): the present OrtValues stay in
    ORT and are bound as the next step's past; only the logits row reaches numpy."""

    def __init__(self, lm: OrtLM, prompt: np.ndarray, capacity: int) -> None:
        import onnxruntime as ort

        super().__init__(lm, prompt, capacity)
        empty = np.zeros((1, lm.kv_heads, 0, lm.head_dim), lm.kv_dtype)
        self.past = {n: ort.OrtValue.ortvalue_from_numpy(empty) for n in lm.past_names}
        for name in lm.present_names:
            self.io.bind_output(name, "cpu")
        self.present_of = [p.replace("present", "past_key_values") for p in lm.present_names]

    def _run_step(self) -> list:
        for name, val in self.past.items():
            self.io.bind_ortvalue_input(name, val)
        for name in self.lm.present_names:
            self.io.bind_output(name, "cpu")
        self._run()
        outs = self.io.get_outputs()
        self.past = dict(zip(self.present_of, outs[1:]))
        return outs

    def prefill(self, all_positions: bool = False) -> np.ndarray:
        self._bind_tokens(self.prompt, 0)
        outs = self._run_step()
        logits = outs[0].numpy()
        self.total = self.n_prompt
        self._bind_array("logits", self.row, output=True)
        self._bind_array("input_ids", self.token)
        return logits[0] if all_positions else logits[0, -1]

    def next(self, token: int) -> np.ndarray:
        self.token[0, 0] = token
        self._bind_array("attention_mask", self.mask, (1, self.total + 1))
        if self.lm.has_pos:
            self._bind_array("position_ids", self.positions[:, self.total:self.total + 1])
        self._run_step()
        self.total += 1
        return self.row[0, 0]


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
        # AdapterHub (adapters 1.3) bottleneck adapters decode garbage from the second token on when
        # generate() reuses the KV cache (teacher-forced and cache-free outputs are right): recompute.
        self.use_cache = not hasattr(self.model, "adapters_config")

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
                                    eos_token_id=list(eos_ids), pad_token_id=pad, use_cache=self.use_cache)
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
                if self.use_cache:
                    out = self.model(input_ids=nxt, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                else:  # see __init__: the whole sequence again
                    ids = torch.cat([ids, nxt], dim=1)
                    out = self.model(input_ids=ids, use_cache=False)
                steps.append(time.perf_counter() - t)
                nxt = out.logits[:, -1:].argmax(-1)
        return ttft, steps


def load_lm(path: Path, fmt: str, threads: int = 1) -> CausalLM:
    if fmt == "onnx":
        return OrtLM(path, threads)
    if fmt == "pytorch":
        return TorchLM(path, threads)
    if fmt == "torchscript":
        from edgeft.runtime.torchscript import TorchScriptLM

        return TorchScriptLM(path, threads)
    if fmt == "genai":
        from edgeft.runtime.genai import GenaiLM

        return GenaiLM(path, threads)
    if fmt == "gguf":
        from edgeft.runtime.llamacpp import LlamaCppLM

        return LlamaCppLM(path, threads)
    if fmt == "pte":
        from edgeft.runtime.executorch import ExecuTorchLM

        return ExecuTorchLM(path, threads)
    raise ModelSourceError(f"{path}: no runtime for format {fmt!r} "
                           "(supported: onnx, pytorch, torchscript, genai, gguf, pte)")
