"""The validation report: its typed model, ``report.json`` (written atomically), and its terminal/text summary.

``report.json`` is written from a :class:`ValidationReport` and read back into one with
:meth:`ValidationReport.load`; its JSON Schema (``schema_version`` 1) is printed by
``edgeft recipes schema --report`` (:func:`report_json_schema`). The field descriptions below are
that schema's documentation.

Variants
--------
A report is one of four classes, told apart by the top-level ``kind`` and ``task`` keys it has
always carried:

- :class:`LMReport` (no ``kind``): causal LMs. Exact match, JSON validity, perplexity, top-1
  agreement and KL; decode latency (time to first token, per-token); a roofline projection per device.
- :class:`EncoderReport` (``kind: encoder``): embedding encoders. Embedding cosine vs the
  reference; per-inference latency at a batch x sequence length.
- :class:`ClassifierReport` (``kind: encoder``, ``task: classification``): sequence classifiers.
  Accuracy, macro-F1, label agreement and logit differences vs the reference.
- :class:`ImageClassifierReport` (``task: image-classification``): a classifier report with top-5,
  per-class F1 and the label list.

A common base with subclasses, not a bare discriminated union: the readers (the HTML page, the
summary, serve, package) ask "is this an encoder report?" and "a classifier?", which
``isinstance`` answers along the hierarchy (an image classifier's report *is* a classifier's
report *is* an encoder's report), and they read the shared fields (artifacts, devices, gates,
flags, the verdict) the same way on every variant. The variants differ in the accuracy, latency,
protocol and projection sub-models they hold. The published JSON Schema is the union (``oneOf``).

Parsing
-------
- Types are checked. A report that does not parse raises a one-line :class:`~edgeft.errors.ConfigError`
  naming the file and the field (``report.json: artifacts.int8.size_bytes: Input should be a valid
  integer``).
- Every field has a default, so a partial report (hand-made, or from an older edgeft) loads and
  renders, its missing numbers shown as dashes. ``null`` where a list, a mapping or an object is
  expected reads as empty, and ``null`` entries inside a list or mapping are dropped.
- Unknown keys are kept and written back (``extra="allow"``): report.json is machine-written,
  newer writers add keys (``Artifact.extra``), and a load followed by a write must not lose them.
- A report writes exactly the keys it was given (``exclude_unset``; and always ``schema_version``), so
  report.json keeps the keys validate put in it. Floats that are NaN or infinite are written as null
  (strict JSON).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar, Generic, Literal, Mapping, Optional, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from edgeft.artifacts import report_fields
from edgeft.errors import ConfigError
from edgeft.fileio import atomic_write_text
from edgeft.metrics.gate import GateResult, fmt_num

__all__ = ["ArtifactEntry", "ClassifierReport", "DeviceEntry", "DeviceResult", "EncoderReport",
           "ImageClassifierReport", "LMReport", "ValidationReport", "device_table", "print_summary",
           "report_json_schema", "summary_table", "summary_text", "to_jsonable", "write_json"]

MB = 1024 * 1024
_NONE = "-"
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- JSON values


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy values, paths, dataclasses, pydantic models and sets made JSON-ready."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic
        return to_jsonable(obj.model_dump(by_alias=True, exclude_unset=True))
    if hasattr(obj, "tolist"):  # numpy scalars and arrays (without importing numpy)
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON serializable: {obj!r}")


# --------------------------------------------------------------------------- model: building blocks

T = TypeVar("T")


def _list(v: Any) -> Any:
    """null reads as an empty list; null items are dropped."""
    if v is None:
        return []
    return [x for x in v if x is not None] if isinstance(v, (list, tuple)) else v


def _mapping(v: Any) -> Any:
    """null reads as an empty mapping; null entries are dropped."""
    if v is None:
        return {}
    return {k: x for k, x in v.items() if x is not None} if isinstance(v, Mapping) else v


def _object(v: Any) -> Any:
    """null reads as the object with every field at its default."""
    return {} if v is None else v


ListOf = Annotated[list[T], BeforeValidator(_list)]
MapOf = Annotated[dict[str, T], BeforeValidator(_mapping)]
Obj = Annotated[T, BeforeValidator(_object)]

# shared field types (one description, several models)
Ms = Annotated[Optional[float], Field(description="Milliseconds.")]
Samples = Annotated[ListOf[float], Field(description="Raw timings of the timed runs, ms.")]
LatencyLabel = Annotated[Optional[str], Field(
    description="How the figure was obtained: measured-host (this machine, the device's thread count capped at its "
                "CPUs), projected (estimated from a host measurement and the device profile) or measured-device "
                "(run on the device over SSH).")]
Threads = Annotated[Optional[int], Field(description="Threads the runtime used.")]
PeakRss = Annotated[Optional[float], Field(description="Peak resident memory of the process that ran it, MB.")]


class _Model(BaseModel):
    """Every report object: unknown keys kept (see the module docstring), fields settable by name or by alias."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --------------------------------------------------------------------------- model: accuracy


class Miss(_Model):
    """One eval example the artifact got wrong."""

    prompt: str = Field("", description="The eval prompt.")
    expected: str = Field("", description="The reference answer.")
    got: str = Field("", description="What the artifact generated.")


