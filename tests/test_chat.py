"""edgeft.generate (edgeft.chat): a greedy chat completion picks the artifact's runtime by what the folder holds."""

from __future__ import annotations

import shutil


def test_generate_picks_the_runtime_and_both_agree(tiny_lm_dir, tmp_path, monkeypatch):
    import edgeft
    from edgeft.chat import generate
    from edgeft.exporters.onnx import export_onnx
    from edgeft.runtime import lm as lm_module

    assert edgeft.generate is generate
    onnx_dir = tmp_path / "onnx"
    export_onnx(tiny_lm_dir, onnx_dir, opset=18)
    for f in tiny_lm_dir.glob("tokenizer*"):
        shutil.copy(f, onnx_dir / f.name)
    opened = []
    real = lm_module.load_lm

    def spy(path, fmt, threads=1):
        lm = real(path, fmt, threads)
        opened.append((fmt, type(lm).__name__))
        return lm

    monkeypatch.setattr(lm_module, "load_lm", spy)
    texts = [generate(d, "wake me at 7", "Parse the request into JSON.", max_new_tokens=6, threads=1)
             for d in (tiny_lm_dir, onnx_dir)]
    assert opened == [("pytorch", "TorchLM"), ("onnx", "OrtLM")]
    assert texts[0] == texts[1]  # the random model's greedy text (whitespace here, so "" once stripped)
