"""Task adapters: what a recipe trains, chosen once from it, asked by every stage and by package.

The objective's task gives the kind of model (:attr:`edgeft.pipeline.run.Pipeline.kind`): a sequence
classifier (:class:`ClassifierTask`), an image classifier (:class:`ImageTask`) or a causal LM, whose
objective's ``records`` say which: chat turns (:class:`ChatTask`: sft, dpo, distill, grpo), raw text
(:class:`RawTextTask`: clm) or a mixture of tagged tasks (:class:`MultitaskTask`); a sequence classifier trained on
preference pairs is a reward model (:class:`RewardTask`: stops after finetune). A task knows which
records and fields its splits hold, how the data stage reads them, how held-out and calibration text are
built, which samples merge and export check, and which quantize and validate path scores its artifacts.
The stage methods of :class:`~edgeft.pipeline.run.Pipeline` call their task and never ask what it is.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar, Optional

from edgeft.pipeline import classify, vision

# What a bundle carries beside its artifacts: (folder in the bundle, files of the merged model's folder).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "config.json", "generation_config.json")
IMAGE_MODEL_FILES = ("config.json", "preprocessor_config.json")


def task_for(pipeline) -> "Task":
    """The task adapter of ``pipeline``'s recipe (its objective's task and records)."""
    import edgeft.finetune  # noqa: F401 - registers the objectives
    from edgeft.finetune.registry import OBJECTIVES

    objective = OBJECTIVES.get(pipeline.recipe.finetune.objective, "finetune.objective")
    if pipeline.kind == "image-classifier":
        return ImageTask(pipeline)
    if pipeline.kind == "classifier":
        return RewardTask(pipeline) if objective.records == "pairs" else ClassifierTask(pipeline)
    return {"chat": ChatTask, "raw-text": RawTextTask, "multitask": MultitaskTask}[objective.records](pipeline)


class Task:
    """One kind of training data and model; a stage calls the method of its name (``data``, ``finetune``,
    ``merge``, ``export``, ``quantize``, ``validate``)."""

    # (folder in the bundle, files of the merged model) shipped beside the artifacts
    side_files: ClassVar[tuple[str, tuple[str, ...]]] = ("tokenizer", TOKENIZER_FILES)
    # the report's accuracy fields the bundle's manifest carries per artifact
    metric_keys: ClassVar[tuple[str, ...]] = ("exact_match", "json_valid", "perplexity")
    # the record fields edgeft monitor's reference statistics read (None: not monitored)
    monitor_fields: ClassVar[Optional[tuple[str, ...]]] = ("prompt",)

    def __init__(self, pipeline) -> None:
        self.p = pipeline
        self.recipe = pipeline.recipe

    @property
    def kind(self) -> str:
        return self.p.kind

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields the objective trains on (the data stage writes and checks them)."""
        import edgeft.finetune  # noqa: F401 - registers the objectives
        from edgeft.finetune.registry import OBJECTIVES

        return OBJECTIVES.get(self.recipe.finetune.objective, "finetune.objective").fields

    def records(self, split: str, fields=("prompt", "response")) -> list[dict]:
        return self.p.records(split, fields)

    def _path(self, rel: str) -> Path:
        return Path(rel) if Path(rel).is_absolute() else self.p.base_dir / rel

    def trained(self) -> tuple[Path, str]:
        """(the finetune stage's result folder, what it is: ``adapter`` or ``model``)."""
        from edgeft.finetune import METHODS

        method = METHODS.get(self.recipe.finetune.method, "finetune.method")
        return self.p.run.stage_dir("finetune") / method.produces, method.produces

    # ---------------------------------------------------------------- data, finetune
    def data(self, tmp: Path) -> tuple[list[dict], list[dict], dict]:
        """(train, eval, source) records from ``data.text``, ``data.files`` or ``data.generated``."""
        from edgeft.data import splits
        from edgeft.data.generators import GENERATORS
        from edgeft.data.readers import read_records

        d, fields = self.recipe.data, self.fields
        if d.text is not None:
            t = d.text
            train, ev = splits.text_records(self._path(t.path), t.eval_fraction, t.chunk_chars, t.max_chars)
            return train, ev, {"text": t.path, "eval_fraction": t.eval_fraction}
        if classify.handles(d.files):  # text/label columns, or one file split into train/eval
            return classify.file_records(d.files, self.p.base_dir)
        if d.files is not None:
            f = d.files
            # record field -> file column: prompt/response as configured, any other field the objective needs as is
            cols = {k: {"prompt": f.prompt_field, "response": f.response_field}.get(k, k) for k in fields}

            def load(rel: str) -> list[dict]:
                rows = read_records(self._path(rel), [cols[k] for k in fields])
                return [{k: str(r[c]) for k, c in cols.items()} for r in rows]

            train, ev = load(f.train), load(f.eval)
            if "chosen" in fields:  # downstream stages score the preferred answer
                train, ev = ([{"response": r["chosen"], **r} for r in rs] for rs in (train, ev))
            return train, ev, {"train": f.train, "eval": f.eval}
        g = d.generated
        train, ev = GENERATORS.get(g.generator, "data.generated.generator")(g.n_train, g.n_eval, g.seed)
        return train, ev, {"generator": g.generator, "seed": g.seed}

    def finetune_cfg(self, train: list[dict]):
        """The recipe's ``finetune`` section as this task trains with it."""
        return self.recipe.finetune

    def finetune(self, tmp: Path, work: Path) -> dict:
        from edgeft.finetune import finetune

        m = self.p.model()
        train = self.records("train", self.fields)
        cfg = self.finetune_cfg(train)
        if cfg.accelerate_config and not Path(cfg.accelerate_config).is_absolute():  # relative to the recipe file
            cfg = cfg.model_copy(update={"accelerate_config": str(self.p.base_dir / cfg.accelerate_config)})
        metrics = finetune(m.path, train, self.records("eval", self.fields), tmp,
                           cfg, self.recipe.data.system_prompt, work_dir=work)
        metrics["base_model_source"] = m.source
        return metrics

    # ---------------------------------------------------------------- merge .. validate
    def merge(self, tmp: Path) -> dict:
        raise NotImplementedError

    def export(self, tmp: Path) -> dict:
        raise NotImplementedError

    def quantize(self, tmp: Path) -> dict:
        raise NotImplementedError

    def validate(self, tmp: Path):
        """Validate the run's artifacts into ``tmp``; the :class:`~edgeft.validate.report.ValidationReport`."""
        raise NotImplementedError


