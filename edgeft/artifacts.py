"""What an artifact is, written once beside its files as ``artifact.json`` by the stage that made it.

:func:`edgeft.exporters.export` describes every export preset's output, :func:`edgeft.quantize.quantize`
every scheme's (the image pipeline, which applies schemes itself, calls the same helper), and the
pipeline's merge stage the merged HF folder. Later stages read the description (:meth:`Artifact.load`)
instead of working out again what the files are: the pipeline and validate take the format,
precision, int8 mode, size and how to load the artifact from it, package ships its ``files``.

This module also holds the one decision of what a model *is* (:func:`model_kind`), in the words the
rest of edgeft uses: ``causal-lm``, ``classifier`` (a sequence classifier), ``encoder`` or
``image-classifier``; and how that kind reads in a validation report (:func:`report_fields`; the typed
report, :class:`edgeft.validate.report.ValidationReport`, picks its variant by these keys).

It sits in the lowest import layer (beside ``errors`` and ``config``), so exporters and quantize use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeft.errors import ModelSourceError, StageError

__all__ = ["ARTIFACT_FILE", "FORMATS", "KINDS", "Artifact", "describe", "json_options",
           "kind_of_task", "model_kind", "refresh", "report_fields", "size_of", "weight_files", "write"]

ARTIFACT_FILE = "artifact.json"
SCHEMA_VERSION = 1

Kind = Literal["causal-lm", "classifier", "encoder", "image-classifier"]
KINDS: tuple[str, ...] = get_args(Kind)

# --------------------------------------------------------------------------- what a model is

# Decoder model types whose configs may lack a *ForCausalLM architecture (converted or hand-written configs).
DECODER_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral", "gpt2", "phi3", "gemma"})
# edgeft's own image model folders (edgeft.models.vision) name no transformers architecture.
IMAGE_MODEL_TYPES = frozenset({"efficientnet-lite"})
# The objective's task (edgeft.finetune.registry.TASKS) -> the kind of model it trains.
TASK_KINDS = {"causal-lm": "causal-lm", "seq-cls": "classifier", "image-cls": "image-classifier"}


def _read_json(f: Path, what: str) -> dict:
    try:
        data = json.loads(Path(f).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{f}: unreadable {what} ({e})") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{f}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def require_hf_folder(folder: Path) -> Path:
    """``folder`` as a Path; ModelSourceError when it is not an HF model folder (no config.json)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{folder}: not an HF model folder (no config.json); run the merge stage first")
    return folder


def model_kind(source: Union[str, os.PathLike, Mapping, Any], default: Optional[str] = None) -> str:
    """``causal-lm``, ``classifier``, ``encoder`` or ``image-classifier``: what the model is.

    ``source`` is an HF config (a ``config.json`` mapping or a transformers config object) or a folder.
    A folder's ``artifact.json`` answers first (the kind was decided when it was written), then its
    ``config.json``, then (an ONNX graph exported elsewhere, with neither) its graph's inputs and outputs;
    a folder with none of them returns ``default`` or, without one, raises ModelSourceError.
    From a config: an image architecture (``*ForImageClassification``, edgeft's EfficientNet-Lite) is an
    image classifier, ``*ForSequenceClassification`` a classifier, ``*ForCausalLM`` or a known decoder
    ``model_type`` a causal LM, anything else (BERT-style feature extractors) an encoder.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if (folder / ARTIFACT_FILE).is_file():
            return Artifact.load(folder).kind
        if not (folder / "config.json").is_file():
            kind = _graph_kind(folder) if folder.is_dir() else None
            if kind is not None or default is not None:
                return kind or default
            require_hf_folder(folder)
        config = _read_json(folder / "config.json", "model config")
    elif isinstance(source, Mapping):
        config = source
    else:
        config = source.to_dict()
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type in IMAGE_MODEL_TYPES or any(a.endswith("ForImageClassification") for a in archs):
        return "image-classifier"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    if any(a.endswith("ForCausalLM") for a in archs) or model_type in DECODER_MODEL_TYPES:
        return "causal-lm"
    return "encoder"


def _graph_kind(folder: Path) -> Optional[str]:
    """The kind of the ONNX graph in ``folder`` from its inputs and outputs (None: no graph): pixels in is an image
    classifier, a KV cache or [batch, seq, vocab] logits a causal LM, [batch, labels] logits a classifier, else an
    encoder."""
    graphs = sorted(n for n in _files(folder) if n.endswith(".onnx"))
    if not graphs:
        return None
    import onnx

    graph = onnx.load(str(folder / ("model.onnx" if "model.onnx" in graphs else graphs[0])),
                      load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    logits = next((o for o in graph.output if o.name == "logits"), None)
    rank = len(logits.type.tensor_type.shape.dim) if logits is not None else 0
    if "pixel_values" in inputs:
        return "image-classifier"
    if any(n.startswith("past_key_values") for n in inputs) or rank == 3:
        return "causal-lm"
    return "classifier" if rank == 2 else "encoder"


def kind_of_task(task: str) -> str:
    """The kind of model a fine-tuning objective's task (``causal-lm``, ``seq-cls``, ``image-cls``) trains."""
    if task not in TASK_KINDS:
        raise ValueError(f"unknown objective task {task!r}; one of {', '.join(TASK_KINDS)}")
    return TASK_KINDS[task]


