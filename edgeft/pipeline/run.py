"""Run a recipe end to end: data -> finetune -> merge -> export -> quantize -> validate -> package.

Each stage is keyed by a hash of its parameters and its upstream keys; an up-to-date stage is
skipped, so a rerun after an interruption resumes at the first unfinished stage (fine-tuning
resumes from its last checkpoint in ``runs/<name>/.work/finetune``).
"""

from __future__ import annotations

import itertools

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from edgeft.config.schema import Recipe
from edgeft.errors import BudgetError, ConfigError, StageError
from edgeft.pipeline import classify, vision
from edgeft.pipeline.rundir import STAGES, RunDir, stable_hash

if TYPE_CHECKING:
    from edgeft.validate.report import ValidationReport

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgeft")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0+unknown"


@dataclass
class RunResult:
    run_dir: Path
    recipe: Recipe
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    report: ValidationReport | None = None
    bundle: Path | None = None
    tarball: Path | None = None


class Pipeline:
    def __init__(self, recipe: Recipe, recipe_path: Path | None, runs_root: Path, console=None) -> None:
        self.recipe = recipe
        self.recipe_path = Path(recipe_path) if recipe_path else None
        self.base_dir = self.recipe_path.parent if self.recipe_path else Path.cwd()
        self.run = RunDir(Path(runs_root) / recipe.name)
        self.console = console
        self.keys: dict[str, str] = {}
        self._model = None
        self._kind: str | None = None
        self._presets: dict = {}

    # ---------------------------------------------------------------- helpers
    def model(self):
        if self._model is None:
            from edgeft.models import resolve_model

            self._model = resolve_model(self.recipe.model, self.base_dir)
        return self._model

    @property
    def kind(self) -> str:
        """What the recipe trains: ``causal-lm``, ``classifier`` or ``image-classifier`` (decided once, from the
        objective's task; every stage, validate and package follow it)."""
        if self._kind is None:
            import edgeft.finetune  # noqa: F401 - registers the objectives
            from edgeft.artifacts import kind_of_task
            from edgeft.finetune.registry import OBJECTIVES

            self._kind = kind_of_task(OBJECTIVES.get(self.recipe.finetune.objective, "finetune.objective").task)
        return self._kind

    def preset(self, name: str):
        """An export preset of the recipe, loaded and checked once per run."""
        if name not in self._presets:
            from edgeft.exporters import load_checked_preset

            self._presets[name] = load_checked_preset(name)
        return self._presets[name]

    @property
    def main_export_name(self) -> str:
        """The main export's artifact name in reports and bundles."""
        return "torchscript-fp32" if self.preset(self.recipe.export.preset).format == "torchscript" else "onnx-fp32"

    def _key(self, stage: str, params: dict) -> str:
        upstream = {s: self.keys.get(s) for s in STAGES[: STAGES.index(stage)]}
        return stable_hash({"stage": stage, "params": params, "upstream": upstream, "edgeft": _version()})

    def params(self, stage: str) -> dict:
        r = self.recipe
        v = r.validate_
        return {
            # extra_train only when set: recipes without it keep the keys (and the finished stages) they had
            "data": {"model": r.model, "data": r.data.model_dump(exclude=set() if r.data.extra_train else {"extra_train"}),
                     **({"objective": r.finetune.objective} if r.finetune.objective != "sft" else {}),
                     **({"multitask": r.finetune.multitask.model_dump()} if r.finetune.multitask else {})},
            "finetune": r.finetune.model_dump(exclude=self._unused_finetune_keys()),
            "merge": r.merge.model_dump(),
            "export": r.export.model_dump(),
            # the general-text check is validate's alone: adding it does not re-quantize
            "quantize": [q.model_dump(exclude={"budgets"}) for q in r.quantize]
                        + [v.perplexity.model_dump(exclude={"general"})],
            # per-artifact budgets live on the quantize specs; they change the verdict, so they key validate
            "validate": {**v.model_dump(), **({"artifact_budgets": {q.name: q.budgets.model_dump() for q in r.quantize
                                                                  if q.budgets is not None}}
                                              if any(q.budgets is not None for q in r.quantize) else {})},
            "package": {**r.package.model_dump(), "name": r.name, "version": r.version},
        }[stage]

    def _unused_finetune_keys(self) -> set[str]:
        """Settings that cannot change this run's result (other objectives' sections, single-process defaults)."""
        ft = self.recipe.finetune
        out = {"report_to", "threads"} | ({"dpo", "distill", "multitask"} - {ft.objective})
        return out | ({"processes"} if ft.processes == 1 else set()) | ({"accelerate_config"} if not ft.accelerate_config else set())

    def objective_fields(self) -> tuple[str, ...]:
        from edgeft.finetune.registry import OBJECTIVES
        import edgeft.finetune  # noqa: F401 - registers the objectives

        return OBJECTIVES.get(self.recipe.finetune.objective, "finetune.objective").fields

    def records(self, split: str, fields=("prompt", "response")) -> list[dict]:
        from edgeft.data.readers import read_records

        return read_records(self.run.stage_dir("data") / f"{split}.jsonl", list(fields))

    @property
    def raw_text(self) -> bool:
        """The objective learns from raw text records (``clm``), not prompt/response pairs."""
        return self.recipe.finetune.objective == "clm"

    def corpus(self, tok, split: str) -> str:
        """A split as one text: raw text records as they are, conversations rendered with the template."""
        from edgeft.data.templates import conversation_text

        if self.raw_text:
            return "\n\n".join(str(r["text"]) for r in self.records(split, ("text",)))
        sp = self.recipe.data.system_prompt
        return "".join(conversation_text(tok, sp, r["prompt"], r["response"]) for r in self.records(split))

    def heldout_text(self) -> str | None:
        spec = self.recipe.validate_.perplexity.text
        if spec == "eval-split":
            if self.raw_text:
                from edgeft.data.readers import read_records

                return "\n\n".join(str(r["text"]) for r in read_records(
                    self.run.stage_dir("data") / "eval.jsonl", ["text"]))
            return None  # validate renders the eval conversations
        from edgeft.data.readers import read_text

        p = Path(spec)
        return read_text(p if p.is_absolute() else self.base_dir / p)

    def general_text(self) -> str | None:
        """validate.perplexity.general's text (None when the recipe has no general-text check)."""
        g = self.recipe.validate_.perplexity.general
        if g is None:
            return None
        from edgeft.data.readers import general_text

        return general_text(g, self.base_dir)

    def heldout_windows(self, tokenizer_dir: Path):
        from transformers import AutoTokenizer

        from edgeft.metrics.lm import windows

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        text = self.heldout_text()
        if text is None:
            text = self.corpus(tok, "eval")
        p = self.recipe.validate_.perplexity
        return windows(tok(text, add_special_tokens=False).input_ids, p.seq_len, p.stride, p.max_tokens)

    # ---------------------------------------------------------------- stages
    def stage_data(self, tmp: Path) -> dict:
        from edgeft.data.generators import GENERATORS
        from edgeft.data.readers import read_records, write_jsonl

        from edgeft.data import splits

        d = self.recipe.data
        fields, objective = self.objective_fields(), self.recipe.finetune.objective
        if self.kind == "image-classifier":  # labelled images: records hold paths (the embedded set is written here)
            train, ev, source = vision.data(self, tmp)
        elif objective == "multitask" and self.recipe.finetune.multitask is not None:
            train, ev = splits.multitask_records(self.recipe.finetune.multitask.tasks, self.base_dir)
            source = {"multitask": [t.name for t in self.recipe.finetune.multitask.tasks]}
        elif d.text is not None:
            t = d.text
            train, ev = splits.text_records(Path(t.path) if Path(t.path).is_absolute() else self.base_dir / t.path,
                                            t.eval_fraction, t.chunk_chars, t.max_chars)
            source = {"text": t.path, "eval_fraction": t.eval_fraction}
        elif classify.handles(d.files):  # text/label columns, or one file split into train/eval
            train, ev, source = classify.file_records(d.files, self.base_dir)
        elif d.files is not None:
            f = d.files
            # record field -> file column: prompt/response as configured, any other field the objective needs as is
            cols = {k: {"prompt": f.prompt_field, "response": f.response_field}.get(k, k) for k in fields}

            def load(rel: str) -> list[dict]:
                p = Path(rel) if Path(rel).is_absolute() else self.base_dir / rel
                rows = read_records(p, [cols[k] for k in fields])
                return [{k: str(r[c]) for k, c in cols.items()} for r in rows]

            train, ev = load(f.train), load(f.eval)
            if "chosen" in fields:  # downstream stages score the preferred answer
                train, ev = ([{"response": r["chosen"], **r} for r in rs] for rs in (train, ev))
            source = {"train": f.train, "eval": f.eval}
        else:
            g = d.generated
            train, ev = GENERATORS.get(g.generator, "data.generated.generator")(g.n_train, g.n_eval, g.seed)
            source = {"generator": g.generator, "seed": g.seed}
        if d.extra_train:  # reviewed rows (edgeft monitor): the objective's fields only, appended to train
            extra = []
            for rel in d.extra_train:
                p = Path(rel) if Path(rel).is_absolute() else self.base_dir / rel
                cols = classify.FIELDS if self.kind == "classifier" else fields
                extra += [{k: str(r[k]) for k in cols} for r in read_records(p, list(cols))]
            train = train + extra
            source = {**source, "extra_train": list(d.extra_train), "n_extra_train": len(extra)}
        for split, recs in (("train", train), ("eval", ev)):
            splits.check_fields(recs, fields, f"data ({split} split, {source})", objective)
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", ev)
        return {"n_train": len(train), "n_eval": len(ev), "source": source}

    def stage_finetune(self, tmp: Path) -> dict:
        from edgeft.finetune import finetune

        work = self.run.work_dir("finetune")
        marker = work / "key"
        key = self.keys["finetune"]
        if work.exists() and (not marker.is_file() or marker.read_text() != key):
            shutil.rmtree(work)  # checkpoints from different parameters: start over
        work.mkdir(parents=True, exist_ok=True)
        marker.write_text(key)
        if self.kind == "image-classifier":
            return {**vision.finetune(self, tmp, work), "base_model_source": self.model().source}
        m = self.model()
        fields = self.objective_fields()
        train = self.records("train", fields)
        cfg = classify.finetune_cfg(self.recipe.finetune, train) if self.kind == "classifier" else self.recipe.finetune
        if cfg.accelerate_config and not Path(cfg.accelerate_config).is_absolute():  # relative to the recipe file
            cfg = cfg.model_copy(update={"accelerate_config": str(self.base_dir / cfg.accelerate_config)})
        metrics = finetune(m.path, train, self.records("eval", fields), tmp,
                           cfg, self.recipe.data.system_prompt, work_dir=work)
        metrics["base_model_source"] = m.source
        return metrics

    def stage_merge(self, tmp: Path) -> dict:
        """Merge (or copy) the trained model into ``tmp``, then describe it there (``artifact.json``)."""
        from edgeft import artifacts

        metrics = self._merge(tmp)
        artifacts.write(tmp, name="merged", kind=self.kind, format="pytorch", stage="merge",
                        producer=self.recipe.finetune.method, options=self.recipe.merge)
        return metrics

    def _merge(self, tmp: Path) -> dict:
        from edgeft.finetune import METHODS
        from edgeft.merge import merge

        method = METHODS.get(self.recipe.finetune.method, "finetune.method")
        trained = self.run.stage_dir("finetune") / method.produces  # adapter (merge) or whole model (copy)
        if self.kind == "image-classifier":
            return vision.merge(self, tmp)
        if self.kind == "classifier":
            if method.produces == "adapter":
                return classify.merge(self, tmp)
            texts = [str(r["text"]) for r in self.records("eval", classify.FIELDS)[:classify.SAMPLE_TEXTS]]
            return merge(trained, tmp, tolerance=self.recipe.merge.tolerance, sample_texts=texts)
        from edgeft.data.templates import conversation_text
        from transformers import AutoTokenizer

        adapter = trained
        tok = AutoTokenizer.from_pretrained(str(adapter))
        sp = self.recipe.data.system_prompt
        if self.recipe.finetune.objective == "clm":  # raw-text records
            samples = [r["text"][:2000] for r in self.records("eval", ("text",))[:4]]
        else:
            samples = [conversation_text(tok, sp, r["prompt"], r["response"]) for r in self.records("eval")[:4]]
        student = self.run.stage_dir("finetune") / "student"  # distill: the adapter's base is the cut-down student
        return merge(adapter, tmp, base_model=student if student.is_dir() else self.model().path,
                     tolerance=self.recipe.merge.tolerance,
                     sample_texts=samples)

    def stage_export(self, tmp: Path) -> dict:
        if self.kind == "image-classifier":
            return vision.export(self, tmp)
        if self.kind == "classifier":
            return classify.export(self, tmp)
        from transformers import AutoTokenizer

        from edgeft.data.templates import prompt_ids
        from edgeft.exporters import export

        merged = self.run.stage_dir("merge")
        tok = AutoTokenizer.from_pretrained(str(merged))
        if self.raw_text:
            ids = tok(self.records("eval", ("text",))[0]["text"], add_special_tokens=False).input_ids[:48]
        else:
            r0 = self.records("eval")[0]
            ids = prompt_ids(tok, self.recipe.data.system_prompt, r0["prompt"]) + tok(r0["response"]).input_ids[:4]
        rep = export(merged, tmp, preset=self.preset(self.recipe.export.preset), name=self.main_export_name,
                     tolerance=self.recipe.export.tolerance, sample_ids=ids)
        if self.recipe.export.extra:  # more artifacts from the merged model, each in export/<preset>/
            wins = self.heldout_windows(merged)
            # GGUF presets: llama.cpp's importance matrix from the training split (disjoint from the held-out text)
            gguf = [n for n in self.recipe.export.extra if self.preset(n).format == "gguf"]
            calib = {"calibration_ids": self.calibration_windows(merged)} if gguf else {}
            rep["extra"] = {name: export(merged, tmp / name, preset=self.preset(name), name=name,
                                         tolerance=self.recipe.export.tolerance, sample_ids=ids, quality_ids=wins,
                                         **(calib if name in gguf else {}))
                            for name in self.recipe.export.extra}
        return rep

    def stage_quantize(self, tmp: Path) -> dict:
        if self.kind == "image-classifier":
            return vision.quantize(self, tmp)
        if self.kind == "classifier":
            return classify.quantize(self, tmp)
        from edgeft.quantize import quantize

        from edgeft.quantize import SCHEMES

        src = self.run.stage_dir("export")
        wins = self.heldout_windows(src)
        calib = None
        if any(SCHEMES.get(q.scheme, "quantize.scheme").needs_calibration for q in self.recipe.quantize):
            calib = self.calibration_windows(src)
        out = {}
        for q in self.recipe.quantize:
            sch = SCHEMES.get(q.scheme, "quantize.scheme")
            # PyTorch-side schemes (bnb, torch.ao, GPTQModel) read the merged model, ONNX ones the export
            pytorch_input = sch.input_format == "pytorch"
            out[q.name] = quantize(self.run.stage_dir("merge") if pytorch_input else src, tmp / q.name, q.scheme,
                                   q.options, quality_ids=wins, max_ppl_increase_pct=q.max_ppl_increase_pct,
                                   calibration_ids=calib,  # and the fine-tune's adapter (loading checked there is one)
                                   adapter_dir=(self.run.stage_dir("finetune") / "adapter")
                                   if sch.needs_adapter or sch.uses_adapter else None, name=q.name)
        return out

    def calibration_windows(self, tokenizer_dir: Path, n_windows: int = 16, seq_len: int = 128):
        """Calibration text: the *training* split (rendered conversations or raw text), disjoint from the eval text."""
        from transformers import AutoTokenizer

        from edgeft.metrics.lm import windows

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        text = self.corpus(tok, "train")
        return windows(tok(text, add_special_tokens=False).input_ids, seq_len, seq_len, n_windows * seq_len)

    def artifacts(self):
        """Every artifact of the run to validate (and package), as the stages that made them described them
        (``artifact.json``); the base model, which no stage made, is described from its folder."""
        from edgeft import artifacts
        from edgeft.validate import Artifact

        arts = []
        if self.recipe.validate_.include_base:
            base = self.model().path
            spec = artifacts.describe(base, name="base", kind=artifacts.model_kind(base), format="pytorch",
                                      stage="base", producer=self.model().source)
            arts.append(Artifact.of(spec, base, role="base"))
        arts.append(Artifact.at(self.run.stage_dir("merge"), "merge", role="reference"))
        export = self.run.stage_dir("export")
        arts.append(Artifact.at(export, "export"))
        arts += [Artifact.at(export / name, "export", budgets=self.recipe.export.budgets.get(name))
                 for name in self.recipe.export.extra]
        arts += [Artifact.at(self.run.stage_dir("quantize") / q.name, "quantize", budgets=q.budgets)
                 for q in self.recipe.quantize]
        return arts

    def stage_validate(self, tmp: Path) -> dict:
        from edgeft.validate import validate

        if self.kind == "image-classifier":
            return vision.validate(self, tmp)
        if self.kind == "classifier":
            ev = self.records("eval", classify.FIELDS)
        elif self.raw_text:  # raw text (clm) has no task examples: validate gates on perplexity alone
            ev = []
        elif self.recipe.finetune.objective == "multitask" and self.recipe.finetune.multitask is not None:
            # each task scored with its own system prompt and metric, reported per task
            tasks = {t.name: t for t in self.recipe.finetune.multitask.tasks}
            by_task: dict[str, list[dict]] = {n: [] for n in tasks}
            for r in self.records("eval", ("prompt", "response", "task")):
                if r["task"] in tasks:
                    by_task[r["task"]].append({**r, "system_prompt": tasks[r["task"]].system_prompt,
                                               "metric": tasks[r["task"]].metric})
            # round-robin over tasks, so validate.eval_examples keeps every task in the sample
            ev = [r for group in itertools.zip_longest(*by_task.values()) for r in group if r is not None]
        else:
            ev = self.records("eval")
        report = validate(self.artifacts(), self.run.stage_dir("merge"), ev, tmp,
                          self.recipe.validate_, self.recipe.data.system_prompt, self.heldout_text(),
                          recipe_name=self.recipe.name, general_text=self.general_text(), kind=self.kind)
        return {"passed": report.passed, "flags": report.flags}

    def stage_package(self, tmp: Path) -> dict:
        from edgeft.pipeline.bundle import package_run

        res = package_run(self, tmp)
        return {"bundle": str(res.bundle_dir.name), "tarball": res.tarball.name if res.tarball else None,
                "files": len(res.manifest["files"])}

    def check_method(self, only: Sequence[str] | None = None) -> None:
        """Fail before any stage runs when the method/objective names are unknown, or the method's result
        cannot be merged (``merge == "refuse"``) but a stage from merge on would run."""
        from edgeft.errors import UnsupportedError
        from edgeft.finetune import METHODS, OBJECTIVES

        ft = self.recipe.finetune
        method = METHODS.get(ft.method, "finetune.method")
        OBJECTIVES.get(ft.objective, "finetune.objective")
        later = [s for s in (only or STAGES) if STAGES.index(s) >= STAGES.index("merge")]
        if method.merge == "refuse" and later:
            raise UnsupportedError(f"finetune.method {ft.method!r} cannot reach the {later[0]} stage: "
                                   f"{method.merge_note}; or run only `edgeft finetune RECIPE`")

    # ---------------------------------------------------------------- driver
    def _gates_failed(self, note: str) -> BudgetError:
        """The error a failed validate raises; its report.json goes with it, so the CLI can show the table first."""
        report = self.run.stage_dir("validate") / "report.json"
        err = BudgetError(f"validate: gates failed{note}; see {report}")
        err.report = report
        return err

    def execute(self, from_stage: str | None = None, dry_run: bool = False, only: Sequence[str] | None = None,
                on_stage: Callable[[str, str], None] | None = None) -> RunResult:
        if from_stage is not None and from_stage not in STAGES:
            raise ConfigError(f"--from {from_stage!r}: unknown stage; valid stages: {', '.join(STAGES)}")
        res = RunResult(self.run.root, self.recipe)
        from edgeft.models import check_spec

        check_spec(self.recipe.model, self.base_dir)  # a missing model fails before anything is written
        self.check_method(only)  # e.g. a method that cannot be merged, in a recipe that exports: fail before training
        if not dry_run:
            self.run.root.mkdir(parents=True, exist_ok=True)
            import yaml

            (self.run.root / "recipe.yaml").write_text(
                yaml.safe_dump(self.recipe.model_dump(by_alias=True), sort_keys=False))
            if from_stage:
                self.run.invalidate_from(from_stage)
        for stage in STAGES:
            key = self._key(stage, self.params(stage))
            self.keys[stage] = key
            if only is not None and STAGES.index(stage) > max(STAGES.index(s) for s in only):
                break  # later stages are not needed (e.g. `edgeft finetune` on a fresh run)
            if only is not None and stage not in only:
                if not dry_run and not self.run.is_current(stage, key):
                    raise StageError(f"stage {stage!r} has no up-to-date output in {self.run.root}; run "
                                     f"`edgeft run {self.recipe_path or 'RECIPE'}` (or the {stage} command) first")
                continue
            current = self.run.is_current(stage, key)
            if dry_run:
                if on_stage:
                    on_stage(stage, "up to date (skip)" if current else "would run")
                continue
            if current:
                res.skipped.append(stage)
                if on_stage:
                    on_stage(stage, "up to date, skipped")
                if stage == "validate" and not self.run.record(stage)["metrics"]["passed"]:
                    raise self._gates_failed(" (unchanged since the last run)")
                continue
            if on_stage:
                on_stage(stage, "running")
            tmp = self.run.begin(stage)
            t0 = time.perf_counter()
            try:
                metrics = getattr(self, f"stage_{stage}")(tmp)
            except BaseException:
                self.run.abort(tmp)
                raise
            seconds = time.perf_counter() - t0
            res.timings[stage] = seconds
            self.run.commit(stage, tmp, {"stage": stage, "key": key, "params": self.params(stage),
                                         "edgeft": _version(), "seconds": seconds, "metrics": metrics})
            if on_stage:
                on_stage(stage, f"done in {seconds:.1f}s")
            if stage == "validate" and not metrics["passed"]:
                raise self._gates_failed("")
        if not dry_run:
            from edgeft.validate.report import ValidationReport

            rep = self.run.stage_dir("validate") / "report.json"
            res.report = ValidationReport.load(rep) if rep.is_file() else None
            pk = self.run.record("package")
            if pk:
                res.bundle = self.run.stage_dir("package") / pk["metrics"]["bundle"]
                res.tarball = self.run.stage_dir("package") / pk["metrics"]["tarball"] if pk["metrics"]["tarball"] else None
        return res


def run(recipe_path: Path | str, overrides: Sequence[str] = (), from_stage: str | None = None, dry_run: bool = False,
        runs_root: Path | str = "runs", console=None, on_stage=None) -> RunResult:
    """Run a recipe file end to end (the ``edgeft run`` command)."""
    from edgeft.config.loader import resolve_recipe_path
    from edgeft.recipe import load_recipe

    recipe = load_recipe(recipe_path, list(overrides))  # schema, schemes and options, presets, devices, files
    file = resolve_recipe_path(recipe_path)
    p = Pipeline(recipe, file, Path(runs_root), console)
    return p.execute(from_stage=from_stage, dry_run=dry_run, on_stage=on_stage)