class Accuracy(_Model):
    """Accuracy figures every report has (null where they do not apply, e.g. generation metrics of an encoder)."""

    exact_match: Optional[float] = Field(None, description="Share of eval answers equal to the reference answer.")
    json_valid: Optional[float] = Field(None, description="Share of eval answers that parse as JSON.")
    perplexity: Optional[float] = Field(None, description="Perplexity on the held-out text (protocol.perplexity).")
    top1_agreement: Optional[float] = Field(
        None, description="Share of next-token argmaxes equal to the reference's, on the agreement windows.")
    kl: Optional[float] = Field(None, description="Mean KL divergence of the next-token distribution from the "
                                                  "reference's.")
    n_examples: Optional[int] = Field(None, description="Eval examples scored.")


class LMAccuracy(Accuracy):
    """A causal LM's accuracy: task metrics from greedy generation, perplexity, agreement with the reference."""

    accuracy: Optional[float] = Field(
        None, description="Multitask runs: label accuracy over the records of tasks scored by 'accuracy'.")
    per_task: MapOf[MapOf[Optional[float]]] = Field(
        default_factory=dict, description="Multitask runs: task name -> its metrics.")
    misses_sample: ListOf[Miss] = Field(default_factory=list, description="Up to 5 eval examples it got wrong.")
    perplexity_general: Optional[float] = Field(
        None, description="Perplexity on general text (validate.perplexity.general), when configured.")


class EmbeddingAccuracy(Accuracy):
    """An embedding encoder's accuracy: cosine of its embeddings with the reference's."""

    embedding_cosine: Optional[float] = Field(
        None, description="Mean over the eval texts of the cosine with the reference's embedding (1.0: identical).")
    embedding_cosine_min: Optional[float] = Field(None, description="The worst eval text's cosine.")


class ClassifierAccuracy(Accuracy):
    """A classifier's accuracy on the labelled eval split, and agreement of its logits with the reference's."""

    accuracy: Optional[float] = Field(None, description="Top-1 accuracy on the eval labels.")
    macro_f1: Optional[float] = Field(None, description="Macro-averaged F1 over the labels.")
    max_length: Optional[int] = Field(None, description="Texts were cut at this many tokens (text classifiers).")
    label_agreement: Optional[float] = Field(None, description="Share of predicted labels equal to the reference's.")
    max_abs_logit_diff: Optional[float] = Field(None, description="Largest |logit - reference logit|.")
    mean_abs_logit_diff: Optional[float] = Field(None, description="Mean |logit - reference logit|.")


class ImageAccuracy(ClassifierAccuracy):
    """An image classifier's accuracy: a classifier's, plus top-k and per-class F1."""

    top5: Optional[float] = Field(None, description="Top-k accuracy (k = topk, 5 when there are enough labels).")
    topk: Optional[int] = Field(None, description="The k of top5.")
    per_class_f1: MapOf[Optional[float]] = Field(default_factory=dict, description="Label -> F1.")


# --------------------------------------------------------------------------- model: latency
# Fields are declared in the order the bench writes them, so report.json and the page's
# "latency ..." rows keep that order.


class DecodeLatency(_Model):
    """Decode latency of a causal LM: one artifact's measurement, or one device's figure."""

    ttft_ms_p50: Ms = None
    ttft_ms_p95: Ms = None
    per_token_ms_p50: Ms = None
    per_token_ms_p95: Ms = None
    decode_tok_s: Optional[float] = Field(None, description="Decode tokens per second (1 / per-token p50).")
    runs: Optional[int] = Field(None, description="Timed runs.")
    decode_steps: Optional[int] = Field(None, description="Decode steps timed over all runs.")
    samples_ms: Samples = Field(default_factory=list, description="Per-token decode times of every run, ms.")
    ttft_samples_ms: Samples = Field(default_factory=list, description="Time to first token of every run, ms.")
    threads: Threads = None
    prompt_tokens: Optional[int] = Field(None, description="Prompt length, tokens.")
    new_tokens: Optional[int] = Field(None, description="Tokens generated per run.")
    warmup: Optional[int] = Field(None, description="Untimed warm-up runs.")
    load_seconds: Optional[float] = Field(None, description="Time to load the artifact, s.")
    peak_rss_mb: PeakRss = None
    threads_source: Optional[str] = Field(None, description="Set when the runtime could not be given a thread count.")
    label: LatencyLabel = None
    bound: Optional[str] = Field(None, description="projected: what bounds decode (memory or compute).")
    device_host: Optional[str] = Field(None, description="measured-device: the SSH target it ran on.")
    lookahead: Optional[int] = Field(None, description="Speculative decoding with the artifact's drafts.json: draft "
                                                       "tokens verified per pass (null: one token per pass).")
    passes_per_token: Optional[float] = Field(None, description="Speculative decoding: forward passes per token "
                                                                "in the last timed run.")

    @property
    def step_ms_p50(self) -> Optional[float]:
        """Median time of one step, here a decoded token (what "fastest" compares)."""
        return self.per_token_ms_p50