class ChatTask(Task):
    """A causal LM trained on chat turns (``prompt`` / ``response``; dpo's preferred answer is the response):
    scored by greedy exact match on the eval split and perplexity on the rendered conversations."""

    # ---------------------------------------------------------------- text the stages score on
    def corpus(self, tok, split: str) -> str:
        """A split as one text: the conversations rendered with the chat template."""
        from edgeft.data.templates import conversation_text

        sp = self.recipe.data.system_prompt
        return "".join(conversation_text(tok, sp, r["prompt"], r["response"]) for r in self.records(split))

    def eval_split_text(self) -> Optional[str]:
        """``validate.perplexity.text: eval-split``'s text for validate (None: validate renders the eval records)."""
        return None

    def heldout_text(self) -> Optional[str]:
        spec = self.recipe.validate_.perplexity.text
        if spec == "eval-split":
            return self.eval_split_text()
        from edgeft.data.readers import read_text

        return read_text(self._path(spec))

    def heldout_windows(self, tokenizer_dir: Path):
        """Token windows of the held-out text (``validate.perplexity``'s protocol): what quantize and export
        extras are scored on."""
        from transformers import AutoTokenizer

        from edgeft.metrics.lm import text_windows

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        text = self.heldout_text()
        if text is None:
            text = self.corpus(tok, "eval")
        p = self.recipe.validate_.perplexity
        return text_windows(tok, text, p.seq_len, p.stride, p.max_tokens)

    def calibration_windows(self, tokenizer_dir: Path, n_windows: int = 16, seq_len: int = 128):
        """Calibration text: the *training* split, disjoint from the eval text."""
        from transformers import AutoTokenizer

        from edgeft.metrics.lm import text_windows

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        return text_windows(tok, self.corpus(tok, "train"), seq_len, seq_len, n_windows * seq_len)

    def merge_samples(self, tok) -> list[str]:
        """The texts merge checks logits on."""
        from edgeft.data.templates import conversation_text

        sp = self.recipe.data.system_prompt
        return [conversation_text(tok, sp, r["prompt"], r["response"]) for r in self.records("eval")[:4]]

    def sample_ids(self, tok) -> list[int]:
        """The token ids export checks parity on: the first eval prompt and the start of its answer."""
        from edgeft.data.templates import prompt_ids

        r0 = self.records("eval")[0]
        return prompt_ids(tok, self.recipe.data.system_prompt, r0["prompt"]) + tok(r0["response"]).input_ids[:4]

    def validate_records(self) -> list[dict]:
        """The eval records validate scores the task metric on."""
        return self.records("eval")

    # ---------------------------------------------------------------- stages
    def merge(self, tmp: Path) -> dict:
        from transformers import AutoTokenizer

        from edgeft.merge import merge

        adapter, _ = self.trained()
        samples = self.merge_samples(AutoTokenizer.from_pretrained(str(adapter)))
        student = self.p.run.stage_dir("finetune") / "student"  # distill: the adapter's base is the cut-down student
        return merge(adapter, tmp, base_model=student if student.is_dir() else self.p.model().path,
                     tolerance=self.recipe.merge.tolerance, sample_texts=samples)

    def export(self, tmp: Path) -> dict:
        from transformers import AutoTokenizer

        from edgeft.exporters import export

        e = self.recipe.export
        merged = self.p.run.stage_dir("merge")
        ids = self.sample_ids(AutoTokenizer.from_pretrained(str(merged)))
        rep = export(merged, tmp, preset=self.p.preset(e.preset), name=self.p.main_export_name,
                     tolerance=e.tolerance, sample_ids=ids)
        if e.drafts:
            rep["drafts"] = self.write_drafts(tmp, AutoTokenizer.from_pretrained(str(merged)))
        if e.extra:  # more artifacts from the merged model, each in export/<preset>/
            wins = self.heldout_windows(merged)
            # GGUF presets: llama.cpp's importance matrix from the training split (disjoint from the held-out text)
            gguf = [n for n in e.extra if self.p.preset(n).format == "gguf"]
            calib = {"calibration_ids": self.calibration_windows(merged)} if gguf else {}
            rep["extra"] = {name: export(merged, tmp / name, preset=self.p.preset(name), name=name,
                                         tolerance=e.tolerance, sample_ids=ids, quality_ids=wins,
                                         **(calib if name in gguf else {}))
                            for name in e.extra}
        return rep

    def write_drafts(self, folder: Path, tok) -> dict:
        """``export.drafts``: the training answers' n-gram table beside the exported graph (the answer tokens as
        the model emits them, ending with the turn-end token); ``artifact.json`` re-read to list it."""
        from edgeft import artifacts
        from edgeft.data.templates import stop_ids
        from edgeft.errors import ConfigError
        from edgeft.runtime.ortcore import DRAFTS_FILE, NgramDrafts

        art = artifacts.Artifact.load(folder)
        if art.runtime not in ("onnx", "onnxruntime-genai"):
            raise ConfigError(f"export.drafts: the {art.producer} export runs in {art.runtime}, which does not "
                              "speculate; use an ONNX preset (genai-fp32, onnx-kv) or set export.drafts: false")
        end = stop_ids(tok)[:1]
        train = self.records("train")
        if not train or any(not r.get("response") for r in train):
            raise ConfigError("export.drafts: the training split has records without a response; drafts come from "
                              "chat answers (objectives sft, dpo, distill); set export.drafts: false")
        drafts = NgramDrafts([tok(r["response"], add_special_tokens=False).input_ids + end for r in train])
        drafts.save(folder / DRAFTS_FILE)
        artifacts.refresh(folder)
        return {"file": DRAFTS_FILE, "answers": len(train), "contexts": len(drafts.next)}

    def quantize(self, tmp: Path) -> dict:
        from edgeft.quantize import SCHEMES, quantize

        src = self.p.run.stage_dir("export")
        wins = self.heldout_windows(src)
        calib = None
        if any(SCHEMES.get(q.scheme, "quantize.scheme").needs_calibration for q in self.recipe.quantize):
            calib = self.calibration_windows(src)
        adapter = self.p.run.stage_dir("finetune") / "adapter"
        out = {}
        for q in self.recipe.quantize:
            sch = SCHEMES.get(q.scheme, "quantize.scheme")
            # PyTorch-side schemes (bnb, torch.ao, GPTQModel) read the merged model, ONNX ones the export
            pytorch_input = sch.input_format == "pytorch"
            out[q.name] = quantize(self.p.run.stage_dir("merge") if pytorch_input else src, tmp / q.name, q.scheme,
                                   q.options, quality_ids=wins, max_ppl_increase_pct=q.max_ppl_increase_pct,
                                   calibration_ids=calib,  # and the fine-tune's adapter (loading checked there is one)
                                   adapter_dir=adapter if sch.needs_adapter or sch.uses_adapter else None, name=q.name)
        return out

    def validate(self, tmp: Path):
        from edgeft.validate.lm import validate_lm

        return validate_lm(self.p.artifacts(), self.p.run.stage_dir("merge"), self.validate_records(), tmp,
                           self.recipe.validate_, self.recipe.data.system_prompt, self.heldout_text(),
                           recipe_name=self.recipe.name, general_text=self.p.general_text())


