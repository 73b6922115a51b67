"""The ONNX Runtime core: session options, the greedy KV-cache decode loop, the encoder pass, latency statistics.

One module for the host and the device. :class:`edgeft.runtime.lm.OrtLM`,
:class:`edgeft.runtime.encoder.OrtEncoder` and :mod:`edgeft.runtime.bench` use it inside the
package; :mod:`edgeft.runtime.remote_runner` is copied to a measured device together with this
file (:data:`edgeft.validate.remote.RUNNER_FILES`) and imports it from beside itself. So this file
may import only the standard library, numpy and onnxruntime at module level (``onnx`` only inside
:func:`has_shared_kv_attention`, which the device can skip); nothing from edgeft except the error
class, and that with a stand-in where edgeft is not installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

try:  # inside the package: the error the CLI maps to its exit code
    from edgeft.errors import ModelSourceError as GraphError
except ImportError:  # on a device without edgeft (remote_runner.py)
    class GraphError(Exception):  # type: ignore[no-redef]
        """The graph or its folder cannot be run (missing file, not a decoder/encoder graph)."""

KV_DTYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32}
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


# --------------------------------------------------------------------------- files and sessions


def find_onnx(path: Path) -> Path:
    """The graph to run: ``path`` itself, a well-known name in the folder, or its first *.onnx."""
    path = Path(path)
    if path.is_file():
        return path
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if not found:
        raise GraphError(f"{path}: no .onnx file in this folder; export the model first (`edgeft export`)")
    return found[0]


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


def cpu_session(path: Path, threads: int, spinning: bool | None = None, opt_level: str = "all"):
    """An ``InferenceSession`` on the CPU provider with :func:`session_options`."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads, spinning, opt_level),
                                providers=["CPUExecutionProvider"])


def has_shared_kv_attention(path: Path) -> bool:
    """True for graphs whose attention is ORT's GroupQueryAttention (onnxruntime-genai's model builder).

    GQA reads the past and writes the present in one buffer of fixed capacity, so the decode loop
    can allocate the KV cache once. Only the graph structure is read (no external weight data).
    Needs the ``onnx`` package; a device without it is told the answer (``shared_kv=``).
    """
    try:
        import onnx
    except ImportError as e:
        raise GraphError(f"{path}: telling a GroupQueryAttention graph apart needs the onnx package ({e}); "
                         "install it or pass shared_kv (remote_runner.py --shared-kv 0|1)") from e
    return graph_has_shared_kv(onnx.load(str(path), load_external_data=False).graph)


def graph_has_shared_kv(graph) -> bool:
    """True when an ``onnx.GraphProto`` computes attention with GroupQueryAttention (see above)."""
    return any(n.op_type == "GroupQueryAttention" for n in graph.node)


def head_dim_from_config(folder: Path, graph: Path) -> int:
    """KV head size from the config files beside a graph whose KV inputs leave it symbolic."""
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
    raise GraphError(f"{graph}: KV head size is symbolic and no config.json/genai_config.json "
                     "next to the graph says it; keep the config files with the model")


CONFIG_FILES = ("genai_config.json", "config.json")  # read by head_dim_from_config: ship them with the graph


# --------------------------------------------------------------------------- greedy decoding


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


def greedy_pairs(row: np.ndarray, step: Callable[[int], np.ndarray], new_tokens: int, eos: set[int]):
    """Greedy ``(token, logits row)`` pairs from a first row and ``step(token)`` (the next row): the argmax each time,
    stopping after an eos token or ``new_tokens`` tokens. The loop of ``CausalLM.greedy_stream``."""
    for i in range(new_tokens):
        token = int(np.asarray(row).argmax())
        yield token, row
        if token in eos or i == new_tokens - 1:
            return
        row = step(token)