class InferenceLatency(_Model):
    """Per-inference latency of an encoder or classifier: one artifact's measurement, or one device's figure."""

    kind: Optional[str] = Field(None, description="What was timed: encoder (a batch of token sequences) or image.")
    per_inference_ms_p50: Ms = None
    per_inference_ms_p95: Ms = None
    samples_ms: Samples = Field(default_factory=list)
    batch: Optional[int] = Field(None, description="Inputs per inference.")
    seq_len: Optional[int] = Field(None, description="Tokens per input (null for images).")
    threads: Threads = None
    warmup: Optional[int] = Field(None, description="Untimed warm-up runs.")
    runs: Optional[int] = Field(None, description="Timed runs.")
    load_seconds: Optional[float] = Field(None, description="Time to load the artifact, s.")
    peak_rss_mb: PeakRss = None
    image_size: Optional[int] = Field(None, description="Images: the graph's input size, pixels.")
    threads_source: Optional[str] = Field(None, description="Set when the runtime could not be given a thread count.")
    label: LatencyLabel = None
    macs: Optional[int] = Field(None, description="projected (microcontrollers): multiply-accumulates per inference.")
    int8_gops: Optional[float] = Field(None, description="projected: the profile's sustained int8 rate, GOP/s.")
    device_host: Optional[str] = Field(None, description="measured-device: the SSH target it ran on.")

    @property
    def step_ms_p50(self) -> Optional[float]:
        """Median time of one step, here an inference (what "fastest" compares)."""
        return self.per_inference_ms_p50


# --------------------------------------------------------------------------- model: artifacts and devices

AccT = TypeVar("AccT", bound=Accuracy)
LatT = TypeVar("LatT", DecodeLatency, InferenceLatency)


class QuantPlanSummary(_Model):
    """An ``auto``-quantized artifact's per-layer plan, summarized from its ``quant_plan.json``."""

    precision_counts: MapOf[int] = Field(default_factory=dict, description="Precision -> MatMuls planned at it.")
    budget: MapOf[Any] = Field(default_factory=dict, description="The budget the plan was searched under.")
    reached: MapOf[Any] = Field(default_factory=dict, description="What the plan reached on the calibration check "
                                                                  "(perplexity_increase_pct, kl, size_mb, ...).")
    file: Optional[str] = Field(None, description="The full per-layer plan.")


class ArtifactEntry(_Model):
    """One validated artifact: what it is, and its accuracy and latency measured on this machine."""

    role: Literal["base", "reference", "artifact"] = Field(
        "artifact", description="base (the un-tuned model), reference (the merged model every other one is compared "
                                "with) or artifact (shippable).")
    kind: Optional[str] = Field(None, description="Encoder reports: encoder, classifier or image-classifier.")
    format: Optional[str] = Field(None, description="onnx | pytorch | torchscript | gguf | pte | tflite.")
    precision: Optional[str] = Field(None, description="Weight precision: fp32 | fp16 | int8 | int4.")
    int8_mode: Optional[str] = Field(None, description="dynamic | static | full-integer | weight-only.")
    scheme: Optional[str] = Field(None, description="Quantization scheme name.")
    size_bytes: Optional[int] = Field(None, description="Size on storage, bytes.")
    path: Optional[str] = Field(None, description="Where the artifact lives.")
    accuracy: Obj[Accuracy] = Field(default_factory=Accuracy, description="Accuracy on this machine.")
    latency: Optional[Union[DecodeLatency, InferenceLatency]] = Field(
        None, description="Latency measured on this machine at the host's thread count (null: not timed, e.g. the "
                          "base model).")
    onnx: Optional[dict[str, Any]] = Field(
        None, description="ONNX artifacts: opset, ops, nodes per op, inputs and dynamic inputs, precisions, int8 mode "
                          "(edgeft.validate.compat.inspect_onnx).")
    tflite: Optional[dict[str, Any]] = Field(
        None, description="LiteRT artifacts: ops, tensors, I/O types, MACs, constant bytes "
                          "(edgeft.validate.tflite_compat.inspect_tflite).")
    quant_plan: Optional[QuantPlanSummary] = Field(None, description="auto artifacts: the per-layer plan's summary.")


class LMArtifact(ArtifactEntry):
    accuracy: Obj[LMAccuracy] = Field(default_factory=LMAccuracy, description="Accuracy on this machine.")
    latency: Optional[DecodeLatency] = Field(None, description="Decode latency on this machine (null: not timed).")


class EmbeddingArtifact(ArtifactEntry):
    accuracy: Obj[EmbeddingAccuracy] = Field(default_factory=EmbeddingAccuracy,
                                             description="Accuracy on this machine.")
    latency: Optional[InferenceLatency] = Field(None, description="Per-inference latency on this machine (null: not "
                                                                  "timed).")


class ClassifierArtifact(EmbeddingArtifact):
    accuracy: Obj[ClassifierAccuracy] = Field(default_factory=ClassifierAccuracy,
                                              description="Accuracy on this machine.")


class ImageArtifact(EmbeddingArtifact):
    accuracy: Obj[ImageAccuracy] = Field(default_factory=ImageAccuracy, description="Accuracy on this machine.")


class DeviceLatency(_Model, Generic[LatT]):
    """One artifact's latency figures for one device, by how each was obtained."""

    measured_host: Optional[LatT] = Field(
        None, alias="measured-host", description="Timed on this machine with the device's thread count.")
    projected: Optional[LatT] = Field(
        None, description="Estimated for the device (roofline; microcontrollers: MACs at the int8 rate).")
    measured_device: Optional[LatT] = Field(
        None, alias="measured-device", description="Timed on the device over SSH (profiles with remote:).")

    def of(self, label: Optional[str]) -> Optional[LatT]:
        """The figure with ``label`` (measured-host, projected or measured-device); None when there is none."""
        return {"measured-host": self.measured_host, "projected": self.projected,
                "measured-device": self.measured_device}.get(label or "")


