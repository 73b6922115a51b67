"""``auto``: accuracy-aware mixed precision for MatMul weights, under perplexity / KL / size / task budgets.

1. Candidates: a precision ladder per MatMul, most aggressive first (default int4/b32 → int4/b16 →
   int8/b32 → fp32). int4 rungs use GPTQ (``algo: gptq``) or RTN, int8 rungs RTN.
2. One fp32 pass over the calibration windows captures every target MatMul's input activations
   (Σxxᵀ per distinct input, as ``int4-gptq`` does) and the reference logits of the check windows.
   GPTQ codes for every int4 rung come from one sweep per distinct input over all the MatMuls that
   read it and all rungs (:func:`~edgeft.quantize.schemes.gptq.gptq_many`).
3. Sensitivity of each group (a decoder layer's attention or MLP with ``granularity: block``, or
   each MatMul) on each quantized rung:

   - ``sensitivity: proxy`` (default): the output error the rung's codes leave on the calibration
     activations, ‖X(W − Ŵ)‖² per token = tr(ΔW H ΔWᵀ) with H = XᵀX/n, summed over the group's
     MatMuls and divided by the median norm of the residual stream its block adds to (the next
     RMSNorm divides by that norm; the same pass captures it). GPTQ rungs give the error for free
     (read off the sweep), RTN rungs cost one product with H; no forward pass per rung.
   - ``sensitivity: measured``: the group alone on the rung, the rest fp32, and the KL increase vs
     fp32 on ``sensitivity_windows`` (one ONNX Runtime session whose weights are overridable
     initializers; each trial feeds the dequantized weights of its group). One forward pass per
     group and rung: minutes to tens of minutes on a 100M-parameter model.
4. Search: an upgrade path from every group on the first rung: each step moves the one group
   whose next rung buys the most sensitivity per added byte (a greedy multiple-choice knapsack), so
   each prefix is the smallest plan found for its error. A binary search along the path (cut where
   the predicted size passes ``max_size_mb``) finds the first plan meeting the budget on the
   ``check_windows`` (further calibration windows, disjoint from the sensitivity ones); with
   ``fill_size`` the last plan within ``max_size_mb``, topped up with the best upgrades that still fit.
5. Build the real MatMulNBits artifact from the plan and re-check the budget on it (MatMulNBits
   with ``accuracy_level`` 4 also rounds activations); walk further along the path if it fails;
   with ``fill_size``, step back when the real file passes ``max_size_mb``.

Budgets: ``max_ppl_increase_pct`` (on the check windows, vs the fp32 input), optional ``max_kl``
(mean KL per token vs the input's logits), ``max_size_mb`` (the artifact; checked on the real
file, and since every fallback grows it, exceeding it ends the search) and ``max_task_drop`` with a ``task_metric`` callable
(Python API: ``task_metric(lm) -> float``, higher is better, ``lm`` an
:class:`~edgeft.runtime.lm.CausalLM`). No plan within the budget raises
:class:`~edgeft.errors.BudgetError` with the best reached. The plan (layer → precision,
sensitivities, budget, what was reached, the predicted quality next to the measured one) is written
to ``quant_plan.json`` next to the model and returned into ``quantize_report.json``; when
:func:`edgeft.quantize.quantize` scores the artifact on held-out text, that perplexity is added to
both (:func:`record_heldout`), so calibration and held-out numbers sit side by side.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from edgeft.config.options import Options
from edgeft.errors import BudgetError, ConfigError
from edgeft.quantize.registry import SCHEMES, Scheme
from edgeft.quantize.schemes import gptq as gq
from edgeft.quantize.schemes import matmulnbits as mnb

log = logging.getLogger(__name__)


class AutoOptions(Options):
    """Options of auto: the budget, the precision ladder and how the search measures."""

    owner: ClassVar[str] = "quantize scheme auto"
    max_ppl_increase_pct: float = Field(5.0, description="budget: perplexity increase vs the fp32 input on the check "
                                                         "windows, percent")
    max_kl: Optional[float] = Field(None, ge=0, description="budget (optional): mean KL per token vs the fp32 input's "
                                                            "logits on the check windows")
    max_task_drop: Optional[float] = Field(None, description="budget (optional): largest drop of task_metric vs the "
                                                             "fp32 input")
    max_size_mb: Optional[float] = Field(None, gt=0, description="budget (optional): artifact size in MB (10^6 bytes); "
                                                                 "falling back only grows it")
    task_metric: SkipJsonSchema[Optional[Callable[[Any], float]]] = Field(
        None, description="callable(lm) -> float, higher is better (Python API); needed by max_task_drop")
    candidates: list[str] = Field(default_factory=lambda: ["int4/b32", "int4/b16", "int8/b32", "fp32"], min_length=1,
                                  description="precision ladder per MatMul, most aggressive first: intN/bB[/asym] or "
                                              "fp32")
    algo: Literal["gptq", "rtn"] = Field("gptq", description="int4 rungs: gptq (calibrated) or rtn")
    granularity: Literal["block", "matmul"] = Field(
        "block", description="fall back per block (a layer's attention or MLP MatMuls) or per matmul")
    sensitivity: Literal["proxy", "measured"] = Field(
        "proxy", description="per-group sensitivity: proxy (the output error each rung leaves on the calibration "
                             "activations, tr(dW H dW^T), over the residual norm; seconds) or measured (KL of a "
                             "forward pass per group and rung on sensitivity_windows; minutes)")
    sensitivity_windows: int = Field(4, ge=1, description="calibration windows for the measured per-group sensitivity "
                                                          "(the first ones; the check windows follow them)")
    check_windows: int = Field(4, ge=1, description="further calibration windows on which the budget is checked")
    symmetric: bool = Field(True, description="symmetric blocks (no zero point) unless a candidate says /asym")
    damp: float = Field(0.01, ge=0, lt=1, description="GPTQ dampening (fraction of the mean Hessian diagonal)")
    act_order: bool = Field(False, description="GPTQ visits columns by decreasing Hessian diagonal (static group "
                                               "scales)")
    accuracy_level: mnb.AccuracyLevel = Field(4, description=mnb.ACCURACY_LEVEL_HELP)
    nodes_to_exclude: list[str] = Field(default_factory=list, description="MatMul node names kept in fp32")
    fill_size: bool = Field(False, description="with max_size_mb: take the lowest-error plan within the size budget "
                                               "(not the smallest plan meeting the error budget), then check the "
                                               "budgets on it")
    plan_from: Optional[str] = Field(
        None, description="apply the per-block plan of a quant_plan.json measured on another export of the same model "
                          "(layers matched by index and attention/MLP), skipping the search; budgets are still "
                          "checked")
    sensitivity_from: Optional[str] = Field(
        None, description="sensitivity: measured only: a previous quant_plan.json of the same model, calibration and "
                          "settings: its measured rungs are reused, only new rungs are measured")
    lm_head: mnb.HeadChoice = Field("keep", description="LM head: keep, int8 or int4 (RTN, block of the first "
                                                        "candidate; not searched)")
    embeddings: mnb.HeadChoice = Field("keep", description="token embedding: keep, int8 or int4 (RTN; shared with a "
                                                           "tied head of the same bits)")

    @field_validator("candidates")
    @classmethod
    def _ladder(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                parse_candidate(text, True)
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("auto: ")) from None
        return value

    @model_validator(mode="after")
    def _budgets(self):
        if self.max_task_drop is not None and self.task_metric is None:
            raise ValueError("max_task_drop needs task_metric, a callable(lm) -> float (Python API)")
        if self.fill_size and self.max_size_mb is None:
            raise ValueError("fill_size needs max_size_mb (the size budget to fill)")
        if self.sensitivity_from is not None and self.sensitivity != "measured":
            raise ValueError("sensitivity_from reuses measured rungs: set sensitivity: measured")
        return self


def parse_candidate(text: str, symmetric: bool) -> mnb.WeightQuant | None:
    """``int4/b32`` → WeightQuant(4, 32, symmetric); ``/asym`` or ``/sym`` override; ``fp32`` → None."""
    parts = str(text).lower().split("/")
    if parts == ["fp32"]:
        return None
    bad = ConfigError(f"auto: candidate {text!r}: expected intN/bB[/asym|/sym] with N in (4, 8), e.g. int4/b32, "
                      "or fp32")
    if parts[0] not in ("int4", "int8") or len(parts) < 2 or not parts[1].startswith("b"):
        raise bad
    try:
        block = int(parts[1][1:])
    except ValueError:
        raise bad from None
    sym = symmetric
    for p in parts[2:]:
        if p not in ("asym", "sym"):
            raise bad
        sym = p == "sym"
    mnb.check_block_size(block)
    return mnb.WeightQuant(int(parts[0][3:]), block, sym)


def group_of(node_name: str, granularity: str) -> str:
    if granularity == "matmul":
        return node_name
    parts = node_name.rstrip("/").split("/")
    return "/".join(parts[:-2]) if len(parts) > 3 else node_name


def weight_bytes(shape: tuple[int, int], wq: mnb.WeightQuant | None) -> int:
    """Bytes a [K, N] weight takes as a MatMulNBits (packed codes, fp32 scales, packed zero points) or fp32."""
    k, n = shape
    if wq is None:
        return 4 * k * n
    kb = -(-k // wq.block_size)
    zp = 0 if wq.symmetric else n * -(-kb * wq.bits // 8)
    return n * kb * wq.block_size * wq.bits // 8 + 4 * n * kb + zp


def _field_bytes(payload: int) -> int:
    """Bytes of a length-delimited protobuf field (field number < 16) with a ``payload``-byte body."""
    varint = 1
    while payload >= 128 ** varint:
        varint += 1
    return 1 + varint + payload


def rewrite_overhead(node, init, wq: mnb.WeightQuant, accuracy_level: int) -> int:
    """Bytes the rewrite of MatMul ``node`` (fp32 weight ``init``) into a MatMulNBits adds to the saved
    model beyond :func:`weight_bytes`: the new node and its initializers' headers, less the MatMul and
    the fp32 initializer's header (names as :func:`~edgeft.quantize.schemes.matmulnbits.replace_matmuls`
    writes them)."""
    import onnx
    from onnx import TensorProto, helper

    k, n = init.dims
    kb = -(-k // wq.block_size)
    base = node.input[1] + f"_{node.name.strip('/').replace('/', '_')}"
    tensors = [(f"{base}_Q{wq.bits}", [n, kb, wq.block_size * wq.bits // 8], TensorProto.UINT8),
               (f"{base}_scales", [n, kb], TensorProto.FLOAT)]
    if not wq.symmetric:
        tensors.append((f"{base}_zero_points", [n, -(-kb * wq.bits // 8)], TensorProto.UINT8))
    attrs = {"K": k, "N": n, "bits": wq.bits, "block_size": wq.block_size}
    if accuracy_level:
        attrs["accuracy_level"] = int(accuracy_level)
    new = helper.make_node("MatMulNBits", [node.input[0]] + [t[0] for t in tensors], [node.output[0]],
                           name=node.name + f"_Q{wq.bits}", domain="com.microsoft", **attrs)
    added = _field_bytes(new.ByteSize()) - _field_bytes(node.ByteSize())
    for name, dims, dtype in tensors:
        data = int(np.prod(dims)) * (4 if dtype == TensorProto.FLOAT else 1)
        header = onnx.TensorProto(name=name, dims=dims, data_type=dtype).ByteSize()
        added += _field_bytes(header + _field_bytes(data)) - data
    return added - (_field_bytes(init.ByteSize()) - 4 * k * n)


def _sensitivity_key(in_onnx: Path, wins, o: AutoOptions) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(in_onnx).parent.iterdir()):
        if f.is_file() and (f.suffix == ".onnx" or f.name.endswith((".onnx.data", ".onnx_data"))):
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    h.update(json.dumps([[int(t) for t in w] for w in wins]).encode())
    h.update(json.dumps([o.algo, o.damp, o.act_order, o.lm_head, o.embeddings, o.granularity,
                         o.accuracy_level]).encode())
    return h.hexdigest()


_BLOCK = re.compile(r"layers\.(\d+)/(self_attn|attn|attention|mlp)\b")


def _block_key(group: str) -> tuple[int, str] | None:
    """(layer index, "attn" | "mlp") of a block group, whatever the exporter named it."""
    m = _BLOCK.search(group)
    return (int(m.group(1)), "mlp" if m.group(2) == "mlp" else "attn") if m else None


def _plan_from(path, groups: dict, labels: list[str], granularity: str) -> dict[str, int]:
    """Map a plan file's block precisions onto this graph's groups (``plan_from``)."""
    if granularity != "block":
        raise ConfigError("auto: plan_from matches layers by block; set granularity: block")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"auto: plan_from={path!r}: file not found (give a quant_plan.json)")
    src = {}
    for g, v in json.loads(p.read_text()).get("groups", {}).items():
        key = _block_key(g)
        if key is not None:
            src[key] = v["precision"]
    plan = {}
    for g in groups:
        key = _block_key(g)
        if key is None or key not in src:
            raise ConfigError(f"auto: plan_from={path!r} has no precision for {g} (layer {key}); the plan must come "
                              "from the same model architecture")
        if src[key] not in labels:
            raise ConfigError(f"auto: plan_from={path!r} uses {src[key]} for {g}, which is not in candidates "
                              f"{labels}; add it to candidates")
        plan[g] = labels.index(src[key])
    return plan


def _prior_sensitivity(path, key: str) -> dict:
    """The per-group measurements of an earlier plan with the same sensitivity key (``sensitivity_from``)."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"auto: sensitivity_from={path!r}: file not found (give a quant_plan.json)")
    try:
        plan = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"auto: sensitivity_from={path!r}: not JSON ({e})") from None
    if plan.get("sensitivity_key") != key:
        raise ConfigError(f"auto: sensitivity_from={path!r} was measured on another model, calibration or settings "
                          "(algo, damp, act_order, lm_head, embeddings, granularity, accuracy_level); drop the option")
    return plan.get("groups", {})


