"""Shared fixtures: a tiny LLaMA causal LM and tokenizer built in code, and a recipe that runs it end to end.

The model is random (seeded), so its task metrics are noise; the recipe's budgets are set wide
enough that only broken plumbing (a crash, a parity failure, a missing file) fails a test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Spinning OpenMP workers make torch pathologically slow when the 2 cores are shared with another
# job: with a second pipeline running on this machine, six forward+backward passes of the tiny model
# took 8 s with spinning threads and 0.08 s with passive waiting, and the model-stage test files went
# from 151 s to 37 s. Set before torch is first imported; the processes the tests start (CLI,
# latency runs) inherit it. An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# As edgeft itself sets on import: transformers must not pick up the tensorflow that the litert-lm extra installs
# (its Keras 3 is refused), also in tests that import transformers before edgeft.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_TORCH", "1")

REPO = Path(__file__).resolve().parents[1]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM_PROMPT = "Parse the request into JSON."


def shared_data() -> Path:
    """The project's shared data folder (``<repo>/../shared/data``); skips the test when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is not present (it holds the larger real-data samples)")
    return path


def _training_texts() -> list[str]:
    from edgeft.data.intents import generate

    train, ev = generate(200, 20)
    texts = [SYSTEM_PROMPT, "system", "user", "assistant"]
    for r in train + ev:
        texts += [r["prompt"], r["response"]]
    texts.append('{}[]":,. 0123456789 abcdefghijklmnopqrstuvwxyz')
    return texts