class DeviceResult(_Model, Generic[LatT]):
    """One artifact on one device: compatibility, the device's budget gates, and the verdict."""

    compatible: Optional[bool] = Field(None, description="Whether the artifact can run on the device at all.")
    reasons: ListOf[str] = Field(default_factory=list, description="Why it cannot (format, precision, int8 mode, "
                                                                   "ops with node names, dynamic inputs, size, RAM).")
    suggestions: ListOf[str] = Field(default_factory=list, description="How to make it compatible.")
    warnings: ListOf[str] = Field(default_factory=list, description="Compatible, but worth knowing.")
    tflite: Optional[dict[str, Any]] = Field(
        None, description="LiteRT artifacts: the runtime, I/O types, Edge TPU op mapping, TFLite Micro run.")
    est_ram_mb: Optional[float] = Field(None, description="Estimated peak RAM on the device (weights + KV cache), MB.")
    gates: ListOf[GateResult] = Field(default_factory=list, description="The device budgets (latency, RAM, size).")
    passed: Optional[bool] = Field(None, description="Compatible, every gate passed and the artifact passed its "
                                                     "accuracy gates.")
    gated_on: LatencyLabel = Field(None, description="The latency figure the speed budgets were checked against: "
                                                     "measured-device with remote:, else projected, or measured-host "
                                                     "on host.")
    latency: Obj[DeviceLatency[LatT]] = Field(default_factory=DeviceLatency, description="Latency figures by label.")

    def gated_latency(self) -> Optional[LatT]:
        """The latency figure the speed budgets were gated on, if any."""
        return self.latency.of(self.gated_on)


class DeviceEntry(_Model, Generic[LatT]):
    """One device profile: its thread count, whether the verdict depends on it, and every artifact on it."""

    class_: Optional[str] = Field(None, alias="class", description="mobile | tpu | edge | host.")
    threads: Optional[int] = Field(None, description="Threads the runtime uses on it (capped at this host's CPUs).")
    threads_profile: Optional[int] = Field(None, description="Threads the profile names.")
    required: bool = Field(False, description="Whether the overall verdict depends on this device.")
    passed: Optional[bool] = Field(None, description="Some shippable artifact passes every gate on it.")
    deployable: ListOf[str] = Field(default_factory=list, description="Shippable artifacts that pass on it.")
    results: MapOf[DeviceResult[LatT]] = Field(default_factory=dict,
                                               description="Artifact name -> result (not the base).")


# --------------------------------------------------------------------------- model: protocol and projection


class LatencyProtocol(_Model):
    """How latency was measured (validate.latency, plus what the run derived from it)."""

    prompt: Optional[str] = Field(None, description="LMs: the user prompt of a latency run.")
    new_tokens: Optional[int] = Field(None, description="LMs: tokens generated per run.")
    warmup: Optional[int] = Field(None, description="Untimed warm-up runs.")
    repeats: Optional[int] = Field(None, description="Timed runs.")
    batch: Optional[int] = Field(None, description="Encoders: inputs per timed inference.")
    seq_len: Optional[int] = Field(None, description="Encoders: tokens per input.")
    prompt_tokens: Optional[int] = Field(None, description="LMs: the chat-formatted prompt's length, tokens.")
    per_inference: Optional[str] = Field(None, description="Image classifiers: what one inference is.")
    host_cpus: Optional[int] = Field(None, description="CPUs of the machine that ran validate.")


class PerplexityProtocol(_Model):
    """The perplexity protocol: same text, windows and tokenizer for every artifact."""

    text: Optional[str] = Field(None, description="eval-split, python-docs or a text file.")
    start_fraction: Optional[float] = Field(None, description="General text: where in the text it starts.")
    seq_len: Optional[int] = Field(None, description="Window length, tokens.")
    stride: Optional[int] = Field(None, description="Window stride, tokens.")
    max_tokens: Optional[int] = Field(None, description="At most this many tokens of the text.")
    windows: Optional[int] = Field(None, description="Windows scored.")
    tokens: Optional[int] = Field(None, description="Tokens scored.")
    tokenizer: Optional[str] = Field(None, description="The tokenizer's folder.")


class Protocol(_Model):
    """How the figures were obtained."""

    eval_examples: Optional[int] = Field(None, description="Eval examples scored per artifact.")
    latency: Optional[LatencyProtocol] = Field(None, description="The latency protocol.")


class LMProtocol(Protocol):
    max_new_tokens: Optional[int] = Field(None, description="Generation cap when scoring the task metric.")
    perplexity: Optional[PerplexityProtocol] = Field(None, description="The task perplexity protocol.")
    perplexity_general: Optional[PerplexityProtocol] = Field(None, description="The general-text perplexity "
                                                                               "protocol.")
    agreement_windows: Optional[int] = Field(None, description="Windows top-1 agreement and KL are computed on.")


class EncoderProtocol(Protocol):
    embedding: Optional[str] = Field(None, description="Embedding encoders: how an embedding is taken.")
    classification: Optional[str] = Field(None, description="Classifiers: how a label is predicted and compared.")