class _Overriding:
    """An InferenceSession proxy that adds weight feeds (overridable initializers) to every run."""

    def __init__(self, sess) -> None:
        self.sess = sess
        self.weights: dict[str, np.ndarray] = {}

    def run(self, names, feeds):
        return self.sess.run(names, {**feeds, **self.weights})

    def io_binding(self):
        # a bound run would bypass run() and score the graph's own (fp32) weights: every trial would read as lossless
        raise RuntimeError("auto: the simulation session must run unbound (OrtLM(..., io_binding=False))")

    def __getattr__(self, name):
        return getattr(self.sess, name)


class _Replay:
    """A CausalLM stand-in that hands back logits already computed, in order (for edgeft.metrics.lm.perplexity)."""

    def __init__(self, logits: Sequence[np.ndarray]) -> None:
        self._it = iter(logits)

    def logits(self, _ids) -> np.ndarray:
        return next(self._it)


def _score(lm, ref_logits: list[np.ndarray], wins: list[np.ndarray], ppl_ref: float,
           task_metric: Callable | None, task_ref: float | None) -> dict:
    from edgeft.metrics import lm as lm_metrics

    logits = [lm.logits(w) for w in wins]  # one forward pass per window for both scores
    ppl = lm_metrics.perplexity(_Replay(logits), wins)
    out = {"perplexity": ppl, "perplexity_increase_pct": 100.0 * (ppl - ppl_ref) / ppl_ref,
           **lm_metrics.compare(ref_logits, _Replay(logits), wins)}
    if task_metric is not None:
        out["task"] = float(task_metric(lm))
        out["task_drop"] = float(task_ref - out["task"])
    return out