def build_tokenizer():
    """A byte-level BPE (a few hundred tokens) trained on the intent task, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_training_texts(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token=None,
                                  additional_special_tokens=["<|endoftext|>", "<|im_start|>"])
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_lm(out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def _edgeft_cache(tmp_path_factory):
    """Model conversions and other cached files go to a per-session folder, never ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEFT_CACHE", str(tmp_path_factory.mktemp("edgeft-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A saved tiny LLaMA (hidden 64, 2 layers, GQA 4/2 heads, tied embeddings) with a ChatML tokenizer.

    Also pins torch to two threads (the CI machine's cores) for every test that uses the model.
    """
    import torch

    torch.set_num_threads(2)
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


def tiny_recipe_dict(model_dir: Path, name: str = "tiny") -> dict:
    return {
        "name": name,
        "version": "0.0.1",
        "description": "Tiny random LLaMA through every stage (test fixture).",
        "model": str(model_dir),
        "data": {"generated": {"generator": "intents", "n_train": 24, "n_eval": 8, "seed": 0},
                 "system_prompt": SYSTEM_PROMPT},
        "finetune": {"method": "lora", "objective": "sft", "epochs": 1, "batch_size": 8, "max_seq_len": 64,
                     "eval_examples": 4, "learning_rate": 5e-3},
        "merge": {"tolerance": 2e-3},
        "export": {"preset": "onnx-kv", "tolerance": 2e-3},
        "quantize": [
            {"name": "int8", "scheme": "int8-weight", "options": {"block_size": 32}},
            {"name": "int4", "scheme": "int4-rtn", "options": {"block_size": 32, "symmetric": True}},
        ],
        "validate": {
            "devices": ["host", "phone-cpu", "edge-tpu"],
            "require": ["host"],
            "eval_examples": 8,
            "max_new_tokens": 24,
            "perplexity": {"text": "eval-split", "max_tokens": 256, "seq_len": 64, "stride": 64,
                           "general": {"text": "python-docs", "max_tokens": 128, "seq_len": 64, "stride": 64}},
            "latency": {"new_tokens": 4, "warmup": 0, "repeats": 2},
            "budgets": {"exact_match": {"threshold": 0.0}, "perplexity": {"percent_max_degradation": 1000},
                        "perplexity_general": {"percent_max_degradation": 1000}, "erased_margin": 0.0},
        },
        "package": {"tarball": True, "intended_use": "tests", "limitations": "random weights"},
    }


def write_recipe(path: Path, data: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_recipe(tiny_lm_dir, tmp_path, monkeypatch) -> Path:
    """``tmp_path/tiny.yaml``: the tiny model through data .. package with generous budgets.

    ``EDGEFT_CACHE`` points at ``tmp_path/cache`` for the test (and the processes it starts).
    """
    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path / "cache"))
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_lm_dir))


@pytest.fixture(scope="module")
def tiny_recipe_module(tiny_lm_dir, tmp_path_factory) -> Path:
    """Like ``tiny_recipe`` but shared by a module (one end-to-end run per test file), with ``export.drafts``."""
    data = tiny_recipe_dict(tiny_lm_dir)
    data["export"]["drafts"] = True
    return write_recipe(tmp_path_factory.mktemp("recipe") / "tiny.yaml", data)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- tiny sequence classifier

POSITIVE_WORDS = ["good", "great", "fun", "lovely", "superb", "charming", "brilliant", "moving"]
NEGATIVE_WORDS = ["bad", "awful", "dull", "boring", "clumsy", "tedious", "bland", "weak"]
FILLER_WORDS = ["the", "film", "movie", "was", "is", "a", "very", "and", "plot", "cast", "story", "quite"]


def sentiment_records(n: int, seed: int = 0) -> list[dict]:
    """A separable toy sentiment task: each text has three words of its class among filler words."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        pos = i % 2 == 0
        words = rng.sample(POSITIVE_WORDS if pos else NEGATIVE_WORDS, 3) + rng.sample(FILLER_WORDS, 1)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": "pos" if pos else "neg"})
    return out


def build_bert_tokenizer(out: Path):
    """A WordPiece BERT tokenizer ([CLS] text [SEP], [PAD] = 0) over the toy task's words."""
    from transformers import BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    words = [*POSITIVE_WORDS, *NEGATIVE_WORDS, *FILLER_WORDS]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words,
             *(c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-" if c not in words)]
    vocab += [f"[unused{i}]" for i in range(256 - len(vocab))]  # synthetic latency inputs use ids 100..199
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(out)
    return tok


def build_tiny_bert(out: Path) -> Path:
    """A saved tiny random BERT encoder (hidden 32, 2 layers; architectures BertModel like MiniLM) + tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tok = build_bert_tokenizer(out)
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=len(tok), max_position_embeddings=64, pad_token_id=0,
                                 initializer_range=0.2))
    model.save_pretrained(out, safe_serialization=True)
    return out


# --------------------------------------------------------------------------- image classifiers

IMAGE_CLASSES = ("horizontal", "vertical", "diagonal")


def build_tiny_cnn(out: Path, size: int = 32) -> Path:
    """A tiny random EfficientNet-Lite (3 stages, 8-16 channels, 1000-way head) saved as an edgeft folder."""
    import torch

    from edgeft.models.vision import LiteConfig, Preprocessing, lite_class, save_image_classifier

    torch.manual_seed(0)
    cfg = LiteConfig(stages=((1, 3, 1, 8, 1), (2, 3, 2, 12, 1), (2, 3, 2, 16, 2)), stem=8, head=32, num_classes=1000,
                     preprocessing=Preprocessing(size=size, crop_pct=1.0))
    model = lite_class()(cfg).eval()
    save_image_classifier(model, out)
    return out


def build_tiny_vit(out: Path, size: int = 32) -> Path:
    """A tiny random ViT image classifier (2 layers, hidden 32, patch 8) with its preprocessor config."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=5)
    ViTForImageClassification(cfg).save_pretrained(str(out))
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        str(out))
    return out


def write_image_folder(root: Path, per_class: int, seed: int = 0, size: int = 40) -> Path:
    """``root/<class>/<n>.png``: striped images (horizontal / vertical / diagonal stripes, random phase, colour
    and noise), a task a tiny CNN learns in a few steps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for c, name in enumerate(IMAGE_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            period, phase = rng.integers(5, 9), rng.integers(0, 8)
            coord = (yy, xx, xx + yy)[c]
            stripes = ((coord + phase) // (period // 2)) % 2
            colour = rng.integers(120, 256, 3)
            img = stripes[..., None] * colour + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root
