"""Chat generation with any artifact (the ``edgeft generate`` command and Python API ``edgeft.generate``).

It sits above :mod:`edgeft.data` (the chat template) and :mod:`edgeft.runtime` (the artifact's runtime):
runtime/ imports nothing from data/, whose teacher labelling (``edgeft.data.augment``) runs a runtime.
"""

from __future__ import annotations

from pathlib import Path


def generate(artifact: Path | str, prompt: str, system_prompt: str = "", max_new_tokens: int = 64,
             threads: int = 2, tokenizer: Path | str | None = None) -> str:
    """Greedy chat completion of ``prompt`` with an ONNX, GGUF, ExecuTorch (.pte), LiteRT (.tflite) or HF
    (PyTorch) folder: the runtime its ``artifact.json`` names, else the one its files suggest."""
    from transformers import AutoTokenizer

    from edgeft.data.templates import prompt_ids, stop_ids
    from edgeft.runtime.lm import load_lm

    path = Path(artifact)
    fmt, path = _runtime(path)
    tok_dir = Path(tokenizer) if tokenizer else (path if path.is_dir() else path.parent)
    if not (tok_dir / "tokenizer.json").is_file() and (tok_dir.parent.parent / "tokenizer").is_dir():
        tok_dir = tok_dir.parent.parent / "tokenizer"  # inside a release bundle: artifacts/<name>/
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    lm = load_lm(path, fmt, threads)
    out = lm.generate([prompt_ids(tok, system_prompt, prompt)], max_new_tokens, stop_ids(tok))[0]
    return tok.decode(out, skip_special_tokens=True).strip()


def _runtime(path: Path) -> tuple[str, Path]:
    """(runtime key, what it opens) for an artifact folder or file."""
    from edgeft.artifacts import ARTIFACT_FILE, Artifact

    if path.is_dir() and (path / ARTIFACT_FILE).is_file():
        a = Artifact.load(path)
        return a.runtime, a.load_path(path)
    fmt = "onnx" if (path.suffix == ".onnx" or any(path.glob("*.onnx"))) else "pytorch"
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        fmt = "gguf"  # llama.cpp (edgeft[bench]); a genai folder is an ONNX graph that OrtLM runs
    if path.suffix == ".pte" or (path.is_dir() and (path / "model.pte").is_file()):
        fmt = "pte"  # ExecuTorch (edgeft[executorch])
    if path.suffix == ".tflite" or (path.is_dir() and (path / "model.tflite").is_file()):
        fmt = "tflite"  # LiteRT causal LM (edgeft[litert])
    return fmt, path