class RawTextTask(ChatTask):
    """A causal LM trained on raw text (``text`` records, clm): no task examples, perplexity is the metric."""

    monitor_fields = ("text",)

    def _text(self, split: str) -> str:
        return "\n\n".join(str(r["text"]) for r in self.records(split, ("text",)))

    def corpus(self, tok, split: str) -> str:
        """A split as one text: the raw text records as they are."""
        return self._text(split)

    def eval_split_text(self) -> Optional[str]:
        return self._text("eval")

    def merge_samples(self, tok) -> list[str]:
        return [r["text"][:2000] for r in self.records("eval", ("text",))[:4]]

    def sample_ids(self, tok) -> list[int]:
        return tok(self.records("eval", ("text",))[0]["text"], add_special_tokens=False).input_ids[:48]

    def validate_records(self) -> list[dict]:
        return []  # no task examples: validate gates on perplexity alone

    def write_drafts(self, folder: Path, tok) -> dict:
        from edgeft.errors import ConfigError

        raise ConfigError("export.drafts: a raw-text (clm) recipe has no answers to draft from; drafts come from "
                          "chat answers (objectives sft, dpo, distill); set export.drafts: false")


class MultitaskTask(ChatTask):
    """A causal LM trained on a weighted mixture of chat tasks (``task`` / ``prompt`` / ``response``), each
    scored with its own system prompt and metric."""

    def data(self, tmp: Path) -> tuple[list[dict], list[dict], dict]:
        mt = self.recipe.finetune.multitask
        if mt is None:
            return super().data(tmp)
        from edgeft.data import splits

        train, ev = splits.multitask_records(mt.tasks, self.p.base_dir)
        return train, ev, {"multitask": [t.name for t in mt.tasks]}

    def validate_records(self) -> list[dict]:
        mt = self.recipe.finetune.multitask
        if mt is None:
            return super().validate_records()
        # each task scored with its own system prompt and metric, reported per task
        tasks = {t.name: t for t in mt.tasks}
        by_task: dict[str, list[dict]] = {n: [] for n in tasks}
        for r in self.records("eval", ("prompt", "response", "task")):
            if r["task"] in tasks:
                by_task[r["task"]].append({**r, "system_prompt": tasks[r["task"]].system_prompt,
                                           "metric": tasks[r["task"]].metric})
        # round-robin over tasks, so validate.eval_examples keeps every task in the sample
        return [r for group in itertools.zip_longest(*by_task.values()) for r in group if r is not None]


