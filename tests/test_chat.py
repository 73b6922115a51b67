"""edgeft.generate (edgeft.chat): one greedy chat completion with an HF folder or its ONNX export, same text."""

from __future__ import annotations

import shutil


def test_generate_pytorch_and_onnx_agree(tiny_lm_dir, tmp_path):
    import edgeft
    from edgeft.chat import generate
    from edgeft.exporters.onnx import export_onnx

    assert edgeft.generate is generate
    onnx_dir = tmp_path / "onnx"
    export_onnx(tiny_lm_dir, onnx_dir, opset=18)
    for f in tiny_lm_dir.glob("tokenizer*"):
        shutil.copy(f, onnx_dir / f.name)
    torch_text = generate(tiny_lm_dir, "wake me at 7", "Parse the request into JSON.", max_new_tokens=6, threads=1)
    onnx_text = generate(onnx_dir, "wake me at 7", "Parse the request into JSON.", max_new_tokens=6, threads=1)
    assert torch_text and torch_text == onnx_text, (torch_text, onnx_text)
