"""Run a recipe end to end: data -> finetune -> merge -> export -> quantize -> validate -> package.

Each stage is keyed by a hash of its parameters and its upstream keys; an up-to-date stage is
skipped, so a rerun after an interruption resumes at the first unfinished stage (fine-tuning
resumes from its last checkpoint in ``runs/<name>/.work/finetune``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from edgeft.config.schema import Recipe
from edgeft.errors import BudgetError, ConfigError, StageError
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
        self._task = None
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

    @property
    def task(self):
        """The recipe's task adapter (:mod:`edgeft.pipeline.tasks`): every stage asks it what to read, build and
        score, instead of asking what the model is."""
        if self._task is None:
            from edgeft.pipeline.tasks import task_for

            self._task = task_for(self)
        return self._task

    def records(self, split: str, fields=("prompt", "response")) -> list[dict]:
        from edgeft.data.readers import read_records

        return read_records(self.run.stage_dir("data") / f"{split}.jsonl", list(fields))

    def general_text(self) -> str | None:
        """validate.perplexity.general's text (None when the recipe has no general-text check)."""
        g = self.recipe.validate_.perplexity.general
        if g is None:
            return None
        from edgeft.data.readers import general_text

        return general_text(g, self.base_dir)

    # ---------------------------------------------------------------- stages
    def stage_data(self, tmp: Path) -> dict:
        from edgeft.data import splits
        from edgeft.data.readers import read_records, write_jsonl

        d = self.recipe.data
        fields = self.task.fields
        train, ev, source = self.task.data(tmp)
        if d.extra_train:  # reviewed rows (edgeft monitor): the objective's fields only, appended to train
            extra = []
            for rel in d.extra_train:
                p = Path(rel) if Path(rel).is_absolute() else self.base_dir / rel
                extra += [{k: str(r[k]) for k in fields} for r in read_records(p, list(fields))]
            train = train + extra
            source = {**source, "extra_train": list(d.extra_train), "n_extra_train": len(extra)}
        for split, recs in (("train", train), ("eval", ev)):
            splits.check_fields(recs, fields, f"data ({split} split, {source})", self.recipe.finetune.objective)
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", ev)
        return {"n_train": len(train), "n_eval": len(ev), "source": source}

    def stage_finetune(self, tmp: Path) -> dict:
        work = self.run.work_dir("finetune")
        marker = work / "key"
        key = self.keys["finetune"]
        if work.exists() and (not marker.is_file() or marker.read_text() != key):
            shutil.rmtree(work)  # checkpoints from different parameters: start over
        work.mkdir(parents=True, exist_ok=True)
        marker.write_text(key)
        return self.task.finetune(tmp, work)

    def stage_merge(self, tmp: Path) -> dict:
        """Merge (or copy) the trained model into ``tmp``, then describe it there (``artifact.json``)."""
        from edgeft import artifacts

        metrics = self.task.merge(tmp)
        artifacts.write(tmp, name="merged", kind=self.kind, format="pytorch", stage="merge",
                        producer=self.recipe.finetune.method, options=self.recipe.merge)
        return metrics

    def stage_export(self, tmp: Path) -> dict:
        return self.task.export(tmp)

    def stage_quantize(self, tmp: Path) -> dict:
        return self.task.quantize(tmp)

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
        report = self.task.validate(tmp)
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
