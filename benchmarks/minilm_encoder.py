"""MiniLM (all-MiniLM-L6-v2) as an encoder artifact: export, int8, validate on device profiles.

    python benchmarks/minilm_encoder.py [OUT_DIR]

Exports the embedded `minilm-l6` to ONNX (feature-extraction), builds int8-weight and
int8-dynamic artifacts, and runs `edgeft.validate` on them: embedding cosine vs the PyTorch
model on 32 generated utterances, per-inference latency (batch 1 x seq 128, 2 warm-up + 20
timed runs in a fresh process), compatibility and budgets for host, phone-cpu, pi5, edge-tpu,
phone-npu. Prints the summary table; report.json/html land in OUT_DIR/validate.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    from optimum.exporters.onnx import main_export
    from rich.console import Console

    import edgeft
    from edgeft.config.schema import ValidateConfig
    from edgeft.data.intents import generate
    from edgeft.validate import Artifact, validate

    model = edgeft.resolve_model("minilm-l6")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "onnx" / "model.onnx").is_file():
        main_export(str(model.path), output=str(out / "onnx"), task="feature-extraction", opset=18,
                    do_validation=False)
    for name, scheme, opts in (("int8-weight", "int8-weight", {"block_size": 32}), ("int8-dynamic", "int8-dynamic", {})):
        if not (out / name / "model.onnx").is_file():
            edgeft.quantize(out / "onnx", out / name, scheme, opts)
    _, texts = generate(10, 32, seed=3)
    cfg = ValidateConfig.model_validate({
        "devices": ["host", "phone-cpu", "pi5", "edge-tpu", "phone-npu"], "require": ["host"], "eval_examples": 32,
        "latency": {"batch": 1, "seq_len": 128, "warmup": 2, "repeats": 20}})
    arts = [Artifact("fp32-torch", model.path, "pytorch", role="reference"),
            Artifact("onnx-fp32", out / "onnx", "onnx"),
            Artifact("int8-weight", out / "int8-weight", "onnx", precision="int8", int8_mode="weight-only",
                     scheme="int8-weight"),
            Artifact("int8-dynamic", out / "int8-dynamic", "onnx", precision="int8", int8_mode="dynamic",
                     scheme="int8-dynamic")]
    validate(arts, model.path, texts, out / "validate", cfg, console=Console(width=140))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-minilm"))