class ProjectionError(_Model):
    """How far the projection was from the measurement for one figure."""

    projected: Optional[float] = None
    measured: Optional[float] = None
    error_ms: Optional[float] = Field(None, description="projected - measured (> 0: the projection is slower).")
    abs_error_ms: Optional[float] = None
    pct_error: Optional[float] = Field(None, description="error / measured * 100, signed.")
    abs_pct_error: Optional[float] = None


class HostProjection(_Model):
    """One ONNX artifact on host: projected vs measured (edgeft.validate.projection.projection_error)."""

    projected: Optional[DecodeLatency] = None
    measured: Optional[DecodeLatency] = None
    error: MapOf[ProjectionError] = Field(default_factory=dict, description="per_token_ms / ttft_ms -> error.")


class Projection(_Model):
    """The roofline projection (LMs); other reports carry only a note saying why there is none."""

    note: Optional[str] = Field(None, description="Why there is no projection (encoders and classifiers are measured).")


class LMProjection(Projection):
    calibrated_on: Optional[str] = Field(None, description="Artifact whose host measurement fixed the per-token "
                                                           "overhead.")
    overhead_ms: Optional[float] = Field(None, description="Per-token overhead added to the roofline, ms.")
    context_len: Optional[float] = Field(None, description="Mean decode context the roofline assumes, tokens.")
    host_threads: Optional[int] = Field(None, description="Threads of the host measurements.")
    host: MapOf[HostProjection] = Field(default_factory=dict, description="Artifact -> projected vs measured on host.")


# --------------------------------------------------------------------------- model: the report


class ValidationReport(_Model):
    """``report.json``: every artifact x every device profile, the gates and the verdict (see the module docstring).

    Use :meth:`load` / :meth:`parse` to read one (they return the variant the data is), :meth:`write`
    to write one.
    """

    variant: ClassVar[str] = ""  # causal-lm | encoder | classifier | image-classifier

    schema_version: int = Field(SCHEMA_VERSION, description="1.")
    recipe: Optional[str] = Field(None, description="Recipe name.")
    kind: Optional[str] = Field(None, description="encoder for encoder and classifier reports; absent for LMs.")
    task: Optional[str] = Field(None, description="classification or image-classification; absent otherwise.")
    reference: Optional[str] = Field(None, description="The artifact every other one is compared with (merged).")
    passed: Optional[bool] = Field(
        None, description="Every required device has a compatible artifact passing all its gates and every accuracy "
                          "gate passed; the CLI exits 7 when false.")
    protocol: Obj[Protocol] = Field(default_factory=Protocol, description="How the figures were obtained.")
    labels: ListOf[str] = Field(default_factory=list, description="Image classifiers: the class labels, in order.")
    artifacts: MapOf[ArtifactEntry] = Field(default_factory=dict, description="Artifact name -> entry, in build "
                                                                              "order.")
    devices: MapOf[DeviceEntry] = Field(default_factory=dict, description="Device profile name -> entry.")
    gates: ListOf[GateResult] = Field(default_factory=list, description="Accuracy gates, every artifact vs the "
                                                                        "reference.")
    flags: ListOf[str] = Field(default_factory=list, description="Loud findings, e.g. 'FINE-TUNE ERASED: ...'.")
    projection: Obj[Projection] = Field(default_factory=Projection, description="Roofline projection (LMs).")

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def parse(cls, data: Union[ValidationReport, Mapping[str, Any]], source: str = "report") -> ValidationReport:
        """The report variant ``data`` is (a report is returned as is); ConfigError naming ``source`` and the
        field when it does not parse. Numpy values, paths and NaN are made JSON values first."""
        if isinstance(data, ValidationReport):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a validation report is a JSON object, not {type(data).__name__}")
        data = to_jsonable(data)
        kind, task = data.get("kind"), data.get("task")
        variant = _VARIANTS.get((kind, task))
        if variant is None:
            field = "task" if (kind, None) in _VARIANTS else "kind"
            known = ", ".join(sorted({f"kind={k!r} task={t!r}" for k, t in _VARIANTS}))
            raise ConfigError(f"{source}: {field}: unknown report kind {kind!r} / task {task!r}; known: {known}")
        try:
            return variant.model_validate(data)
        except ValidationError as e:
            from edgeft.config.loader import format_validation_error

            problems = format_validation_error(e, variant, source).splitlines()  # most actionable first
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigError(problems[0] + more) from None

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> ValidationReport:
        """Read ``path`` (a report.json); ConfigError naming the file and the bad field when it does not parse."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such validation report; run the validate stage first") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON validation report: {e}") from None
        return cls.parse(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object report.json holds: the keys this report was given (and always its schema_version),
        NaN and infinity as null."""
        return to_jsonable({"schema_version": self.schema_version,
                            **self.model_dump(by_alias=True, exclude_unset=True)})

    def write(self, path: Union[str, os.PathLike]) -> Path:
        """Write report.json atomically (temp file in the same folder, then ``os.replace``).

        A reader never sees a half-written file, and a crash leaves the previous report intact.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        atomic_write_text(path, text)
        return path

    # ------------------------------------------------------------------ reading helpers
    def ordered_artifacts(self) -> list[str]:
        """Artifact names: the base first, then the reference (merged), then the rest in report order."""
        arts = self.artifacts
        ref = self.reference or "merged"
        base = [n for n, a in arts.items() if a.role == "base"]
        refs = [n for n, a in arts.items() if n not in base and (n == ref or a.role == "reference")]
        return base + refs + [n for n in arts if n not in base and n not in refs]


class LMReport(ValidationReport):
    """A causal LM's report."""

    variant: ClassVar[str] = "causal-lm"

    kind: None = Field(None, description="Absent for LMs.")
    task: None = Field(None, description="Absent for LMs.")
    protocol: Obj[LMProtocol] = Field(default_factory=LMProtocol, description="How the figures were obtained.")
    artifacts: MapOf[LMArtifact] = Field(default_factory=dict, description="Artifact name -> entry, in build order.")
    devices: MapOf[DeviceEntry[DecodeLatency]] = Field(default_factory=dict,
                                                       description="Device profile name -> entry.")
    projection: Obj[LMProjection] = Field(default_factory=LMProjection, description="Roofline projection per device, "
                                                                                    "and how it did on host.")