# A validation report says what it scored with two keys: ``kind`` (``encoder`` for every model scored without
# generation) and ``task`` (``classification`` / ``image-classification``); a causal LM's report has neither.
_REPORT_FIELDS = {"causal-lm": {}, "encoder": {"kind": "encoder"},
                  "classifier": {"kind": "encoder", "task": "classification"},
                  "image-classifier": {"kind": "encoder", "task": "image-classification"}}


def report_fields(kind: str) -> dict:
    """The ``kind`` / ``task`` keys a validation report of a ``kind`` model carries."""
    return dict(_REPORT_FIELDS[kind])


# --------------------------------------------------------------------------- files and size per format


@dataclass(frozen=True)
class Layout:
    """How a format lies on disk and how it is loaded."""

    weights: tuple[str, ...]  # glob patterns of the files that hold the model: what an artifact's size counts
    main: tuple[str, ...]  # names (or patterns) tried in order for the file its runtime opens
    runtime: str  # the key of edgeft.runtime.base.RUNTIMES (and of the encoder / vision runtimes)
    single_file: bool = False  # the artifact is its main file alone (self-contained; the runtime opens the file)


_ONNX = ("*.onnx", "*.onnx_data", "*.onnx.data")
FORMATS: dict[str, Layout] = {
    "onnx": Layout(_ONNX, ("model.onnx", "*.onnx"), "onnx"),
    # onnxruntime-genai's model builder graph (GroupQueryAttention, MatMulNBits): edgeft's ONNX runtime runs it,
    # so it is validated, inspected and projected as onnx
    "genai": Layout(_ONNX, ("model.onnx", "*.onnx"), "onnx"),
    "torchscript": Layout(("*.pt", "*.ptl"), ("model.pt", "*.pt"), "torchscript"),
    "gguf": Layout(("*.gguf",), ("*.gguf",), "gguf", single_file=True),
    "tflite": Layout(("*.tflite", "embeddings.safetensors"), ("model.tflite", "*.tflite"), "tflite"),
    "pte": Layout(("*.pte",), ("model.pte", "*.pte"), "pte"),
    "pytorch": Layout(("*.safetensors", "*.bin"), ("model.safetensors", "*.safetensors", "pytorch_model.bin", "*.bin"),
                      "pytorch"),
}
Format = Literal["onnx", "genai", "torchscript", "gguf", "tflite", "pte", "pytorch"]


def _layout(fmt: str) -> Layout:
    if fmt not in FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}; one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _files(folder: Path) -> list[str]:
    """Names of the plain files directly in ``folder``, sorted; hidden files (work in progress) left out."""
    return sorted(f.name for f in Path(folder).iterdir() if f.is_file() and not f.name.startswith("."))


def weight_files(folder: Path | str, fmt: str) -> list[str]:
    """Names of the files in ``folder`` that hold a ``fmt`` model (graphs, external data, weights), sorted."""
    names = _files(folder)
    return sorted({n for pat in _layout(fmt).weights for n in names if Path(n).match(pat)})


