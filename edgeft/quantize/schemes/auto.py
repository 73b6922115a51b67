"""``auto``: accuracy-aware mixed precision for MatMul weights, under a perplexity (and task) budget.

1. Candidates: a precision ladder per MatMul, most aggressive first (default int4/b32 →
   int4/b16 → int8/b32 → fp32). int4 rungs use GPTQ (``algo: gptq``) or RTN.
2. Sensitivity: on ``sensitivity_windows`` calibration windows, quantize one group of MatMuls at a
   time (a decoder layer's attention or MLP with ``granularity: block``, or each MatMul) to each
   quantized rung and measure KL and perplexity change vs fp32. One ONNX Runtime session serves every
   measurement: the weights are overridable initializers and each trial feeds the dequantized
   weights of its group (what MatMulNBits multiplies by), so no model is rebuilt per trial.
   Every quantized rung is measured, so the search knows what each fallback buys.
3. Search: an upgrade path from every group on the first rung: each step moves the one group
   whose next rung buys the most KL per added byte (a greedy multiple-choice knapsack), so each
   prefix is the smallest plan found for its error. A binary search along the path (cut where the
   predicted size passes ``max_size_mb``) finds the first plan meeting the budget on the
   ``check_windows`` (further calibration windows, disjoint from the sensitivity ones).
4. Build the real MatMulNBits artifact from the plan and re-check the budget on it (MatMulNBits
   with ``accuracy_level`` 4 also rounds activations); walk further along the path if it fails.

Budgets: ``max_ppl_increase_pct`` (on the check windows, vs the fp32 input), optional ``max_kl``
(mean KL per token vs the input's logits), ``max_size_mb`` (the artifact; checked on the real
file, and since every fallback grows it, exceeding it ends the search) and ``max_task_drop`` with a ``task_metric`` callable
(Python API: ``task_metric(lm) -> float``, higher is better, ``lm`` an
:class:`~edgeft.runtime.lm.CausalLM`). No plan within the budget raises
:class:`~edgeft.errors.BudgetError` with the best reached. The plan (layer → precision,
sensitivities, budget, what was reached) is written to ``quant_plan.json`` next to the model and
returned into ``quantize_report.json``.
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
    sensitivity_windows: int = Field(4, ge=1, description="calibration windows for the per-group sensitivity")
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
        None, description="a previous quant_plan.json of the same model, calibration and settings: its measured rungs "
                          "are reused, only new rungs are measured")
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

    def __getattr__(self, name):
        return getattr(self.sess, name)


def _score(lm, ref_logits: list[np.ndarray], wins: list[np.ndarray], ppl_ref: float,
           task_metric: Callable | None, task_ref: float | None) -> dict:
    from edgeft.quantize import quality

    ppl = quality.perplexity(lm, wins)
    out = {"perplexity": ppl, "perplexity_increase_pct": 100.0 * (ppl - ppl_ref) / ppl_ref,
           **quality.compare(ref_logits, lm, wins)}
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


def _upgrade_path(groups: dict, kl_at: dict[str, list[float]], size_of: dict[str, list[int]]) -> list[dict[str, int]]:
    """From every group on the first rung, repeatedly move the one group whose next rung buys the most
    KL per added byte (a greedy multiple-choice knapsack), so every prefix is the cheapest plan found
    for its error; sizes grow along the path."""
    path = [{g: 0 for g in groups}]
    while True:
        cur, pick = path[-1], None
        for g in groups:
            for lvl in range(cur[g] + 1, len(kl_at[g])):
                gain = kl_at[g][cur[g]] - kl_at[g][lvl]
                if gain <= 0:
                    continue
                eff = gain / max(size_of[g][lvl] - size_of[g][cur[g]], 1)
                if pick is None or eff > pick[0]:
                    pick = (eff, g, lvl)
        if pick is None:
            return path
        path.append({**cur, pick[1]: pick[2]})


def _save_simulation(model, targets: dict[str, tuple[str, tuple]], o: AutoOptions, head_first: mnb.WeightQuant,
                     src_dir: Path, tmp: Path) -> tuple[Path, int]:
    """The simulation model in ``tmp``: the fp32 graph with the head/embedding options applied and the
    target weights (``{node: (initializer, shape)}``) made overridable (listed as graph inputs).
    Returns (its path, its bytes)."""
    import onnx
    from onnx import helper

    sim = onnx.ModelProto()
    sim.CopyFrom(model)
    mnb.quantize_head_embed(sim, o.lm_head, o.embeddings, head_first.block_size, head_first.symmetric,
                            o.accuracy_level)
    for init, shape in targets.values():
        sim.graph.input.append(helper.make_tensor_value_info(init, onnx.TensorProto.FLOAT, list(shape)))
    sim_path = tmp / "sim.onnx"
    mnb.save_model(sim, sim_path)
    sim_bytes = sum(f.stat().st_size for f in tmp.iterdir())
    for cfg in ("genai_config.json", "config.json"):  # the KV head size, where the graph leaves it symbolic
        if (src_dir / cfg).is_file():
            shutil.copy2(src_dir / cfg, tmp / cfg)
    return sim_path, sim_bytes


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


def apply(in_onnx: Path, out_onnx: Path, calibration: Sequence[Sequence[int]], opts: AutoOptions | None = None,
          **options) -> dict:
    import onnx
    from onnx import numpy_helper

    from edgeft.runtime.lm import OrtLM

    o = AutoOptions.of(opts, **options)
    t_start = time.perf_counter()
    ladder = [parse_candidate(c, o.symmetric) for c in o.candidates]
    labels = [("fp32" if wq is None else wq.label()) for wq in ladder]
    wins_all = [np.asarray(w, np.int64) for w in calibration if len(w) >= 2]
    ns, nc = o.sensitivity_windows, o.check_windows
    if len(wins_all) < ns + nc:
        raise ConfigError(f"auto: needs sensitivity_windows + check_windows = {ns} + {nc} calibration windows "
                          f"(at least 1 each); got {len(wins_all)}")
    sens_wins, check_wins = wins_all[:ns], wins_all[ns:ns + nc]
    max_ppl = o.max_ppl_increase_pct
    # what a rung's measured sensitivity depends on, so a later run may reuse it (sensitivity_from)
    sens_key = _sensitivity_key(in_onnx, sens_wins, o)
    prior = _prior_sensitivity(o.sensitivity_from, sens_key)

    model = onnx.load(str(in_onnx))
    head = mnb.find_head_embed(model.graph).head
    mats = {name: v for name, v in mnb.weight_matmuls(model.graph).items()
            if name not in set(o.nodes_to_exclude) and (head is None or name != head.name)}
    weights = {name: numpy_helper.to_array(init).astype(np.float32) for name, (_, init) in mats.items()}
    init_of = {name: init.name for name, (_, init) in mats.items()}
    groups: dict[str, list[str]] = {}
    for name in mats:
        groups.setdefault(group_of(name, o.granularity), []).append(name)

    # Codes per (node, rung), computed once (GPTQ uses all calibration windows' activations).
    stats = {}
    if o.algo == "gptq" and any(wq and wq.bits == 4 for wq in ladder):
        stats = gq.capture_hessians(model, [mats[n][0].input[0] for n in mats], wins_all,
                                    config_dir=Path(in_onnx).parent)
    codes: dict[tuple[str, int], tuple] = {}

    def code(name: str, lvl: int):
        if (name, lvl) not in codes:
            wq, b = ladder[lvl], weights[name]
            if o.algo == "gptq" and wq.bits == 4:
                xtx, ntok = stats[mats[name][0].input[0]]
                codes[(name, lvl)] = gq.gptq(b, xtx.copy(), ntok, wq, o.damp, o.act_order)
            else:
                codes[(name, lvl)] = mnb.rtn_codes(b, wq)
        return codes[(name, lvl)]

    def deq(name: str, lvl: int) -> np.ndarray:
        return mnb.dequantize(*code(name, lvl), weights[name].shape[0], ladder[lvl].block_size)

    with tempfile.TemporaryDirectory(prefix="edgeft-auto-") as tmp:
        head_first = next((wq for wq in ladder if wq is not None), mnb.WeightQuant(8, 32, True))
        sim_path, sim_bytes = _save_simulation(model, {n: (init_of[n], weights[n].shape) for n in mats}, o,
                                               head_first, Path(in_onnx).parent, Path(tmp))
        ref = OrtLM(in_onnx, 2)
        searching = o.plan_from is None  # a given plan needs no sensitivity windows and no simulation session
        ref_sens = [ref.logits(w) for w in sens_wins] if searching else []
        ref_check = [ref.logits(w) for w in check_wins]
        from edgeft.quantize import quality

        ppl_ref_sens = quality.perplexity(ref, sens_wins) if searching else None
        ppl_ref_check = quality.perplexity(ref, check_wins)
        task_ref = float(o.task_metric(ref)) if o.task_metric is not None else None
        del ref
        lm = proxy = None
        if searching:
            lm = OrtLM(sim_path, 2)
            proxy = lm.sess = _Overriding(lm.sess)

        def feed(plan: dict[str, int]) -> None:
            proxy.weights = {init_of[n]: deq(n, lvl) for g, lvl in plan.items() for n in groups[g]
                             if ladder[lvl] is not None}

        size_of = {g: [sum(weight_bytes(weights[n].shape, wq) for n in groups[g]) for wq in ladder] for g in groups}
        # the all-first-rung artifact's size: the simulation file (head/embedding options applied,
        # target weights fp32) with the target weights swapped for their first-rung packing
        size0 = sim_bytes - sum(4 * w.size for w in weights.values()) + sum(size_of[g][0] for g in groups)

        def predicted_mb(i: int) -> float:
            return (size0 + sum(size_of[g][lvl] - size_of[g][0] for g, lvl in path[i].items())) / 1e6

        search: list[dict] = []
        if o.plan_from is not None:  # a plan given (e.g. measured on another export of the same model)
            path = [_plan_from(o.plan_from, groups, labels, o.granularity)]
            last, i, found, t_sens, t_search = 0, 0, False, 0.0, 0.0
            sensitivity = {g: {"kl": None, "ppl_increase_pct": None, "kl_per_rung": {}} for g in groups}
            order = list(groups)
        else:
            # 2. sensitivity: each group alone on each quantized rung, the rest fp32 (plus the
            # head/embedding options); KL increase over that base, which sums well across groups.
            t0 = time.perf_counter()

            def measure(plan: dict[str, int]) -> dict:
                feed(plan)
                return _score(lm, ref_sens, sens_wins, ppl_ref_sens, None, None)

            sensitivity, kl_at = _sensitivity(groups, ladder, labels, prior, measure)
            t_sens = time.perf_counter() - t0
            order = sorted(groups, key=lambda g: -sensitivity[g]["kl"])
            path = _upgrade_path(groups, kl_at, size_of)

            last = len(path) - 1
            if o.max_size_mb is not None:
                while last > 0 and predicted_mb(last) > o.max_size_mb:
                    last -= 1

            def check(i: int) -> bool:
                feed(path[i])
                m = _score(lm, ref_check, check_wins, ppl_ref_check, o.task_metric, task_ref)
                ok = _meets(m, max_ppl, o.max_kl, o.max_task_drop)
                search.append({"step": i, "upgraded_groups": sum(1 for v in path[i].values() if v), "simulated": True,
                               "predicted_size_mb": predicted_mb(i), "meets_budget": ok,
                               **{key: m[key] for key in ("perplexity_increase_pct", "kl", "top1_agreement", "task")
                                  if key in m}})
                return ok

            # binary search on the path (within the size budget) for the first plan meeting the budget;
            # fill_size: straight to the last plan within the size budget
            t0 = time.perf_counter()
            found = check(last if o.fill_size else 0)
            i = last if o.fill_size else 0
            if not found and not o.fill_size:
                if last > 0 and check(last):
                    lo, hi = 0, last  # path[lo] fails, path[hi] passes
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        if check(mid):
                            hi = mid
                        else:
                            lo = mid
                    i, found = hi, True
                else:
                    i = last
            t_search = time.perf_counter() - t0
        del lm, proxy

        # 4. the real artifact, re-checked; walk further along the path while it misses the budget
        best = None
        step = max(1, len(path) // 16)
        while True:
            plan = path[i]
            real = onnx.ModelProto()
            real.CopyFrom(model)
            node_plan = {n: ladder[lvl] for g, lvl in plan.items() for n in groups[g] if ladder[lvl] is not None}
            mnb.replace_matmuls(real, node_plan, o.accuracy_level, {n: code(n, plan[group_of(n, o.granularity)])
                                                                   for n in node_plan})
            he = mnb.quantize_head_embed(real, o.lm_head, o.embeddings, head_first.block_size, head_first.symmetric,
                                         o.accuracy_level)
            counts = mnb.node_counts(real.graph)
            mnb.save_model(real, out_onnx)
            del real
            cand = OrtLM(out_onnx, 2)
            m = _score(cand, ref_check, check_wins, ppl_ref_check, o.task_metric, task_ref)
            del cand
            m["size_mb"] = Path(out_onnx).stat().st_size / 1e6
            ok = _meets(m, max_ppl, o.max_kl, o.max_task_drop)
            over_size = o.max_size_mb is not None and m["size_mb"] > o.max_size_mb
            search.append({"step": i, "upgraded_groups": sum(1 for v in plan.values() if v), "simulated": False,
                           "predicted_size_mb": predicted_mb(i), "size_mb": m["size_mb"], "meets_budget": ok,
                           **{key: m[key] for key in ("perplexity_increase_pct", "kl", "top1_agreement", "task")
                              if key in m}})
            if not over_size and (best is None or m["perplexity_increase_pct"] < best[1]["perplexity_increase_pct"]):
                best = (dict(plan), m)
            if over_size:  # every further step is larger still
                ok = False
                if best is None:
                    best = (dict(plan), m)
                break
            if ok or i >= last:
                break
            i = min(i + step, last)
    budget = {"max_ppl_increase_pct": max_ppl, "max_kl": o.max_kl, "max_task_drop": o.max_task_drop,
              "max_size_mb": o.max_size_mb,
              "checked_on": f"{len(check_wins)} calibration windows ({int(sum(len(w) for w in check_wins))} tokens) "
                            "after the sensitivity ones"}
    reached = {k2: m[k2] for k2 in ("perplexity", "perplexity_increase_pct", "kl", "top1_agreement", "task",
                                    "task_drop", "size_mb") if k2 in m}
    reached["reference_perplexity"] = ppl_ref_check
    if task_ref is not None:
        reached["reference_task"] = task_ref
    if not ok:
        raise _budget_error(o, best, labels, len(order))
    layer_plan = {n: labels[plan[group_of(n, o.granularity)]] for n in mats}
    result = {
        "budget": budget, "candidates": labels, "algo": o.algo, "granularity": o.granularity,
        "reached": reached, "found_in_simulation": found,
        **({"plan_from": str(o.plan_from)} if o.plan_from is not None else {}),
        "precision_counts": {lbl: list(layer_plan.values()).count(lbl) for lbl in labels},
        "groups": {g: {"precision": labels[plan[g]], "sensitivity_rank": order.index(g) + 1, **sensitivity[g],
                       "matmuls": groups[g]} for g in order},
        "layers": layer_plan, "search": search, "path_steps": len(path),
        "predicted_size_mb": predicted_mb(path.index(plan)) if plan in path else None, **he, **counts,
        "sensitivity_windows": len(sens_wins), "check_windows": len(check_wins), "sensitivity_key": sens_key,
        "sensitivity_reused": sorted({lbl for g in prior.values() for lbl in g.get("kl_per_rung", {})
                                      if lbl in labels and lbl != "fp32"}),
        "seconds": {"sensitivity": t_sens, "search": t_search, "total": time.perf_counter() - t_start},
    }
    from edgeft.fileio import atomic_write_text

    atomic_write_text(Path(out_onnx).parent / "quant_plan.json", json.dumps(result, indent=2))
    log.info("auto: %s; check windows %+.2f%% perplexity (budget %+g%%)",
             ", ".join(f"{k2} x{v}" for k2, v in result["precision_counts"].items() if v),
             reached["perplexity_increase_pct"], max_ppl)
    return {"symmetric": o.symmetric, "accuracy_level": o.accuracy_level, "nodes_to_exclude": o.nodes_to_exclude,
            "plan": result}


SCHEMES.register("auto")(Scheme("auto", "mixed int4/int8/fp32 MatMulNBits chosen per layer under a perplexity budget",
                                "int4", None, apply, AutoOptions, needs_calibration=True))