class EncoderReport(ValidationReport):
    """An embedding encoder's report (and the base of the classifier reports)."""

    variant: ClassVar[str] = "encoder"

    kind: Literal["encoder"] = Field(description="encoder.")
    task: None = Field(None, description="Absent for embedding encoders.")
    protocol: Obj[EncoderProtocol] = Field(default_factory=EncoderProtocol, description="How the figures were "
                                                                                        "obtained.")
    artifacts: MapOf[EmbeddingArtifact] = Field(default_factory=dict, description="Artifact name -> entry, in build "
                                                                                  "order.")
    devices: MapOf[DeviceEntry[InferenceLatency]] = Field(default_factory=dict,
                                                          description="Device profile name -> entry.")


class ClassifierReport(EncoderReport):
    """A sequence classifier's report."""

    variant: ClassVar[str] = "classifier"

    task: Literal["classification"] = Field(description="classification.")  # type: ignore[assignment]
    artifacts: MapOf[ClassifierArtifact] = Field(default_factory=dict, description="Artifact name -> entry, in "
                                                                                   "build order.")


class ImageClassifierReport(ClassifierReport):
    """An image classifier's report."""

    variant: ClassVar[str] = "image-classifier"

    task: Literal["image-classification"] = Field(description="image-classification.")  # type: ignore[assignment]
    artifacts: MapOf[ImageArtifact] = Field(default_factory=dict, description="Artifact name -> entry, in build "
                                                                              "order.")


# (kind, task) keys -> variant: the keys each kind of model's report carries (edgeft.artifacts.report_fields)
_VARIANTS: dict[tuple[Optional[str], Optional[str]], type[ValidationReport]] = {
    (report_fields(c.variant).get("kind"), report_fields(c.variant).get("task")): c
    for c in (LMReport, EncoderReport, ClassifierReport, ImageClassifierReport)}


def report_json_schema() -> dict:
    """JSON Schema of report.json (``edgeft recipes schema --report``): exactly one of the four variants, told apart
    by ``kind`` and ``task``."""
    variants = [LMReport, EncoderReport, ClassifierReport, ImageClassifierReport]
    schema = TypeAdapter(Union[tuple(variants)]).json_schema(by_alias=True)  # type: ignore[arg-type]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "ValidationReport",
            "description": "report.json, written by edgeft validate (edgeft.validate.report.ValidationReport).",
            "$defs": schema["$defs"], "oneOf": schema["anyOf"]}


def write_json(path: Union[str, os.PathLike], report: Union[ValidationReport, Mapping[str, Any]]) -> Path:
    """Write ``report`` (a report, or a mapping that parses as one) to ``path`` atomically (see
    :meth:`ValidationReport.write`)."""
    return ValidationReport.parse(report).write(path)


# --------------------------------------------------------------------------- summary


def _with_delta(value: Optional[float], ref: Optional[float], percent: bool, sep: str = " ") -> str:
    if value is None:
        return _NONE
    if ref is None:
        return fmt_num(value)
    if percent:
        if ref == 0:
            return fmt_num(value)
        return f"{fmt_num(value)}{sep}({100.0 * (value - ref) / abs(ref):+.1f}%)"
    return f"{fmt_num(value)}{sep}({value - ref:+.3f})"


def _plain(value: Optional[float], digits: int = 1) -> str:
    return _NONE if value is None else f"{value:.{digits}f}"


def _mb(mb: float) -> str:
    return f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"


def _fmt_prec(a: ArtifactEntry, sep: str = " ") -> str:
    text = f"{a.format or '?'}/{a.precision or '?'}"
    if a.int8_mode:
        text += f"{sep}{a.int8_mode}"
    return text


def _device_cell(result: Optional[DeviceResult]):
    from rich.text import Text

    if result is None:
        return Text(_NONE, style="dim")
    if result.compatible is False:
        return Text("n/a", style="dim")
    if result.passed is True:
        return Text("PASS", style="bold green")
    if result.passed is False:
        return Text("FAIL", style="bold red")
    return Text("?", style="yellow")