def size_of(path: Path | str, fmt: str) -> int:
    """An artifact's size in bytes: a file's own size, or the sum of a folder's ``fmt`` weight files.

    The one definition of an artifact's size: what export and quantize reports, artifact.json,
    validation reports and device checks count (tokenizer, config and reports are not counted)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum((p / n).stat().st_size for n in weight_files(p, fmt))


def _main_file(names: list[str], fmt: str, where: Path) -> str:
    for pat in _layout(fmt).main:
        found = [n for n in names if Path(n).match(pat)]
        if found:
            return found[0]
    raise StageError(f"{where}: no {fmt} model file here (looked for {', '.join(_layout(fmt).main)}); the stage that "
                     "writes it did not finish")


# --------------------------------------------------------------------------- the description


class Artifact(BaseModel):
    """An artifact: what it is, its files, what made it and how to load it (``artifact.json``)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(SCHEMA_VERSION, description="Version of this description's layout.")
    name: str = Field(description="Artifact name, as validation reports and bundles (artifacts/<name>/) show it.")
    kind: Kind = Field(description="What the model does: causal-lm, classifier, encoder or image-classifier.")
    format: Format = Field(description="On-disk format: onnx, genai (model builder graph), torchscript, gguf, "
                                       "tflite, pte or pytorch (an HF folder).")
    precision: Literal["fp32", "fp16", "int8", "int4"] = Field(
        "fp32", description="Weight precision (GGUF block types below 8 bits count as int4).")
    int8_mode: Optional[Literal["dynamic", "static", "full-integer", "weight-only"]] = Field(
        None, description="How int8 is applied (None for float and int4 weight-only artifacts).")
    files: list[str] = Field(description="Every file of the artifact, relative to the folder of artifact.json.")
    weights: list[str] = Field(description="The files (of `files`) that hold the model: what size_bytes counts.")
    size_bytes: int = Field(ge=0, description="Bytes of the weight files (edgeft.artifacts.size_of).")
    stage: Literal["base", "merge", "export", "quantize"] = Field(description="The stage that made it.")
    producer: str = Field(description="What made it: the export preset, the quantize scheme, the fine-tuning "
                                      "method (merge) or the model source (base).")
    options: dict = Field(default_factory=dict, description="The producer's options, resolved (defaults filled).")
    runtime: str = Field(description="Runtime key that loads it (edgeft.runtime.base.RUNTIMES; the encoder and "
                                     "vision runtimes take the same keys).")
    main_file: str = Field(description="The file its runtime opens (relative, one of `files`).")
    opens: Literal["folder", "main_file"] = Field(
        "folder", description="What is handed to the runtime: the artifact's folder or its main file.")

    @field_validator("files", "weights")
    @classmethod
    def _relative(cls, v: list[str]) -> list[str]:
        for rel in v:
            if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"{rel!r} is not a relative path inside the artifact folder")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        missing = [f for f in [*self.weights, self.main_file] if f not in self.files]
        if missing:
            raise ValueError(f"{', '.join(missing)} not listed in files")
        return self

    # ---- loading the model
    def load_path(self, folder: Path | str) -> Path:
        """What its runtime opens: ``folder`` (where artifact.json lies) or the main file in it."""
        return Path(folder) / self.main_file if self.opens == "main_file" else Path(folder)

    # ---- artifact.json
    def save(self, folder: Path | str) -> Path:
        """Write ``folder/artifact.json`` (atomically)."""
        from edgeft.fileio import atomic_write_text

        return atomic_write_text(Path(folder) / ARTIFACT_FILE, json.dumps(self.model_dump(mode="json"), indent=2)
                                 + "\n")

    @classmethod
    def load(cls, folder: Path | str, stage: Optional[str] = None) -> "Artifact":
        """Read ``folder/artifact.json``; StageError in one line naming the file (and field) when it is missing or
        invalid. ``stage`` (the stage that writes it) turns a missing file into the advice to re-run from it."""
        f = Path(folder) / ARTIFACT_FILE
        if not f.is_file():
            fix = (f"re-run from that stage: `edgeft run RECIPE --from {stage}`" if stage else
                   "re-run the stage that made it")
            raise StageError(f"{f}: missing; the {stage + ' stage' if stage else 'artifact'} in {folder} was written "
                             f"by an edgeft that did not describe its artifacts; {fix}")
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StageError(f"{f}: unreadable ({e}); re-run the stage that made it") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(top level)"
            more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
            raise StageError(f"{f}: {field}: {first['msg']}{more}; re-run the stage that made it") from None


def _json_value(value: Any) -> Any:
    """A JSON stand-in for an option value JSON cannot hold: a path as its text, else (a Python callable given
    through the API, say) its type and name."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return f"<{type(value).__name__} {getattr(value, '__qualname__', '')}>".replace(" >", ">")


def json_options(options: Union[BaseModel, Mapping, None]) -> dict:
    """Resolved options (an options model or a mapping) as JSON values, for ``Artifact.options``."""
    data = options.model_dump() if isinstance(options, BaseModel) else dict(options or {})
    return json.loads(json.dumps(data, default=_json_value))


def describe(folder: Path | str, name: str, kind: str, format: str, stage: str, producer: str,
             precision: str = "fp32", int8_mode: Optional[str] = None,
             options: Union[BaseModel, Mapping, None] = None) -> Artifact:
    """The description of the ``format`` artifact in ``folder``: its files, weights, size and main file are read
    from the folder now (a single-file format such as GGUF is its main file alone); ``options`` (a model or a
    mapping) are stored as JSON values (:func:`json_options`)."""
    folder = Path(folder)
    layout = _layout(format)
    weights = weight_files(folder, format)
    main = _main_file(weights or _files(folder), format, folder)
    files = [main] if layout.single_file else [n for n in _files(folder) if n != ARTIFACT_FILE]
    weights = [main] if layout.single_file else weights
    return Artifact(name=name, kind=kind, format=format, precision=precision, int8_mode=int8_mode, files=files,
                    weights=weights, size_bytes=size_of(folder / main if layout.single_file else folder, format),
                    stage=stage, producer=producer, options=json_options(options), runtime=layout.runtime,
                    main_file=main, opens="main_file" if layout.single_file else "folder")


def write(folder: Path | str, **fields) -> Artifact:
    """:func:`describe` the artifact in ``folder`` and save it as ``folder/artifact.json``."""
    art = describe(folder, **fields)
    art.save(folder)
    return art


def refresh(folder: Path | str) -> Artifact:
    """Re-read the files and size of an artifact whose files changed after it was described (and save it)."""
    a = Artifact.load(folder)
    return write(folder, name=a.name, kind=a.kind, format=a.format, stage=a.stage, producer=a.producer,
                 precision=a.precision, int8_mode=a.int8_mode, options=a.options)