class ClassifierTask(Task):
    """A sequence classifier (``text`` / ``label`` records): accuracy and macro-F1, stages in
    :mod:`edgeft.pipeline.classify`."""

    metric_keys = ("accuracy", "macro_f1")
    monitor_fields = classify.FIELDS

    def finetune_cfg(self, train: list[dict]):
        return classify.finetune_cfg(self.recipe.finetune, train)

    def merge(self, tmp: Path) -> dict:
        trained, produces = self.trained()
        return classify.merge(trained, tmp, self.p.model().path if produces == "adapter" else None,
                              self.recipe.merge.tolerance, self.records("eval", classify.FIELDS))

    def export(self, tmp: Path) -> dict:
        return classify.export(self.p.run.stage_dir("merge"), tmp, self.recipe.export, self.p.preset,
                               self.p.main_export_name, self.records("eval", classify.FIELDS),
                               self.records("train", classify.FIELDS))

    def quantize(self, tmp: Path) -> dict:
        e = self.recipe.export
        return classify.quantize(self.p.run.stage_dir("export"), tmp, self.recipe.quantize, e.static_shapes,
                                 e.tolerance, self.records("train", classify.FIELDS),
                                 self.records("eval", classify.FIELDS))

    def validate(self, tmp: Path):
        from edgeft.validate.encoders import validate_encoders

        return validate_encoders(self.p.artifacts(), self.p.run.stage_dir("merge"),
                                 self.records("eval", classify.FIELDS), tmp, self.recipe.validate_,
                                 recipe_name=self.recipe.name, classifier=True)


