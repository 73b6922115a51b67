"""Run an image-classifier artifact: PyTorch folder, ONNX, LiteRT (.tflite), TorchScript or ExecuTorch (.pte).

Every runtime takes the same input, ``N x 3 x H x W`` float32 pixels already preprocessed
(:func:`edgeft.data.images.to_input`), and returns ``N x classes`` float32 logits. Graphs exported
by edgeft run one image per call (static ``1 x 3 x H x W``, or ``1 x H x W x 3`` for LiteRT, whose
graphs are channels-last so no TRANSPOSE lands on an accelerator); a full-integer LiteRT graph
gets its int8 input quantized with the scale and zero point recorded in the graph, and its output
de-quantized the same way. ``image.json`` beside each exported graph records the layout, the input
size, the labels and the preprocessing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgeft.errors import ModelSourceError

META_FILE = "image.json"
FILES = {"onnx": "model.onnx", "tflite": "model.tflite", "torchscript": "model.pt", "pte": "model.pte"}


def read_meta(path: Path) -> dict:
    path = Path(path)
    f = (path if path.is_dir() else path.parent) / META_FILE
    if not f.is_file():
        raise ModelSourceError(f"{f}: missing; an exported image classifier keeps {META_FILE} (layout, size, "
                               "labels, preprocessing) beside its graph; re-export the folder")
    return json.loads(f.read_text())


def is_image_artifact(path: Path) -> bool:
    path = Path(path)
    return ((path if path.is_dir() else path.parent) / META_FILE).is_file()


class ImageRuntime:
    """One loaded image classifier: ``logits(x)`` for ``N x 3 x H x W`` pixels, ``timed_inference()`` for one image."""

    def __init__(self, path: Path, fmt: str, threads: int = 1) -> None:
        self.path, self.fmt, self.threads, self.threads_source = Path(path), fmt, int(threads), "set"
        if fmt == "pytorch":
            from edgeft.models.vision import load_image_classifier, preprocessing

            import torch

            torch.set_num_threads(self.threads)
            self.model = load_image_classifier(self.path)
            self.size = preprocessing(self.path).size
            self._run = self._torch
            return
        meta = read_meta(self.path)
        self.size = int(meta["size"])
        folder = self.path if self.path.is_dir() else self.path.parent
        file = folder / FILES[fmt]
        if not file.is_file():
            raise ModelSourceError(f"{file}: missing; re-export the image classifier")
        if fmt == "onnx":
            import onnxruntime as ort

            from edgeft.runtime.ortcore import session_options

            self.sess = ort.InferenceSession(str(file), session_options(self.threads),
                                             providers=["CPUExecutionProvider"])
            self.input = self.sess.get_inputs()[0].name
            self._run = self._onnx
        elif fmt == "tflite":
            from edgeft.runtime.litert import _interpreter

            self.it = _interpreter(file, self.threads)
            self.in_d, self.out_d = self.it.get_input_details()[0], self.it.get_output_details()[0]
            self._run = self._tflite
        elif fmt == "torchscript":
            import torch

            torch.set_num_threads(self.threads)
            self.model = torch.jit.load(str(file), map_location="cpu").eval()
            self._run = self._torch
        elif fmt == "pte":
            from edgeft.runtime.executorch import _load_method, set_threads

            self.threads, self.threads_source = set_threads(self.threads)
            self.method = _load_method(file)
            self._run = self._pte
        else:
            raise ModelSourceError(f"{self.path}: no image runtime for format {fmt!r}; one of pytorch, "
                                   f"{', '.join(FILES)}")

    def _torch(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).float().numpy()

    def _onnx(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.input: x})[0]

    def _tflite(self, x: np.ndarray) -> np.ndarray:
        from edgeft.runtime.litert import _from_output, _to_input

        self.it.set_tensor(self.in_d["index"], _to_input(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), self.in_d))
        self.it.invoke()
        return _from_output(self.it.get_tensor(self.out_d["index"]), self.out_d)

    def _pte(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute((torch.from_numpy(x),))[0].numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"{self.path}: expects N x 3 x {self.size} x {self.size} pixels, got {x.shape}")
        if self.fmt == "pytorch":
            return np.concatenate([self._run(x[i:i + 64]) for i in range(0, len(x), 64)]) if len(x) else \
                np.zeros((0, 0), np.float32)
        rows = [self._run(x[i:i + 1]) for i in range(len(x))]
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def timed_inference(self, batch: int = 1, seq: int | None = None) -> float:
        """Seconds for one forward pass of one image (``seq`` is unused: the input size is fixed)."""
        if batch != 1:
            raise ValueError(f"{self.path}: image graphs run one image per call, not {batch}")
        x = np.zeros((1, 3, self.size, self.size), np.float32)
        t0 = time.perf_counter()
        self._run(x)
        return time.perf_counter() - t0


def logits(path: Path, fmt: str, x: np.ndarray, threads: int = 1) -> np.ndarray:
    return ImageRuntime(path, fmt, threads).logits(x)