# (header, compact header, justify)
_COLUMNS = (
    ("artifact", "artifact", "left"),
    ("format", "format", "left"),
    ("size MB", "size\nMB", "right"),
    ("exact match", "exact\nmatch", "right"),
    ("JSON valid", "JSON\nvalid", "right"),
    ("perplexity", "perp-\nlexity", "right"),
    ("tok/s", "tok/s", "right"),
    ("TTFT ms", "TTFT\nms", "right"),
    ("RAM MB", "RAM\nMB", "right"),
)


def has_general_perplexity(report: ValidationReport) -> bool:
    """Whether the report measured general-text perplexity (validate.perplexity.general) on some artifact."""
    return isinstance(report, LMReport) and any(
        "perplexity_general" in a.accuracy.model_fields_set for a in report.artifacts.values())


def summary_table(report: Union[ValidationReport, Mapping[str, Any]], *, compact: bool = False,
                  devices: bool = True):
    """A :class:`rich.table.Table` with one row per artifact (base, merged, then the rest).

    Columns: artifact, format/precision, size MB, exact match (signed delta vs the reference,
    e.g. ``0.958 (-0.021)``), JSON valid, perplexity (percent delta), decode tok/s, TTFT ms p50,
    peak RAM MB, then one column per device: PASS / FAIL / n/a (incompatible) / - (not
    checked). A ``*`` marks required devices. Missing values show as ``-``.

    ``compact`` puts deltas and two-word headers on a second line (for 80-120 column
    terminals); ``devices=False`` leaves out the device columns (see :func:`device_table`).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    report = ValidationReport.parse(report)
    arts = report.artifacts
    devs = report.devices if devices else {}
    ref_name = report.reference or "merged"
    ref_acc = arts[ref_name].accuracy if ref_name in arts else None
    sep = "\n" if compact else " "

    table = Table(
        title=f"edgeft validate: {'?' if report.recipe is None else report.recipe}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        caption=f"deltas vs {ref_name}" + ("; * required device; n/a: incompatible (reasons below)" if devs else ""),
    )
    # "fold" everywhere: a too narrow terminal wraps a cell (at its spaces first), never hides digits
    general = has_general_perplexity(report)
    columns = list(_COLUMNS)
    if general:  # validate.perplexity.general: the general-text check next to the task's perplexity
        columns.insert([c[0] for c in columns].index("perplexity") + 1, ("general ppl", "general\nppl", "right"))
    for header, short, justify in columns:
        table.add_column(short if compact else header, justify=justify, overflow="fold")
    for dev, d in devs.items():
        table.add_column(_device_header(dev, d, compact), justify="center", overflow="fold")

    for name in report.ordered_artifacts():
        a = arts[name]
        acc, lat = a.accuracy, a.latency
        dec = lat if isinstance(lat, DecodeLatency) else None  # the generation columns
        ref = None if name == ref_name else ref_acc
        row = [
            Text(name, style="bold" if name == ref_name else ""),
            Text(_fmt_prec(a, sep)),
            Text(_NONE if a.size_bytes is None else _mb(a.size_bytes / MB)),
            Text(_with_delta(acc.exact_match, ref and ref.exact_match, False, sep)),
            Text(_plain(acc.json_valid, 3)),
            Text(_with_delta(acc.perplexity, ref and ref.perplexity, True, sep)),
            *([Text(_with_delta(acc.perplexity_general, ref and ref.perplexity_general, True, sep))]
              if general else []),
            Text(_plain(dec and dec.decode_tok_s)),
            Text(_plain(dec and dec.ttft_ms_p50, 0)),
            Text(_plain(lat and lat.peak_rss_mb, 0)),
        ]
        for d in devs.values():
            row.append(_device_cell(d.results.get(name)))
        table.add_row(*row)
    return table


def _device_header(dev: str, d: DeviceEntry, compact: bool) -> str:
    name = f"{dev}{'*' if d.required else ''}"
    return name.replace("-", "-\n", 1) if compact else name


def device_table(report: Union[ValidationReport, Mapping[str, Any]]):
    """Artifact rows × device columns (PASS / FAIL / n/a / -), for terminals too narrow for one table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    report = ValidationReport.parse(report)
    devs = report.devices
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="* required device; n/a: incompatible (reasons below)")
    table.add_column("artifact", overflow="fold")
    for dev, d in devs.items():
        table.add_column(_device_header(dev, d, False), justify="center", overflow="fold")
    for name in report.ordered_artifacts():
        table.add_row(Text(name), *[_device_cell(d.results.get(name)) for d in devs.values()])
    return table


def _tables(report: ValidationReport, width: int) -> list:
    """The widest layout that fits ``width``: one table, one compact table, or two tables."""
    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=max(width, 1000), file=io.StringIO(), color_system=None)

    def fits(table) -> bool:
        return Measurement.get(probe, probe.options, table).maximum <= width

    for compact in (False, True):
        table = summary_table(report, compact=compact)
        if fits(table):
            return [table]
    if not report.devices:
        return [table]
    return [summary_table(report, compact=True, devices=False), device_table(report)]


def failed_gates(report: ValidationReport) -> list[GateResult]:
    """Every failed gate: the accuracy gates, then each device's budget gates (with their device and artifact)."""
    failed = [g for g in report.gates if not g.passed]
    for dev, d in report.devices.items():
        for art, r in d.results.items():
            failed += [dataclasses.replace(g, device=dev, artifact=g.artifact or art) for g in r.gates if not g.passed]
    return failed