class RewardTask(Task):
    """A reward model (objective ``reward``: prompt/chosen/rejected pairs, one score per sequence). It is a scorer
    for objective grpo (``finetune.grpo.rewards: [{name: reward-model, path: ...}]``), not a model to ship:
    the pipeline stops after finetune."""

    metric_keys = ("eval_pair_accuracy",)
    monitor_fields = None

    def _stop(self, stage: str):
        from edgeft.errors import UnsupportedError

        raise UnsupportedError(f"{stage}: objective reward trains a scorer for objective grpo, which is not merged, "
                               "exported or validated; run `edgeft finetune RECIPE` and name its finetune folder in "
                               "finetune.grpo.rewards (reward-model path)")

    def merge(self, tmp: Path) -> dict:
        self._stop("merge")

    def export(self, tmp: Path) -> dict:
        self._stop("export")

    def quantize(self, tmp: Path) -> dict:
        self._stop("quantize")

    def validate(self, tmp: Path):
        self._stop("validate")


class ImageTask(Task):
    """An image classifier (``image`` / ``label`` records, paths relative to the data stage folder): top-1 /
    top-5 and macro-F1, stages in :mod:`edgeft.pipeline.vision`."""

    side_files = ("model", IMAGE_MODEL_FILES)  # no tokenizer: the model config (labels, preprocessing)
    metric_keys = ("accuracy", "top5", "macro_f1")
    monitor_fields = None  # image inputs have no token statistics (not served or monitored yet)

    def images(self, split: str) -> list[dict]:
        """A split's records with absolute image paths."""
        return vision.absolute(self.p.run.stage_dir("data"), self.records(split, vision.FIELDS))

    def data(self, tmp: Path) -> tuple[list[dict], list[dict], dict]:
        """Labelled images: records hold paths (the embedded set is written here)."""
        return vision.data(self.recipe.data.images, self.p.base_dir, tmp)

    def finetune(self, tmp: Path, work: Path) -> dict:
        metrics = vision.finetune(self.p.model().path, self.images("train"), tmp, work, self.recipe.finetune,
                                  self.p.base_dir)
        return {**metrics, "base_model_source": self.p.model().source}

    def merge(self, tmp: Path) -> dict:
        return vision.merge(self.p.run.stage_dir("finetune"), self.p.model().path, tmp, self.images("eval"),
                            self.recipe.merge.tolerance)

    def export(self, tmp: Path) -> dict:
        return vision.export(self.p.run.stage_dir("merge"), tmp, self.recipe.export, self.p.preset,
                             self.p.main_export_name, self.images("eval"), self.images("train"))

    def quantize(self, tmp: Path) -> dict:
        return vision.quantize(self.p.run.stage_dir("export"), self.p.run.stage_dir("merge"), tmp,
                               self.recipe.quantize, self.images("eval"), self.images("train"))

    def validate(self, tmp: Path):
        from edgeft.validate.vision import validate_images

        return validate_images(self.p.artifacts(), self.images("eval"), tmp, self.recipe.validate_,
                               recipe_name=self.recipe.name)