def lookup_draft(history: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Prompt-lookup draft: the (up to) ``k`` tokens that followed the latest earlier occurrence of the longest
    trailing n-gram of ``history`` (n from ``max_ngram`` down to 1); empty when no n-gram recurs."""
    n_hist = len(history)
    if k <= 0:
        return []
    for n in range(min(max_ngram, n_hist - 1), 0, -1):
        tail = list(history[n_hist - n:])
        for start in range(n_hist - n - 1, -1, -1):
            if history[start] == tail[0] and list(history[start:start + n]) == tail:
                return list(history[start + n:start + n + k])
    return []


DRAFTS_FILE = "drafts.json"  # beside a decoder graph: n-gram drafts its runtime speculates with by default
DEFAULT_LOOKAHEAD = 4  # draft tokens verified per pass when drafts.json is there (docs/benchmarks.md)


class NgramDrafts:
    """Draft tokens from reference sequences (a task's training answers, say): for the last 3, 2 or 1 tokens
    of the history (the longest context seen in the references first), the token that followed them most
    often, chained up to ``k`` tokens. A unigram context must have been seen ``min_count`` times."""

    def __init__(self, sequences: Sequence[Sequence[int]], max_ngram: int = 3, min_count: int = 2) -> None:
        from collections import Counter

        self.max_ngram, self.min_count = max_ngram, min_count
        counts: dict[tuple, Counter] = {}
        for seq in sequences:
            seq = [int(t) for t in seq]
            for n in range(1, max_ngram + 1):
                for i in range(len(seq) - n):
                    counts.setdefault(tuple(seq[i:i + n]), Counter())[seq[i + n]] += 1
        self.next = {key: c.most_common(1)[0] for key, c in counts.items()}

    def save(self, path: Path) -> None:
        """Write the table as ``drafts.json`` (:data:`DRAFTS_FILE`): each context with its next token and count."""
        table = [[list(key), tok, count] for key, (tok, count) in sorted(self.next.items())]
        Path(path).write_text(json.dumps({"schema_version": 1, "max_ngram": self.max_ngram,
                                          "min_count": self.min_count, "next": table}))

    @classmethod
    def load(cls, path: Path) -> "NgramDrafts":
        try:
            d = json.loads(Path(path).read_text())
            self = cls([], int(d["max_ngram"]), int(d["min_count"]))
            self.next = {tuple(int(t) for t in key): (int(tok), int(count)) for key, tok, count in d["next"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GraphError(f"{path}: not a drafts table ({e}); delete it, or re-run the export stage") from e
        return self

    def draft(self, history: Sequence[int], k: int) -> list[int]:
        hist = [int(t) for t in history[-self.max_ngram:]]
        out: list[int] = []
        while len(out) < k:
            for n in range(min(self.max_ngram, len(hist)), 0, -1):
                hit = self.next.get(tuple(hist[len(hist) - n:]))
                if hit and (n > 1 or hit[1] >= self.min_count):
                    out.append(hit[0])
                    hist = hist[1:] + [hit[0]] if len(hist) >= self.max_ngram else hist + [hit[0]]
                    break
            else:
                break
        return out


def lookup_passes(prefill: Callable[[], np.ndarray], feed: Callable[[list[int]], np.ndarray],
                  drop: Callable[[int], None], prompt: Sequence[int], new_tokens: int, eos: set[int] | None,
                  k: int, max_ngram: int = 3, drafts: NgramDrafts | None = None, stats: dict | None = None):
    """Greedy decoding with prompt-lookup speculation, one forward pass at a time: a generator that yields, per
    pass, the ``(token, logits row)`` pairs it decided (the prefill's one token, then 1 to ``k`` + 1 per pass).

    Each pass feeds the last token plus up to ``k`` draft tokens (:func:`lookup_draft` over prompt and output)
    in one forward pass; ``feed(tokens)`` returns one logits row per fed token (row i: the prediction after
    token i). Drafts are accepted while they equal the model's own argmax; the first mismatch is replaced
    by the argmax, and ``drop(n)`` removes the rejected drafts from the KV cache. When the history has no
    repeat, ``drafts`` (:class:`NgramDrafts`), if given, proposes the draft. An eos token, when chosen, is
    the last pair yielded; at most ``new_tokens`` tokens in all. ``stats`` (a dict), if given, counts
    passes, drafted and accepted tokens. A pass's rows may be views of the runtime's output buffers: read them
    before asking for the next pass."""
    stats = stats if stats is not None else {}
    for key in ("passes", "drafted", "accepted"):
        stats.setdefault(key, 0)
    hist = [int(t) for t in prompt]
    row = prefill()
    nxt = int(row.argmax())
    n_out = 1
    yield [(nxt, row)]
    while (eos is None or nxt not in eos) and n_out < new_tokens:
        hist.append(nxt)
        budget = min(k, new_tokens - n_out - 1)
        draft = lookup_draft(hist, budget, max_ngram)
        if not draft and drafts is not None:
            draft = drafts.draft(hist, budget)
        rows = feed([nxt] + draft)
        preds = rows.argmax(-1)
        ok = 0
        while ok < len(draft) and int(preds[ok]) == draft[ok] and (eos is None or draft[ok] not in eos):
            ok += 1
        if len(draft) > ok:
            drop(len(draft) - ok)
        hist.extend(draft[:ok])
        nxt = int(preds[ok])
        n_out += ok + 1
        stats["passes"] += 1
        stats["drafted"] += len(draft)
        stats["accepted"] += ok
        yield [(draft[i], rows[i]) for i in range(ok)] + [(nxt, rows[ok])]


def lookup_decode(prefill: Callable[[], np.ndarray], feed: Callable[[list[int]], np.ndarray],
                  drop: Callable[[int], None], prompt: Sequence[int], new_tokens: int, eos: set[int] | None,
                  k: int, max_ngram: int = 3,
                  drafts: NgramDrafts | None = None) -> tuple[list[int], float, list[float], dict]:
    """Greedy decoding with prompt-lookup speculation (:func:`lookup_passes`), token for token the same as
    :func:`greedy_decode` up to float rounding (a pass over several positions can break a near-tie of the top
    two logits differently). A pass's time is spread evenly over the tokens it emitted, so ``steps`` has one
    entry per token after the first, as in :func:`greedy_decode`. Returns (tokens, ttft_s, steps, stats:
    passes, drafted, accepted)."""
    out: list[int] = []
    steps: list[float] = []
    stats: dict = {}
    passes = lookup_passes(prefill, feed, drop, prompt, new_tokens, eos, k, max_ngram, drafts, stats)
    t0 = time.perf_counter()
    decided = next(passes)
    ttft = time.perf_counter() - t0
    while True:
        out.extend(t for t, _ in decided if eos is None or t not in eos)
        t = time.perf_counter()
        decided = next(passes, None)
        if decided is None:
            break
        steps.extend([(time.perf_counter() - t) / len(decided)] * len(decided))
    return out, ttft, steps, stats


class OrtDecoder:
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
    ``shared_kv`` says whether the graph is a GroupQueryAttention one; ``None`` reads the graph (onnx).

    ``lookahead=k`` (> 0) decodes with prompt-lookup speculation (:func:`lookup_decode`): up to ``k`` tokens
    copied from earlier in the prompt or output are verified in one forward pass; the tokens are exactly
    greedy's; ``drafts`` (:class:`NgramDrafts`, e.g. from the task's training answers) drafts when the
    history has no repeat. ``last_stats`` holds the last decode's passes, drafted and accepted counts.
    ``lookahead=None`` (default) is the artifact's own choice: ``DEFAULT_LOOKAHEAD`` with the drafts of a
    ``drafts.json`` beside the graph (``export.drafts`` writes it from the training answers), else plain greedy;
    an explicit ``lookahead`` ignores that file.
    """

    def __init__(self, path: Path, threads: int = 1, io_binding: bool | None = None, spinning: bool | None = None,
                 opt_level: str = "all", shared_kv: bool | None = None, lookahead: int | None = None,
                 lookup_ngram: int = 3, drafts: "NgramDrafts | None" = None) -> None:
        self.lookup_ngram = int(lookup_ngram)
        self.last_stats: dict = {}
        self.path = find_onnx(path)
        table = self.path.parent / DRAFTS_FILE
        if lookahead is None:  # the artifact's default: speculate when its export shipped a drafts table
            lookahead = DEFAULT_LOOKAHEAD if (drafts is not None or table.is_file()) else 0
            if drafts is None and table.is_file():
                drafts = NgramDrafts.load(table)
        self.lookahead, self.drafts = int(lookahead), drafts
        self.name = str(path)
        self.threads = threads
        self.sess = cpu_session(self.path, threads, spinning, opt_level)
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values")]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.present_names = [n for n in self.output_names if n.startswith("present")]
        if "input_ids" not in self.inputs or "logits" not in self.output_names:
            raise GraphError(f"{self.path}: not a causal-LM graph (needs input_ids -> logits)")
        if len(self.past_names) != len(self.present_names):
            raise GraphError(f"{self.path}: past/present KV inputs and outputs do not pair up")
        for p in self.past_names:
            if p.replace("past_key_values", "present") not in self.output_names:
                raise GraphError(f"{self.path}: input {p} has no matching present output")
        first = self.inputs[self.past_names[0]] if self.past_names else None
        self.kv_heads = first.shape[1] if first else 0
        self.head_dim = first.shape[3] if first else 0
        if first is not None and not isinstance(self.head_dim, int):
            self.head_dim = head_dim_from_config(self.path.parent, self.path)
        self.kv_dtype = KV_DTYPES.get(first.type, np.float32) if first else np.float32
        self.has_pos = "position_ids" in self.inputs
        if shared_kv is None:
            shared_kv = bool(self.past_names) and has_shared_kv_attention(self.path)
        self.shared_kv = bool(self.past_names) and shared_kv
        self.io_binding = self.shared_kv if io_binding is None else io_binding
        self.vocab = self.sess.get_outputs()[self.output_names.index("logits")].shape[-1]

    # ------------------------------------------------------------------ plain loop (reference)
    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """An empty KV cache (sequence length 0) for ``batch`` sequences."""
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

    def _loop(self, prompt: Sequence[int], new_tokens: int) -> tuple[Callable[[], np.ndarray], Callable[[int], np.ndarray]]:
        """``(prefill, step)`` for one sequence of up to ``new_tokens`` new tokens: ``prefill()`` runs the prompt and
        returns the logits row after it, ``step(token)`` feeds one token and returns the next row. Each call of
        ``_loop`` has its own cache, so several sequences may decode at once (from several threads) on one session."""
        ids = np.asarray(prompt, np.int64)[None, :]
        if not self.io_binding:
            state = {"mask": np.ones_like(ids), "past": self.empty_past(1)}

            def run(tokens: np.ndarray) -> np.ndarray:
                logits, state["past"] = self.step(tokens, state["mask"], state["past"])
                return logits[0, -1]

            def step(token: int) -> np.ndarray:
                state["mask"] = np.concatenate([state["mask"], np.ones((1, 1), np.int64)], axis=1)
                return run(np.asarray([[token]], np.int64))

            return (lambda: run(ids)), step
        bound = {}

        def prefill() -> np.ndarray:
            bound["dec"] = self._bound(ids, ids.shape[1] + new_tokens)
            return bound["dec"].prefill()

        return prefill, lambda token: bound["dec"].next(token)

    def _multi_loop(self, prompt: Sequence[int], new_tokens: int):
        """``(prefill, feed, drop)`` for :func:`lookup_decode`: ``feed(tokens)`` runs several tokens in one pass and
        returns their logits rows, ``drop(n)`` forgets the last ``n`` of them (the plain loop slices its numpy
        cache; the shared-KV buffer moves its length back; the chained loop re-slices its OrtValues)."""
        ids = np.asarray(prompt, np.int64)[None, :]
        if not self.io_binding:
            state = {"mask": np.ones_like(ids), "past": self.empty_past(1)}

            def run(tokens: np.ndarray) -> np.ndarray:
                logits, state["past"] = self.step(tokens, state["mask"], state["past"])
                return logits[0]

            def feed(tokens: list[int]) -> np.ndarray:
                state["mask"] = np.ones((1, state["mask"].shape[1] + len(tokens)), np.int64)
                return run(np.asarray([tokens], np.int64))

            def drop(n: int) -> None:
                state["mask"] = state["mask"][:, :-n]
                state["past"] = {k: v[:, :, :-n] for k, v in state["past"].items()}

            return (lambda: run(ids)[-1]), feed, drop
        bound = {}

        def prefill() -> np.ndarray:
            bound["dec"] = self._bound(ids, ids.shape[1] + new_tokens)
            return bound["dec"].prefill()

        return prefill, (lambda tokens: bound["dec"].feed(tokens)), (lambda n: bound["dec"].drop(n))

    def decode(self, prompt: Sequence[int], new_tokens: int, eos: set[int] | None):
        """Greedy decode of one prompt (with prompt-lookup speculation when ``lookahead`` > 0); returns
        (tokens, ttft_s, per-token seconds)."""
        if self.lookahead > 0:
            prefill, feed, drop = self._multi_loop(prompt, new_tokens)
            tokens, ttft, steps, self.last_stats = lookup_decode(prefill, feed, drop, prompt, new_tokens, eos,
                                                                 self.lookahead, self.lookup_ngram, self.drafts)
            return tokens, ttft, steps
        prefill, step = self._loop(prompt, new_tokens)
        return greedy_decode(prefill, step, new_tokens, eos)

    def greedy_stream(self, prompt: Sequence[int], max_new_tokens: int, eos: set[int]):
        """Greedy ``(token, logits row)`` pairs (``CausalLM.greedy_stream``) through :meth:`decode`'s loop: speculative
        (:func:`lookup_passes`) when ``lookahead`` > 0, as with a shipped ``drafts.json``; one token per pass
        otherwise. What ``edgeft serve`` decodes greedy requests with, so a streamed answer is validate's."""
        if self.lookahead > 0:
            prefill, feed, drop = self._multi_loop(prompt, max_new_tokens)
            for decided in lookup_passes(prefill, feed, drop, prompt, max_new_tokens, eos, self.lookahead,
                                         self.lookup_ngram, self.drafts):
                yield from decided
            return
        prefill, step = self._loop(prompt, max_new_tokens)
        yield from greedy_pairs(prefill(), step, max_new_tokens, eos)

    def logit_stream(self, prompt: Sequence[int], max_new_tokens: int):
        """The logits rows of a decode whose tokens the caller picks (sampling, stop strings, streaming): a
        generator that yields the row after the prompt, then, for each token passed in with ``send(token)``, the
        row after it; at most ``max_new_tokens`` rows. KV-cached (see :meth:`_loop`)."""
        prefill, step = self._loop(prompt, max_new_tokens)
        token = yield prefill()
        for _ in range(max_new_tokens - 1):
            token = yield step(int(token))

    # ------------------------------------------------------------------ CausalLM methods
    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [seq, vocab] (float32) for one sequence of token ids [seq]."""
        ids = np.asarray(input_ids, np.int64)[None, :]
        if self.io_binding and self.shared_kv:
            return self._bound(ids, ids.shape[1]).prefill(all_positions=True).astype(np.float32)
        logits, _ = self.step(ids, np.ones_like(ids), self.empty_past(1))
        return logits[0].astype(np.float32)

    def generate(self, prompts, max_new_tokens, eos_ids):
        """Greedy continuation of each prompt.

        Prompts run one at a time: on a CPU a batch of left-padded prompts costs as much as the
        prompts one by one, and GroupQueryAttention's shared KV buffer has no notion of left padding.
        """
        eos = set(int(e) for e in eos_ids)
        return [self.decode(p, max_new_tokens, eos)[0] for p in prompts]

    def timed_generate(self, prompt, new_tokens):
        """Exactly ``new_tokens`` greedy tokens (EOS ignored). TTFT is prefill + first argmax; each
        step is one decode run + its argmax."""
        _, ttft, steps = self.decode(prompt, new_tokens, None)
        return ttft, steps


class _BoundDecoder:
    """Shared state of the IO-bound loops: the binding, the token and mask buffers, the logits row."""

    def __init__(self, lm: OrtDecoder, prompt: np.ndarray, capacity: int) -> None:
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

    def __init__(self, lm: OrtDecoder, prompt: np.ndarray, capacity: int) -> None:
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

    def feed(self, tokens: list[int]) -> np.ndarray:
        n = len(tokens)
        if self.total + n > self.capacity:
            raise GraphError(f"{self.lm.path}: KV buffer of {self.capacity} tokens is full")
        ids = np.asarray([tokens], np.int64)
        rows = np.empty((1, n, self.lm.vocab), np.float32)
        self._bind_tokens(ids, self.total)
        self._bind_array("logits", rows, output=True)
        self._run()
        self.total += n
        return rows[0]

    def drop(self, n: int) -> None:
        self.total -= n  # the stale rows past the length are masked out and overwritten by the next pass

    def next(self, token: int) -> np.ndarray:
        if self.total >= self.capacity:
            raise GraphError(f"{self.lm.path}: KV buffer of {self.capacity} tokens is full")
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

    def __init__(self, lm: OrtDecoder, prompt: np.ndarray, capacity: int) -> None:
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

    def feed(self, tokens: list[int]) -> np.ndarray:
        ids = np.asarray([tokens], np.int64)
        self._bind_tokens(ids, self.total)
        self.io.bind_output("logits", "cpu")
        outs = self._run_step()
        self.total += len(tokens)
        return outs[0].numpy()[0]

    def drop(self, n: int) -> None:
        import onnxruntime as ort

        self.total -= n
        self.past = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :self.total]))
                     for k, v in self.past.items()}

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


# --------------------------------------------------------------------------- encoders


def encoder_feeds(inputs: dict[str, str], batch: int, seq: int, where: Path | str = "graph") -> dict[str, np.ndarray]:
    """Synthetic feeds for ``inputs`` (name -> ORT type string): ids 100.. , mask ones, token types zeros."""
    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be >= 1 (got batch={batch}, seq={seq})")
    feeds = {}
    for name, typ in inputs.items():
        if name not in ENCODER_INPUTS:
            raise GraphError(f"{where}: input {name!r} is not an encoder input "
                             f"(expected only {', '.join(ENCODER_INPUTS)}); is this an encoder graph?")
        dtype = INT_TYPES.get(typ)
        if dtype is None:
            raise GraphError(f"{where}: input {name!r} has type {typ}; expected tensor(int64) or tensor(int32)")
        if name == "input_ids":
            # 100..199 repeating: clear of the usual special-token ids and inside any real vocabulary
            arr = 100 + np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) % 100
        elif name == "attention_mask":
            arr = np.ones((batch, seq), np.int64)
        else:
            arr = np.zeros((batch, seq), np.int64)
        feeds[name] = arr.astype(dtype)
    if "input_ids" not in feeds:
        raise GraphError(f"{where}: no input_ids input; not an encoder graph")
    return feeds


class OrtEncoder:
    """An encoder graph on ONNX Runtime's CPU provider with a fixed intra-op thread count."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = find_onnx(Path(path))
        self.name = str(path)
        self.threads = threads
        self.sess = cpu_session(self.path, threads)
        self.inputs = {i.name: i.type for i in self.sess.get_inputs()}
        if any(n.startswith("past_key_values") for n in self.inputs):
            raise GraphError(f"{self.path}: has past_key_values inputs; this is a decoder, not an encoder")
        encoder_feeds(self.inputs, 1, 1, self.path)  # name/type check up front
        self._feeds: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def feeds(self, batch: int, seq: int) -> dict[str, np.ndarray]:
        key = (batch, seq)
        if key not in self._feeds:
            self._feeds[key] = encoder_feeds(self.inputs, batch, seq, self.path)
        return self._feeds[key]

    def run(self, batch: int, seq: int) -> list[np.ndarray]:
        return self.sess.run(None, self.feeds(batch, seq))

    def timed_inference(self, batch: int, seq: int) -> float:
        """Seconds for one forward pass over a [batch, seq] input (feeds are built outside the timing)."""
        feeds = self.feeds(batch, seq)
        t0 = time.perf_counter()
        self.sess.run(None, feeds)
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- latency runs and statistics


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, np.float64), q))


