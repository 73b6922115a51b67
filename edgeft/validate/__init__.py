"""Validate stage: every artifact (and the merged reference) x every device profile.

Per artifact: accuracy vs the merged model (causal LMs: exact match / JSON validity, perplexity on
held-out text with a fixed protocol, top-1 agreement and KL, :mod:`edgeft.validate.lm`; encoders and
sequence classifiers: embedding cosine, or accuracy / macro-F1 with label agreement,
:mod:`edgeft.validate.encoders`; image classifiers: top-1 / top-5, :mod:`edgeft.validate.vision`). Per
distinct thread count: latency measured on this machine (``measured-host``) in a fresh process with peak
RSS. Per device: compatibility (format, precision, int8 mode, ops, shapes, size, RAM) and budgets, in one
device loop (:mod:`edgeft.validate.matrix`). Writes ``report.json`` (a
:class:`~edgeft.validate.report.ValidationReport`, which ``validate`` returns) and prints a summary table;
``report.passed`` is False when any gate fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

__all__ = ["Artifact", "validate"]


@dataclass
class Artifact:
    """One entry to validate: what to load (``path`` with the runtime ``format``), its role and budgets."""

    name: str
    path: Path
    format: str  # the runtime key: onnx | pytorch | torchscript | gguf | pte | tflite
    role: str = "artifact"  # base | reference | artifact
    precision: str = "fp32"
    int8_mode: str | None = None
    scheme: str | None = None
    budgets: object | None = None  # edgeft.config.Budgets overriding the recipe's
    extra: dict = field(default_factory=dict)
    spec: object | None = None  # the edgeft.artifacts.Artifact it was made from (size, files), when there is one
    folder: Path | None = None  # where that description's files lie

    @classmethod
    def of(cls, spec, folder: Path, role: str = "artifact", budgets=None) -> "Artifact":
        """The entry for an artifact described by ``spec`` (an :class:`edgeft.artifacts.Artifact`) in ``folder``."""
        return cls(spec.name, spec.load_path(folder), spec.runtime, role, spec.precision, spec.int8_mode,
                   spec.producer if spec.stage == "quantize" else None, budgets, spec=spec, folder=Path(folder))

    @classmethod
    def at(cls, folder: Path, stage: str, role: str = "artifact", budgets=None) -> "Artifact":
        """The entry for the artifact ``stage`` wrote into ``folder`` (read from its ``artifact.json``)."""
        from edgeft.artifacts import Artifact as Description

        return cls.of(Description.load(folder, stage), folder, role, budgets)


def validate(artifacts: Sequence[Artifact], tokenizer_dir: Path, eval_records: list[dict], out_dir: Path, cfg=None,
             system_prompt: str = "", heldout_text: str | None = None, recipe_name: str = "", console=None,
             general_text: str | None = None, kind: str | None = None):
    """Validate ``artifacts`` (one must have role 'reference') against ``cfg.devices``; write report.json and
    return it (a :class:`~edgeft.validate.report.ValidationReport`).

    ``general_text`` (``cfg.perplexity.general``'s text) adds a second perplexity per artifact,
    ``perplexity_general``, gated by ``budgets.perplexity_general``. ``kind`` is what the models are
    (:func:`edgeft.artifacts.model_kind`'s words; default: the reference's): encoders and classifiers are
    scored without generation (:func:`~edgeft.validate.encoders.validate_encoders`), causal LMs by
    :func:`~edgeft.validate.lm.validate_lm`. Image classifiers read images:
    :func:`edgeft.validate.vision.validate_images`.
    """
    from edgeft.artifacts import model_kind
    from edgeft.validate.common import reference_of

    kind = kind or model_kind(reference_of(artifacts).path, default="causal-lm")
    if kind in ("encoder", "classifier"):
        from edgeft.validate.encoders import validate_encoders

        return validate_encoders(artifacts, tokenizer_dir, eval_records, out_dir, cfg, recipe_name, console,
                                 classifier=kind == "classifier")
    from edgeft.validate.lm import validate_lm

    return validate_lm(artifacts, tokenizer_dir, eval_records, out_dir, cfg, system_prompt, heldout_text,
                       recipe_name, console, general_text)


from edgeft._callable import make_callable  # noqa: E402

make_callable(__name__, "validate")
