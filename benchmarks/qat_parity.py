"""Do the int4 artifact and quantization-aware training use the same grid? Logits of the fake-quantized PyTorch
model vs the int4 ONNX artifact of the grid it trained on (int4-torchao, or int4-rtn for ``grid: ort``), on the
same token windows.

    python benchmarks/qat_parity.py RUN_DIR [--windows 8] [--seq-len 128]

RUN_DIR is a finished run of a recipe with ``finetune.qat`` (e.g. ``runs/smollm2-qat``): its merged model
(``merge/``) gets its weights snapped onto the QAT grid (:func:`edgeft.finetune.qat.snap_to_grid`, the
weights training computed with at its last step) and its LM head / embedding rounded like the artifact's
(int8, torchao's symmetric grid is not used there: the artifact's head is ORT's int8 RTN, so the reference
takes the artifact's own dequantized head); the int4 artifact is the run's ``quantize/<name>/``, scored as
shipped (``accuracy_level`` 4: MatMulNBits quantizes activations to int8 inside the kernel) and re-quantized
with ``accuracy_level`` 1 (fp32 compute: the grid alone). Windows are the run's eval-split conversations.
Prints max and mean |logit diff| and top-1 agreement per variant, and writes ``RUN_DIR/qat_parity.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _head_from_artifact(onnx_path: Path):
    """The LM head / tied embedding matrix [V, H] as the artifact dequantizes it (int8 MatMulNBits)."""
    import onnx
    from onnx import numpy_helper

    from edgeft.quantize.schemes import matmulnbits as mnb

    g = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "MatMulNBits" and n.output[0] == "logits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            k, nn_, bits, bs = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
            packed = numpy_helper.to_array(inits[n.input[1]])
            scales = numpy_helper.to_array(inits[n.input[2]]).reshape(nn_, -1)
            if bits != 8 or len(n.input) > 3:
                return None
            codes = packed.reshape(nn_, -1)
            zp = np.full(scales.shape, 128, np.uint8)
            return mnb.dequantize(codes, scales, zp, k, bs).T  # [N=V, K=H]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--artifact", default=None, help="quantize/<name> (default: the first int4-torchao one)")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.config.schema import QatConfig
    from edgeft.finetune.qat import snap_to_grid
    from edgeft.finetune.registry import read_marker
    from edgeft.quantize import quantize
    from edgeft.runtime.lm import OrtLM

    run = a.run_dir
    info = read_marker(run / "finetune" / "adapter") or read_marker(run / "finetune" / "model")
    if "qat" not in info:
        raise SystemExit(f"{run}/finetune: not trained with finetune.qat (no qat entry in edgeft_method.json)")
    q = QatConfig(group_size=info["qat"]["group_size"], activations=info["qat"]["activations"],
                  symmetric=info["qat"].get("symmetric", True), grid=info["qat"].get("grid", "torchao"))
    scheme = "int4-rtn" if q.grid == "ort" else "int4-torchao"  # the exporter of the grid it trained on
    if a.artifact:
        art = run / "quantize" / a.artifact
    else:
        art = next(d for d in sorted((run / "quantize").iterdir()) if (d / "quantize_report.json").is_file()
                   and json.loads((d / "quantize_report.json").read_text())["scheme"] == scheme)
    tok = AutoTokenizer.from_pretrained(str(run / "merge"))
    recs = [json.loads(x) for x in (run / "data" / "eval.jsonl").read_text().splitlines()][: a.windows]
    from edgeft.data.templates import conversation_text

    import yaml

    sysprompt = (yaml.safe_load((run / "recipe.yaml").read_text()).get("data") or {}).get("system_prompt", "")
    wins = [tok(conversation_text(tok, sysprompt, r["prompt"], r["response"]),
                add_special_tokens=False).input_ids[: a.seq_len] for r in recs]

    model = AutoModelForCausalLM.from_pretrained(str(run / "merge"), torch_dtype=torch.float32).eval()
    n = snap_to_grid(model, q)
    head = _head_from_artifact(art / "model.onnx")
    if head is not None:
        with torch.no_grad():
            model.lm_head.weight.copy_(torch.from_numpy(np.ascontiguousarray(head)))  # tied: the embedding too
    with torch.no_grad():
        ref = [model(input_ids=torch.tensor([w])).logits[0].numpy() for w in wins]

    def score(folder: Path) -> dict:
        lm = OrtLM(folder, 2)
        diffs, agree, tot = [], 0, 0
        for w, r in zip(wins, ref):
            out = lm.logits(np.array(w, np.int64))
            diffs.append(np.abs(out - r))
            agree += int((out.argmax(-1) == r.argmax(-1)).sum())
            tot += len(w)
        d = np.concatenate([x.ravel() for x in diffs])
        return {"max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean()),
                "top1_agreement": agree / tot}

    res = {"artifact": str(art), "snapped_linears": n, "head_from_artifact": head is not None,
           "windows": len(wins), "tokens": sum(map(len, wins)), "shipped": score(art)}
    with tempfile.TemporaryDirectory() as tmp:
        opts = json.loads((art / "quantize_report.json").read_text()).get("options") or {}
        opts = {k: v for k, v in opts.items()
                if k in ("block_size", "symmetric", "lm_head", "embeddings", "head_block_size")}
        quantize(run / "export", Path(tmp) / "q", scheme, {**opts, "accuracy_level": 1})
        res["accuracy_level_1"] = score(Path(tmp) / "q")
    (run / "qat_parity.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