def _encoder_lines(report: EncoderReport) -> list:
    """The encoder / classifier metrics below the table (the table's columns are the LM ones)."""
    from rich.text import Text

    out: list = []
    if isinstance(report, ClassifierReport):
        out.append(Text("classifier metrics (accuracy / macro-F1 on the eval split; label agreement vs the reference; "
                        "per-inference latency, measured-host):", style="bold"))
        for art, a in report.artifacts.items():
            acc, lat = a.accuracy, a.latency
            out.append(Text(f"  {art}: accuracy {fmt_num(acc.accuracy)} macro-F1 {fmt_num(acc.macro_f1)} "
                            f"agreement {fmt_num(acc.label_agreement)}, per inference p50 "
                            f"{fmt_num(lat and lat.per_inference_ms_p50)} ms"
                            + (f" at batch {lat.batch} x seq {lat.seq_len}" if lat else "")))
        return out
    out.append(Text("encoder metrics (embedding cosine vs the reference; per-inference latency, measured-host):",
                    style="bold"))
    for art, a in report.artifacts.items():
        acc, lat = a.accuracy, a.latency
        out.append(Text(f"  {art}: cosine {fmt_num(acc.embedding_cosine)} (min "
                        f"{fmt_num(acc.embedding_cosine_min)}), per inference p50 "
                        f"{fmt_num(lat and lat.per_inference_ms_p50)} ms / p95 "
                        f"{fmt_num(lat and lat.per_inference_ms_p95)} ms"
                        + (f" at batch {lat.batch} x seq {lat.seq_len}" if lat else "")))
    return out


def _sections(report: ValidationReport) -> list:
    """Everything printed below the table, as rich renderables."""
    from rich.text import Text

    out: list = []
    failed = failed_gates(report)
    if failed:
        out.append(Text("failed gates:", style="bold"))
        for g in failed:
            where = f"[{g.device}] " if g.device else ""
            line = Text("  FAIL ", style="bold red")
            line.append(f"{where}{g.artifact} {g.name}: {g.detail}")
            out.append(line)

    if report.flags:
        out.append(Text("flags:", style="bold"))
        for flag in report.flags:
            style = "bold red" if "ERASED" in flag.upper() else "yellow"
            out.append(Text(f"  {flag}", style=style))

    if isinstance(report, EncoderReport):
        out += _encoder_lines(report)

    proj = report.projection
    if isinstance(proj, LMProjection) and proj.host:
        out.append(Text(f"projection vs measurement on host (roofline + {fmt_num(proj.overhead_ms)} ms/token "
                        f"overhead calibrated on {proj.calibrated_on}):", style="bold"))
        for art, p in proj.host.items():
            err = p.error.get("per_token_ms")
            out.append(Text(f"  {art}: projected {fmt_num(p.projected and p.projected.per_token_ms_p50)} ms/token, "
                            f"measured {fmt_num(p.measured and p.measured.per_token_ms_p50)} ms/token "
                            f"(error {fmt_num(err and err.pct_error)}%)"))

    incompatible, warned = [], []
    for dev, d in report.devices.items():
        for art, r in d.results.items():
            if r.compatible is False:
                # The terminal gets the first reason and fix, shortened; report.json keeps every detail.
                reasons = r.reasons or ["incompatible"]
                text = Text(f"  {dev} x {art}: ")
                text.append(_shorten(reasons[0]))
                if len(reasons) > 1:
                    text.append(f" (+{len(reasons) - 1} more reasons in report.json)", style="dim")
                if r.suggestions:
                    text.append(" -> fix: " + _shorten(r.suggestions[0]), style="dim")
                incompatible.append(text)
            if r.warnings:
                warned.append(Text(f"  {dev} x {art}: " + "; ".join(r.warnings), style="yellow"))
    if incompatible:
        out.append(Text("incompatible:", style="bold"))
        out.extend(incompatible)
    if warned:
        out.append(Text("warnings:", style="bold"))
        out.extend(warned)

    line = Text("overall: ", style="bold")
    if report.passed is True:
        line.append("PASS", style="bold green")
    elif report.passed is False:
        line.append("FAIL", style="bold red")
        missing = [dev for dev, d in report.devices.items() if d.required and d.passed is False]
        why = []
        if missing:
            why.append(f"required devices without a passing artifact: {', '.join(missing)}")
        if any(not g.device for g in failed):
            why.append("accuracy gates failed")
        if why:
            line.append(f" ({'; '.join(why)})")
    else:
        line.append("UNKNOWN", style="yellow")
    out.append(line)
    return out


def print_summary(report: Union[ValidationReport, Mapping[str, Any]], console=None) -> None:
    """Print :func:`summary_table`, then failed gates, flags, incompatibilities and the verdict.

    The table takes the widest layout that fits the console: one line per artifact, else the
    compact layout (deltas on a second line), else the compact table without device columns
    followed by :func:`device_table`.
    """
    report = ValidationReport.parse(report)
    if console is None:
        from rich.console import Console

        console = Console()
    for table in _tables(report, console.width):
        console.print(table)
    for item in _sections(report):
        console.print(item)


def _shorten(text: str, limit: int = 160) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summary_text(report: Union[ValidationReport, Mapping[str, Any]], width: int = 160) -> str:
    """The same summary as plain text (for logs and the model card)."""
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    print_summary(report, console)
    return console.export_text()