def _meets(m: dict, max_ppl: float, max_kl: float | None, max_task_drop: float | None) -> bool:
    return (m["perplexity_increase_pct"] <= max_ppl and (max_kl is None or m["kl"] <= max_kl)
            and (max_task_drop is None or m.get("task_drop", 0.0) <= max_task_drop))


def _sensitivity(groups: dict[str, list[str]], ladder: list, labels: list[str], prior: dict,
                 measure: Callable[[dict[str, int]], dict]) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Per group: KL (and perplexity) increase of each quantized rung alone over the all-fp32 base.

    ``measure(plan)`` scores a plan ({group: rung}, the rest fp32); rungs ``prior`` (an earlier
    plan's groups, ``sensitivity_from``) already measured are reused. Returns (sensitivity, kl_at).
    """
    t0 = time.perf_counter()
    base = measure({})
    sensitivity: dict[str, dict] = {}
    kl_at: dict[str, list[float]] = {}
    for done, g in enumerate(groups, 1):
        kl_at[g] = []
        sensitivity[g] = {"kl": 0.0, "ppl_increase_pct": 0.0}
        old = prior.get(g, {})
        for lvl, wq in enumerate(ladder):
            if wq is None:
                kl_at[g].append(0.0)
                continue
            if labels[lvl] in old.get("kl_per_rung", {}):
                kl_at[g].append(float(old["kl_per_rung"][labels[lvl]]))
                if lvl == 0:
                    sensitivity[g] = {"kl": kl_at[g][-1], "ppl_increase_pct": old.get("ppl_rung", {}).get(labels[lvl])}
                continue
            m = measure({g: lvl})
            kl_at[g].append(max(0.0, m["kl"] - base["kl"]))
            d_ppl = m["perplexity_increase_pct"] - base["perplexity_increase_pct"]
            sensitivity[g].setdefault("ppl_rung", {})[labels[lvl]] = d_ppl
            if lvl == 0:
                sensitivity[g].update({"kl": m["kl"] - base["kl"], "ppl_increase_pct": d_ppl})
        sensitivity[g]["kl_per_rung"] = dict(zip(labels, kl_at[g]))
        sensitivity[g].setdefault("ppl_rung", {}).update(
            {k: v for k, v in old.get("ppl_rung", {}).items() if k in labels and k not in sensitivity[g]["ppl_rung"]})
        if done % 10 == 0 or done == len(groups):
            log.info("auto: sensitivity %d/%d groups (%.0f s)", done, len(groups), time.perf_counter() - t0)
    return sensitivity, kl_at


def _best_upgrade(plan: dict[str, int], kl_at: dict[str, list[float]], size_of: dict[str, list[int]],
                  room: float = float("inf")) -> tuple[str, int] | None:
    """The (group, rung) above its current rung that removes the most error per added byte, among
    those adding at most ``room`` bytes; None when no upgrade removes error."""
    pick = None
    for g, cur in plan.items():
        for lvl in range(cur + 1, len(kl_at[g])):
            gain, cost = kl_at[g][cur] - kl_at[g][lvl], size_of[g][lvl] - size_of[g][cur]
            if gain <= 0 or cost > room:
                continue
            eff = gain / max(cost, 1)
            if pick is None or eff > pick[0]:
                pick = (eff, g, lvl)
    return None if pick is None else (pick[1], pick[2])


def _upgrade_path(groups: dict, kl_at: dict[str, list[float]], size_of: dict[str, list[int]]) -> list[dict[str, int]]:
    """From every group on the first rung, repeatedly move the one group whose next rung buys the most
    KL per added byte (a greedy multiple-choice knapsack), so every prefix is the cheapest plan found
    for its error; sizes grow along the path."""
    path = [{g: 0 for g in groups}]
    while (up := _best_upgrade(path[-1], kl_at, size_of)) is not None:
        path.append({**path[-1], up[0]: up[1]})
    return path


def _top_up(plan: dict[str, int], kl_at: dict[str, list[float]], size_of: dict[str, list[int]],
            room: float) -> dict[str, int]:
    """``plan`` plus the best upgrades (error removed per byte) that still fit in ``room`` bytes: the
    path's next step may not fit while smaller ones after it do (``fill_size``)."""
    plan = dict(plan)
    while (up := _best_upgrade(plan, kl_at, size_of, room)) is not None:
        g, lvl = up
        room -= size_of[g][lvl] - size_of[g][plan[g]]
        plan[g] = lvl
    return plan


def _save_simulation(base, targets: dict[str, tuple[str, tuple]], src_dir: Path, tmp: Path) -> Path:
    """The simulation model in ``tmp``: ``base`` (the fp32 graph with the head/embedding options
    applied) with the target weights (``{node: (initializer, shape)}``) made overridable (listed as
    graph inputs)."""
    import onnx
    from onnx import helper

    sim = onnx.ModelProto()
    sim.CopyFrom(base)
    for init, shape in targets.values():
        sim.graph.input.append(helper.make_tensor_value_info(init, onnx.TensorProto.FLOAT, list(shape)))
    sim_path = tmp / "sim.onnx"
    mnb.save_model(sim, sim_path)
    for cfg in ("genai_config.json", "config.json"):  # the KV head size, where the graph leaves it symbolic
        if (src_dir / cfg).is_file():
            shutil.copy2(src_dir / cfg, tmp / cfg)
    return sim_path


def _budget_error(o: AutoOptions, best: tuple[dict, dict], labels: list[str], n_groups: int) -> BudgetError:
    """No plan met the budget: say what was asked, the best reached and what to loosen."""
    bp, bm = best
    summary = ", ".join(f"{labels[lvl]} x{list(bp.values()).count(lvl)}" for lvl in sorted(set(bp.values())))
    asked = [f"max_ppl_increase_pct {o.max_ppl_increase_pct:g}"] + [
        f"{k} {getattr(o, k):g}" for k in ("max_kl", "max_task_drop", "max_size_mb") if getattr(o, k) is not None]
    return BudgetError(
        f"auto: no plan meets the budget ({', '.join(asked)}); best reached {bm['perplexity_increase_pct']:+.2f}% "
        f"perplexity, KL {bm['kl']:.4g}" + (f", task drop {bm['task_drop']:.3f}" if "task_drop" in bm else "")
        + f" at {bm['size_mb']:.1f} MB with {summary} ({n_groups} groups); loosen the budget, add a higher rung to "
          "candidates (e.g. fp32) or keep lm_head/embeddings")


def _residuals(graph, mats: dict) -> dict[str, str]:
    """{block: the residual-stream tensor it writes to}: where a block's MatMul output feeds an Add or an
    ORT SkipSimplifiedLayerNormalization (o_proj and down_proj in a pre-norm decoder), the other input
    of that node, unless it is a constant (a bias)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    constants = {i.name for i in graph.initializer}
    out: dict[str, str] = {}
    for name, (node, _) in mats.items():
        for c in consumers.get(node.output[0], []):
            other = [i for i in c.input[:2] if i != node.output[0] and i not in constants]
            if c.op_type in ("Add", "SkipSimplifiedLayerNormalization") and other:
                out.setdefault(group_of(name, "block"), other[0])
    return out


class _Job:
    """One auto run: the fp32 model, its target MatMuls and groups, the calibration split, the codes
    and output errors per (MatMul, rung), the reference logits, and the artifact built from a plan."""

    def __init__(self, in_onnx: Path, calibration: Sequence[Sequence[int]], o: AutoOptions) -> None:
        import onnx
        from onnx import helper, numpy_helper

        self.in_onnx, self.o = Path(in_onnx), o
        self.ladder = [parse_candidate(c, o.symmetric) for c in o.candidates]
        self.labels = [("fp32" if wq is None else wq.label()) for wq in self.ladder]
        wins = [np.asarray(w, np.int64) for w in calibration if len(w) >= 2]
        ns, nc = o.sensitivity_windows, o.check_windows
        if len(wins) < ns + nc:
            raise ConfigError(f"auto: needs sensitivity_windows + check_windows = {ns} + {nc} calibration windows "
                              f"(at least 1 each); got {len(wins)}")
        self.wins, self.sens_wins, self.check_wins = wins, wins[:ns], wins[ns:ns + nc]
        self.model = onnx.load(str(in_onnx))
        head = mnb.find_head_embed(self.model.graph).head
        self.mats = {name: v for name, v in mnb.weight_matmuls(self.model.graph).items()
                     if name not in set(o.nodes_to_exclude) and (head is None or name != head.name)}
        self.weights = {name: numpy_helper.to_array(init).astype(np.float32) for name, (_, init) in self.mats.items()}
        self.init_of = {name: init.name for name, (_, init) in self.mats.items()}
        self.groups: dict[str, list[str]] = {}
        for name in self.mats:
            self.groups.setdefault(group_of(name, o.granularity), []).append(name)
        # bytes per group and rung in the saved artifact: the weights' layout plus the graph's own overhead
        self.size_of = {g: [sum(weight_bytes(self.weights[n].shape, wq) + (
            0 if wq is None else rewrite_overhead(*self.mats[n], wq, o.accuracy_level)) for n in ns_)
            for wq in self.ladder] for g, ns_ in self.groups.items()}
        # the head/embedding options applied once: the simulation and every real build start from it;
        # what a plan adds to its bytes is the packed target weights
        self.head_first = next((wq for wq in self.ladder if wq is not None), mnb.WeightQuant(8, 32, True))
        self.base = onnx.ModelProto()
        self.base.CopyFrom(self.model)
        self.head_embed = mnb.quantize_head_embed(self.base, o.lm_head, o.embeddings, self.head_first.block_size,
                                                  self.head_first.symmetric, o.accuracy_level)
        self.fixed_bytes = self.base.ByteSize() - sum(4 * w.size for w in self.weights.values())
        self.opset_bytes = 0 if any(op.domain == "com.microsoft" for op in self.base.opset_import) else \
            _field_bytes(helper.make_opsetid("com.microsoft", 1).ByteSize())  # what the first MatMulNBits adds
        self.codes: dict[tuple[str, int], tuple] = {}
        self.errors: dict[tuple[str, int], float] = {}
        self.stats: dict[str, tuple[np.ndarray, int]] = {}
        # the proxy divides each group's output error by the median norm of the residual stream its block
        # writes to: the next RMSNorm divides that stream by its norm, so the same ||X dW||^2 matters less
        # where the stream is larger (SmolLM2-135M: median norm 2.8 into layer 0, 790 out of layer 29). On its
        # 60 blocks x 4 rungs it raised the Spearman correlation with measured KL from 0.62 to 0.73 and cut the
        # fill-the-budget plan's held-out perplexity increase from +8.5% to +5.2%. None: some block has no
        # residual Add, the errors are compared as they are.
        residual = _residuals(self.model.graph, self.mats)
        blocks = {group_of(n, "block") for n in self.mats}
        self.residual = residual if blocks <= set(residual) else None
        self.scale: dict[str, float] = {g: 1.0 for g in self.groups}

    # ---------------------------------------------------------------- calibration pass and codes
    def capture(self, hessians: bool, sens_logits: bool) -> None:
        """One fp32 pass: Σxxᵀ of every target input over all windows (``hessians``), and the reference
        logits and perplexity of the check windows (and of the sensitivity windows, ``sens_logits``)."""
        from edgeft.metrics import lm as lm_metrics

        ns, nc = len(self.sens_wins), len(self.check_wins)
        names = [self.mats[n][0].input[0] for n in self.mats] if hessians else []
        wins = self.wins if hessians else self.wins[:ns + nc]
        want = list(range(ns, ns + nc)) + (list(range(ns)) if sens_logits else [])
        norms_of = sorted(set(self.residual.values())) if hessians and self.residual else []
        got = gq.capture(self.model, names, wins, config_dir=self.in_onnx.parent, logits_of=want, in_place=True,
                         norms_of=norms_of)
        self.model = None  # the rest starts from self.base
        self.stats, logits = got.hessians, got.logits
        if norms_of:
            median = {t: float(np.median(v)) for t, v in got.norms.items()}
            self.scale = {g: median[self.residual[group_of(names_[0], "block")]] for g, names_ in self.groups.items()}
        self.ref_check, self.ref_sens = logits[:nc], logits[nc:]
        self.ppl_ref_check = lm_metrics.perplexity(_Replay(self.ref_check), self.check_wins)
        self.ppl_ref_sens = lm_metrics.perplexity(_Replay(self.ref_sens), self.sens_wins) if sens_logits else None

    def compute_codes(self, pairs, errors: bool) -> None:
        """Codes of each (MatMul, quantized rung) in ``pairs`` not computed yet: GPTQ in one sweep per
        input for int4 rungs (``algo: gptq``; its output error comes with it), RTN otherwise (its
        output error, with ``errors``, from Σxxᵀ)."""
        sweeps: dict[str, list[tuple[str, int]]] = {}
        xtx32: dict[str, np.ndarray] = {}
        for n, lvl in pairs:
            if (n, lvl) in self.codes:
                continue
            wq = self.ladder[lvl]
            if self.o.algo == "gptq" and wq.bits == 4:
                sweeps.setdefault(self.mats[n][0].input[0], []).append((n, lvl))
                continue
            self.codes[(n, lvl)] = mnb.rtn_codes(self.weights[n], wq)
            if errors and self.stats:
                x = self.mats[n][0].input[0]
                if x not in xtx32:  # one float32 copy per input serves its MatMuls and rungs
                    xtx32[x] = self.stats[x][0].astype(np.float32)
                d = self.weights[n] - self.deq(n, lvl)
                self.errors[(n, lvl)] = float(np.einsum("ij,ij->", xtx32[x] @ d, d, dtype=np.float64)
                                              ) / self.stats[x][1]
        for x, items in sweeps.items():
            xtx, ntok = self.stats[x]
            out = gq.gptq_many([self.weights[n] for n, _ in items], xtx.copy(), ntok,
                               [self.ladder[lvl] for _, lvl in items], self.o.damp, self.o.act_order)
            for key, (c, s, z, err) in zip(items, out):
                self.codes[key], self.errors[key] = (c, s, z), err / ntok

    def all_pairs(self) -> list[tuple[str, int]]:
        return [(n, lvl) for n in self.mats for lvl, wq in enumerate(self.ladder) if wq is not None]

    def deq(self, name: str, lvl: int) -> np.ndarray:
        return mnb.dequantize(*self.codes[(name, lvl)], self.weights[name].shape[0], self.ladder[lvl].block_size)

    def error_at(self, g: str, lvl: int) -> float | None:
        """Output error per token of group ``g`` on rung ``lvl``: Σ over its MatMuls of ‖X dW‖²/n (0 for
        fp32; None when not computed)."""
        if self.ladder[lvl] is None:
            return 0.0
        names = self.groups[g]
        return sum(self.errors[(n, lvl)] for n in names) if all((n, lvl) in self.errors for n in names) else None

    def proxy_at(self) -> dict[str, list[float]] | None:
        """Per group and rung, the proxy: the output error over the median residual norm (``self.scale``);
        None when some error is missing (no calibration activations)."""
        out = {g: [self.error_at(g, lvl) for lvl in range(len(self.ladder))] for g in self.groups}
        if any(e is None for row in out.values() for e in row):
            return None
        return {g: [e / self.scale[g] for e in row] for g, row in out.items()}

    # ---------------------------------------------------------------- sizes, simulation, real artifact
    def predicted_mb(self, plan: dict[str, int]) -> float:
        quantized = any(self.ladder[lvl] is not None for lvl in plan.values())
        return (self.fixed_bytes + self.opset_bytes * quantized + sum(self.size_of[g][lvl] for g, lvl in plan.items())
                ) / 1e6

    def simulation(self, tmp: Path):
        """An OrtLM over the simulation model whose ``feed(plan)`` sets the dequantized weights of a plan."""
        from edgeft.runtime.lm import OrtLM

        sim = _save_simulation(self.base, {n: (self.init_of[n], self.weights[n].shape) for n in self.mats},
                               self.in_onnx.parent, tmp)
        lm = OrtLM(sim, 2, io_binding=False)
        lm.sess = _Overriding(lm.sess)

        def feed(plan: dict[str, int]) -> None:
            lm.sess.weights = {self.init_of[n]: self.deq(n, lvl) for g, lvl in plan.items() for n in self.groups[g]
                               if self.ladder[lvl] is not None}

        lm.feed = feed
        return lm

    def build(self, plan: dict[str, int], out_onnx: Path) -> dict:
        """Write the MatMulNBits artifact of ``plan``; returns its node counts."""
        import onnx

        real = onnx.ModelProto()
        real.CopyFrom(self.base)
        node_plan = {n: self.ladder[lvl] for g, lvl in plan.items() for n in self.groups[g]
                     if self.ladder[lvl] is not None}
        levels = {n: plan[g] for g in plan for n in self.groups[g]}
        self.compute_codes([(n, levels[n]) for n in node_plan], errors=False)
        mnb.replace_matmuls(real, node_plan, self.o.accuracy_level, {n: self.codes[(n, levels[n])] for n in node_plan})
        counts = mnb.node_counts(real.graph)
        mnb.save_model(real, out_onnx)
        return counts


    def plan_proxy(self, plan: dict[str, int]) -> float | None:
        """The plan's summed proxy (its predicted quality in proxy units)."""
        errors = [self.error_at(g, lvl) for g, lvl in plan.items()]
        return None if None in errors else sum(e / self.scale[g] for e, g in zip(errors, plan))


def _sensitivities(job: _Job, prior: dict, sim) -> tuple[dict[str, dict], dict[str, list[float]], list[str]]:
    """(per group: its sensitivity record, per group: error per rung as the search uses it, groups by
    decreasing sensitivity on the first rung). ``measured``: KL of a forward pass per group and rung
    on ``sim``; ``proxy``: the output errors. Proxies are reported in both modes when computed."""
    o = job.o
    proxies = job.proxy_at()
    if o.sensitivity == "measured":
        def measure(plan: dict[str, int]) -> dict:
            sim.feed(plan)
            return _score(sim, job.ref_sens, job.sens_wins, job.ppl_ref_sens, None, None)

        sensitivity, kl_at = _sensitivity(job.groups, job.ladder, job.labels, prior, measure)
        key = "kl"
    else:
        kl_at = proxies
        sensitivity = {g: {"proxy": kl_at[g][0]} for g in job.groups}
        key = "proxy"
    for g in job.groups if proxies is not None else ():
        sensitivity[g]["proxy_per_rung"] = dict(zip(job.labels, proxies[g]))
        sensitivity[g]["output_error_per_rung"] = {lbl: job.error_at(g, lvl) for lvl, lbl in enumerate(job.labels)}
        sensitivity[g]["residual_norm"] = job.scale[g] if job.residual else None
    return sensitivity, kl_at, sorted(job.groups, key=lambda g: -sensitivity[g][key])


def _last_within(job: _Job, path: list[dict[str, int]], max_bytes: float) -> int:
    """The last path index whose predicted size is within ``max_bytes`` (0 when none is)."""
    last = len(path) - 1
    while last > 0 and job.predicted_mb(path[last]) * 1e6 > max_bytes:
        last -= 1
    return last


def _entry(job: _Job, plan: dict[str, int], step: int, m: dict, ok: bool, simulated: bool) -> dict:
    return {"step": step, "upgraded_groups": sum(1 for v in plan.values() if v), "simulated": simulated,
            "predicted_size_mb": job.predicted_mb(plan), **({} if simulated else {"size_mb": m["size_mb"]}),
            "meets_budget": ok, **{key: m[key] for key in ("perplexity_increase_pct", "kl", "top1_agreement", "task")
                                   if key in m}}


def _simulated_search(job: _Job, path: list[dict[str, int]], last: int, sim, task_ref,
                      search: list) -> tuple[int, bool]:
    """Binary search along the path (within the size budget) for the first plan meeting the budget on
    the check windows, in simulation. Returns (index, found)."""
    o = job.o

    def check(i: int) -> bool:
        sim.feed(path[i])
        m = _score(sim, job.ref_check, job.check_wins, job.ppl_ref_check, o.task_metric, task_ref)
        ok = _meets(m, o.max_ppl_increase_pct, o.max_kl, o.max_task_drop)
        search.append(_entry(job, path[i], i, m, ok, True))
        return ok

    if check(0):
        return 0, True
    if last == 0 or not check(last):
        return last, False
    lo, hi = 0, last  # path[lo] fails, path[hi] passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if check(mid):
            hi = mid
        else:
            lo = mid
    return hi, True


def _try(job: _Job, plan: dict[str, int], step: int, out_onnx: Path, task_ref, search: list) -> tuple[dict, bool, dict]:
    """Build the real artifact of ``plan`` and score it on the check windows: (metrics, meets, node counts)."""
    from edgeft.runtime.lm import OrtLM

    o = job.o
    counts = job.build(plan, out_onnx)
    cand = OrtLM(out_onnx, 2)
    m = _score(cand, job.ref_check, job.check_wins, job.ppl_ref_check, o.task_metric, task_ref)
    del cand
    m["size_mb"] = Path(out_onnx).stat().st_size / 1e6
    ok = _meets(m, o.max_ppl_increase_pct, o.max_kl, o.max_task_drop)
    search.append(_entry(job, plan, step, m, ok, False))
    return m, ok, counts


def _walk(job: _Job, path: list[dict[str, int]], i: int, last: int, out_onnx: Path, task_ref, search: list):
    """The real artifact from ``path[i]``, walking further along the path while it misses the budget.
    Returns (plan, metrics, meets, node counts, best (plan, metrics) within the size budget)."""
    o, best, step = job.o, None, max(1, len(path) // 16)
    while True:
        plan = path[i]
        m, ok, counts = _try(job, plan, i, out_onnx, task_ref, search)
        over_size = o.max_size_mb is not None and m["size_mb"] > o.max_size_mb
        if not over_size and (best is None or m["perplexity_increase_pct"] < best[1]["perplexity_increase_pct"]):
            best = (dict(plan), m)
        if over_size:  # every further step is larger still
            return plan, m, False, counts, best or (dict(plan), m)
        if ok or i >= last:
            return plan, m, ok, counts, best
        i = min(i + step, last)


def _fill(job: _Job, path: list[dict[str, int]], kl_at: dict[str, list[float]], out_onnx: Path, task_ref,
          search: list):
    """``fill_size``: the last path plan within ``max_size_mb``, topped up with the best upgrades that still
    fit; when the real file passes the budget (the prediction leaves out graph overhead), aim lower by the
    overshoot and rebuild. Returns as :func:`_walk`."""
    budget = job.o.max_size_mb * 1e6
    target, plan = budget, None
    for _ in range(3):
        last = _last_within(job, path, target)
        cand = _top_up(path[last], kl_at, job.size_of, target - job.predicted_mb(path[last]) * 1e6)
        if cand == plan:
            break
        plan = cand
        m, ok, counts = _try(job, plan, last, out_onnx, task_ref, search)
        if m["size_mb"] * 1e6 <= budget:
            return plan, m, ok, counts, (dict(plan), m)
        target -= m["size_mb"] * 1e6 - budget + 4096
    return plan, m, False, counts, (dict(plan), m)


def _search(job: _Job, prior: dict, out_onnx: Path, task_ref, tmp: Path, seconds: dict) -> dict:
    """Sensitivity, upgrade path and the real artifact (steps 3-5). Returns what the report needs."""
    o = job.o
    t0 = time.perf_counter()
    job.compute_codes(job.all_pairs(), errors=True)
    seconds["codes"] = time.perf_counter() - t0
    measured = o.sensitivity == "measured"
    sim = job.simulation(tmp) if measured or not o.fill_size else None
    t0 = time.perf_counter()
    sensitivity, kl_at, order = _sensitivities(job, prior, sim)
    path = _upgrade_path(job.groups, kl_at, job.size_of)
    seconds["sensitivity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    search: list[dict] = []
    found = None
    if o.fill_size:
        del sim
        plan, m, ok, counts, best = _fill(job, path, kl_at, out_onnx, task_ref, search)
    else:
        last = _last_within(job, path, o.max_size_mb * 1e6 if o.max_size_mb is not None else float("inf"))
        i, found = _simulated_search(job, path, last, sim, task_ref, search)
        del sim
        plan, m, ok, counts, best = _walk(job, path, i, last, out_onnx, task_ref, search)
    seconds["search"] = time.perf_counter() - t0
    return {"plan": plan, "m": m, "ok": ok, "counts": counts, "best": best, "search": search, "path": path,
            "sensitivity": sensitivity, "order": order, "kl_at": kl_at, "found": found}


def _given_plan(job: _Job, out_onnx: Path, task_ref) -> dict:
    """``plan_from``: the given per-block plan, built and checked (no search)."""
    path = [_plan_from(job.o.plan_from, job.groups, job.labels, job.o.granularity)]
    search: list[dict] = []
    plan, m, ok, counts, best = _walk(job, path, 0, 0, out_onnx, task_ref, search)
    sensitivity = {g: {"kl": None, "ppl_increase_pct": None, "kl_per_rung": {}} for g in job.groups}
    return {"plan": plan, "m": m, "ok": ok, "counts": counts, "best": best, "search": search, "path": path,
            "sensitivity": sensitivity, "order": list(job.groups), "kl_at": None, "found": False}


def _quality(job: _Job, r: dict) -> dict:
    """The plan's predicted quality (its rungs' summed sensitivities) next to what the check windows measured."""
    o, plan, m = job.o, r["plan"], r["m"]
    predicted: dict[str, Any] = {
        "proxy": job.plan_proxy(plan),
        "proxy_unit": "per group, the output error per token summed over its MatMuls (||X dW||^2 / n) over the "
                      "median norm of the residual stream its block writes to" if job.residual else
                      "per group, the output error per token summed over its MatMuls (||X dW||^2 / n; no residual "
                      "Add found to scale it by)"}
    first = {g: 0 for g in job.groups}
    if r["kl_at"] is not None:
        predicted["proxy_all_first_rung"] = job.plan_proxy(first)
        if o.sensitivity == "measured":
            predicted["kl_sum"] = sum(r["kl_at"][g][lvl] for g, lvl in plan.items())
            predicted["kl_sum_all_first_rung"] = sum(r["kl_at"][g][0] for g in job.groups)
    check = {"windows": len(job.check_wins), "tokens": int(sum(len(w) for w in job.check_wins)),
             "perplexity_input": job.ppl_ref_check, **{k: m[k] for k in ("perplexity", "perplexity_increase_pct", "kl",
                                                                          "top1_agreement") if k in m}}
    return {"sensitivity": "plan_from" if o.plan_from is not None else o.sensitivity, "predicted": predicted,
            "calibration_check": check}


def _result(job: _Job, r: dict, prior: dict, sens_key: str | None, seconds: dict) -> dict:
    o, plan, m, labels = job.o, r["plan"], r["m"], job.labels
    budget = {"max_ppl_increase_pct": o.max_ppl_increase_pct, "max_kl": o.max_kl, "max_task_drop": o.max_task_drop,
              "max_size_mb": o.max_size_mb,
              "checked_on": f"{len(job.check_wins)} calibration windows "
                            f"({int(sum(len(w) for w in job.check_wins))} tokens) after the sensitivity ones"}
    reached = {k: m[k] for k in ("perplexity", "perplexity_increase_pct", "kl", "top1_agreement", "task", "task_drop",
                                 "size_mb") if k in m}
    reached["reference_perplexity"] = job.ppl_ref_check
    if "task_ref" in r:
        reached["reference_task"] = r["task_ref"]
    layer_plan = {n: labels[plan[group_of(n, o.granularity)]] for n in job.mats}
    order = r["order"]
    return {
        "budget": budget, "candidates": labels, "algo": o.algo, "granularity": o.granularity,
        "sensitivity_mode": o.sensitivity, "reached": reached, "quality": _quality(job, r),
        "found_in_simulation": r["found"], **({"plan_from": str(o.plan_from)} if o.plan_from is not None else {}),
        "precision_counts": {lbl: list(layer_plan.values()).count(lbl) for lbl in labels},
        "groups": {g: {"precision": labels[plan[g]], "sensitivity_rank": order.index(g) + 1, **r["sensitivity"][g],
                       "bytes_per_rung": dict(zip(labels, job.size_of[g])), "matmuls": job.groups[g]} for g in order},
        "layers": layer_plan, "search": r["search"], "path_steps": len(r["path"]),
        "predicted_size_mb": job.predicted_mb(plan), **job.head_embed, **r["counts"],
        "sensitivity_windows": len(job.sens_wins), "check_windows": len(job.check_wins),
        "calibration_windows": len(job.wins), "sensitivity_key": sens_key,
        "sensitivity_reused": sorted({lbl for g in prior.values() for lbl in g.get("kl_per_rung", {})
                                      if lbl in labels and lbl != "fp32"}),
        "seconds": seconds,
    }


def apply(in_onnx: Path, out_onnx: Path, calibration: Sequence[Sequence[int]], opts: AutoOptions | None = None,
          **options) -> dict:
    o = AutoOptions.of(opts, **options)
    t_start = time.perf_counter()
    job = _Job(in_onnx, calibration, o)
    searching = o.plan_from is None
    measured = searching and o.sensitivity == "measured"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    # Σxxᵀ for GPTQ and for the proxy (also reported next to measured KL); the check windows' reference logits
    gptq4 = o.algo == "gptq" and any(wq is not None and wq.bits == 4 for wq in job.ladder)
    job.capture(hessians=any(wq is not None for wq in job.ladder) and (gptq4 or (searching and not measured)),
                sens_logits=measured)
    seconds["capture"] = time.perf_counter() - t0
    task_ref = None
    if o.task_metric is not None:
        from edgeft.runtime.lm import OrtLM

        task_ref = float(o.task_metric(OrtLM(in_onnx, 2)))
    # what a rung's measured sensitivity depends on, so a later run may reuse it (sensitivity_from)
    sens_key = _sensitivity_key(in_onnx, job.sens_wins, o) if measured else None
    prior = _prior_sensitivity(o.sensitivity_from, sens_key)
    with tempfile.TemporaryDirectory(prefix="edgeft-auto-") as tmp:
        r = _search(job, prior, out_onnx, task_ref, Path(tmp), seconds) if searching else \
            _given_plan(job, out_onnx, task_ref)
    if task_ref is not None:
        r["task_ref"] = task_ref
    if not r["ok"]:
        raise _budget_error(o, r["best"], job.labels, len(r["order"]))
    seconds["total"] = time.perf_counter() - t_start
    result = _result(job, r, prior, sens_key, seconds)
    from edgeft.fileio import atomic_write_text

    atomic_write_text(Path(out_onnx).parent / "quant_plan.json", json.dumps(result, indent=2))
    log.info("auto: %s; check windows %+.2f%% perplexity (budget %+g%%), %.0f s",
             ", ".join(f"{k} x{v}" for k, v in result["precision_counts"].items() if v),
             result["reached"]["perplexity_increase_pct"], o.max_ppl_increase_pct, seconds["total"])
    return {"symmetric": o.symmetric, "accuracy_level": o.accuracy_level, "nodes_to_exclude": o.nodes_to_exclude,
            "plan": result}


def record_heldout(report: dict, out_dir: Path) -> None:
    """After :func:`edgeft.quantize.quantize` scored the artifact on held-out text: that perplexity next to
    the calibration check's, in the plan (``quality.heldout``, ``reached.heldout_perplexity_increase_pct``),
    in the report and in ``quant_plan.json``."""
    plan = (report.get("options") or {}).get("plan")
    if plan is None or "perplexity" not in report:
        return
    held = {"tokens": report.get("quality_tokens"), "perplexity_input": report["perplexity_input"],
            "perplexity": report["perplexity"], "perplexity_increase_pct": report["perplexity_increase_pct"],
            **{k: report[k] for k in ("kl", "top1_agreement") if k in report}}
    quality = plan.setdefault("quality", {})
    quality["heldout"] = held
    check = quality.get("calibration_check", {})
    if "perplexity_increase_pct" in check:
        quality["heldout_minus_check_pct"] = held["perplexity_increase_pct"] - check["perplexity_increase_pct"]
        log.info("auto: perplexity %+.2f%% on the calibration check windows, %+.2f%% on held-out text",
                 check["perplexity_increase_pct"], held["perplexity_increase_pct"])
    plan["reached"]["heldout_perplexity_increase_pct"] = held["perplexity_increase_pct"]
    from edgeft.fileio import atomic_write_text

    atomic_write_text(Path(out_dir) / "quant_plan.json", json.dumps(plan, indent=2))


SCHEMES.register("auto")(Scheme("auto", "mixed int4/int8/fp32 MatMulNBits chosen per layer under a perplexity budget",
                                "int4", None, apply, AutoOptions, needs_calibration=True, on_quality=record_heldout))