def summarize(ttfts: list[float], steps: list[list[float]]) -> dict:
    """p50/p95 of TTFT over runs; decode tok/s from the median per-token time over all decode steps."""
    flat = [s for run in steps for s in run]
    return {"ttft_ms_p50": 1e3 * percentile(ttfts, 50), "ttft_ms_p95": 1e3 * percentile(ttfts, 95),
            "per_token_ms_p50": 1e3 * percentile(flat, 50), "per_token_ms_p95": 1e3 * percentile(flat, 95),
            "decode_tok_s": 1.0 / percentile(flat, 50), "runs": len(ttfts), "decode_steps": len(flat),
            "samples_ms": [round(1e3 * s, 3) for s in flat], "ttft_samples_ms": [round(1e3 * t, 3) for t in ttfts]}


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB.

    Linux keeps ru_maxrss across fork+exec, so a child started by a big parent would report the
    parent's peak; VmHWM in /proc/self/status belongs to the new address space only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_runs(lm, prompt: list[int], new_tokens: int, warmup: int, repeats: int, threads: int,
               load_s: float) -> dict:
    """``warmup`` untimed then ``repeats`` timed ``lm.timed_generate`` calls, summarized (any CausalLM)."""
    for _ in range(warmup):
        lm.timed_generate(prompt, new_tokens)
    ttfts, steps = [], []
    for _ in range(repeats):
        ttft, st = lm.timed_generate(prompt, new_tokens)
        ttfts.append(ttft)
        steps.append(st)
    out = summarize(ttfts, steps)
    out.update({"threads": threads, "prompt_tokens": len(prompt), "new_tokens": new_tokens, "warmup": warmup,
                "load_seconds": load_s, "peak_rss_mb": peak_rss_mb()})
    return out


def timed_encoder_runs(enc: OrtEncoder, batch: int, seq: int, warmup: int, repeats: int, load_s: float) -> dict:
    """Per-inference latency: ``warmup`` untimed passes, then ``repeats`` timed ones."""
    for _ in range(warmup):
        enc.timed_inference(batch, seq)
    samples = [enc.timed_inference(batch, seq) for _ in range(repeats)]
    return {"kind": "encoder", "per_inference_ms_p50": 1e3 * percentile(samples, 50),
            "per_inference_ms_p95": 1e3 * percentile(samples, 95), "samples_ms": [round(1e3 * s, 3) for s in samples],
            "batch": batch, "seq_len": seq, "threads": enc.threads, "warmup": warmup, "runs": len(samples),
            "load_seconds": load_s, "peak_rss_mb": peak_rss_mb()}
