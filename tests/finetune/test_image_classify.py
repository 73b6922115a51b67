"""Objective image-classify on a tiny random EfficientNet-Lite and a tiny ViT: every method trains what it says,
learns the striped-images task, keeps the best epoch, and writes what the merge stage expects."""

from __future__ import annotations

import json

import pytest

from conftest import IMAGE_CLASSES, build_tiny_cnn, build_tiny_vit, write_image_folder
from edgeft.config.schema import FinetuneConfig
from edgeft.data.images import folder_records
from edgeft.errors import UnsupportedError
from edgeft.finetune import finetune

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    train = folder_records(write_image_folder(root / "train", 24, seed=0))
    ev = folder_records(write_image_folder(root / "eval", 8, seed=1))
    return train, ev


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return build_tiny_cnn(tmp_path_factory.mktemp("cnn") / "model")


def _cfg(method: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(**{"method": method, "objective": "image-classify", "epochs": 4, "batch_size": 8,
                             "learning_rate": 1e-2, "warmup_ratio": 0.0, "threads": 2, "early_stopping": None,
                             "image": {"flip": False, "crop_scale": (0.8, 1.0)}, **kw})


def _run(model, data, tmp_path, cfg):
    train, ev = data
    return finetune(model, train, ev, tmp_path / "out", cfg, work_dir=tmp_path / "work")


def test_full_learns_and_writes_a_labelled_model(cnn, data, tmp_path):
    m = _run(cnn, data, tmp_path, _cfg("full"))
    assert m["labels"] == sorted(IMAGE_CLASSES) and m["output"] == "model"
    assert m["eval"]["top1"] >= 0.6  # chance is 1/3
    assert m["trainable_params"] == m["total_params"] and len(m["history"]) == 4
    assert set(m["eval"]) >= {"top1", "top5", "macro_f1", "per_class_f1"} and m["eval"]["topk"] == 3
    cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert cfg["num_classes"] == 3 and cfg["id2label"] == {"0": "diagonal", "1": "horizontal", "2": "vertical"}
    assert json.loads((tmp_path / "out" / "model" / "edgeft_method.json").read_text())["task"] == "image-cls"


def test_methods_train_the_parameters_they_name(cnn, data, tmp_path):
    counts, ends = {}, {}
    for method, extra in (("freeze", {"freeze": {"top_blocks": 0}}), ("bitfit", {}), ("gradual-unfreeze", {}),
                          ("full", {})):
        m = _run(cnn, data, tmp_path / method, _cfg(method, epochs=1, **extra))
        counts[method], ends[method] = m["trainable_params"], m["trainable_params_end"]
    head = 32 * 3 + 3  # the new 3-way head over 32 features
    assert counts["freeze"] == head  # linear probe: the head alone
    assert head < counts["bitfit"] < counts["full"]
    assert counts["gradual-unfreeze"] == head  # trainable at the start; blocks join as training goes
    assert head < ends["gradual-unfreeze"] <= counts["full"] and ends["freeze"] == head


def test_lora_writes_an_adapter_that_folds_into_the_weights(cnn, data, tmp_path):
    import torch

    from edgeft.finetune.objectives.image_classify import load_adapter_model

    m = _run(cnn, data, tmp_path, _cfg("lora", lora={"r": 4, "alpha": 8}))
    assert m["output"] == "adapter" and m["trainable_params"] < m["total_params"]
    model, labels = load_adapter_model(tmp_path / "out" / "adapter")
    # the reloaded adapter scores what the trained model scored: nothing of the base (BatchNorm statistics
    # included) changed outside the adapter file
    from edgeft.data.images import batch
    from edgeft.finetune.objectives.image_classify import predict
    from edgeft.models.vision import preprocessing

    ev = data[1]
    gold = [labels.index(r["label"]) for r in ev]
    pred = predict(model, batch([r["image"] for r in ev], preprocessing(cnn))).argmax(-1)
    assert float((pred == gold).mean()) == m["eval"]["top1"]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)
        merged = model.merge_and_unload()
        assert torch.allclose(before, merged(x), atol=1e-4) and labels == sorted(IMAGE_CLASSES)


def test_vit_trains_through_the_same_objective(data, tmp_path):
    vit = build_tiny_vit(tmp_path / "vit")
    m = _run(vit, data, tmp_path, _cfg("full", epochs=2, learning_rate=3e-3))
    assert m["output"] == "model" and m["eval"]["topk"] == 3
    assert (tmp_path / "out" / "model" / "preprocessor_config.json").is_file()


def test_resume_from_the_last_epoch_checkpoint(cnn, data, tmp_path, caplog):
    first = _run(cnn, data, tmp_path, _cfg("full", epochs=1))
    with caplog.at_level("INFO", logger="edgeft.finetune.objectives.image_classify"):
        again = _run(cnn, data, tmp_path, _cfg("full", epochs=2))  # same work_dir: epoch 1 is not trained again
    assert "resuming at epoch 1 (step 9)" in caplog.text
    assert again["history"][0] == first["history"][0] and len(again["history"]) == 2 and again["steps"] == 18


def test_text_only_methods_are_refused(cnn, data, tmp_path):
    with pytest.raises(UnsupportedError, match="not available for objective image-classify"):
        _run(cnn, data, tmp_path, _cfg("ia3"))


def test_width_reduced_student_distils_from_a_teacher(cnn, data, tmp_path):
    teacher = _run(cnn, data, tmp_path / "teacher", _cfg("full"))
    student = _run(cnn, data, tmp_path / "student", _cfg("full", image={
        "flip": False, "width": 0.5, "teacher": str(tmp_path / "teacher" / "out" / "model"), "distill_alpha": 0.3}))
    assert student["student_width"] == 0.5 and student["teacher"].endswith("model")
    assert student["total_params"] < teacher["total_params"] / 2
    cfg = json.loads((tmp_path / "student" / "out" / "model" / "config.json").read_text())
    assert (cfg["stem"], cfg["head"], [s[3] for s in cfg["stages"]]) == (8, 16, [8, 8, 8])


def test_teacher_with_other_labels_is_refused(cnn, data, tmp_path):
    from edgeft.errors import ConfigError

    with pytest.raises(ConfigError, match="distil from a teacher trained on the same labels"):
        _run(cnn, data, tmp_path, _cfg("full", image={"teacher": str(cnn)}))  # the 1000-way base


def test_vit_lora_merges_into_an_hf_folder(data, tmp_path):
    from edgeft.models.vision import is_image_classifier, labels
    from edgeft.pipeline.vision import merge_adapter

    vit = build_tiny_vit(tmp_path / "vit")
    m = _run(vit, data, tmp_path, _cfg("lora", epochs=1, learning_rate=3e-3, lora={"r": 4, "alpha": 8}))
    assert m["output"] == "adapter" and m["trainable_params"] < m["total_params"]
    rep = merge_adapter(tmp_path / "out" / "adapter", vit, tmp_path / "merged", data[1], 1e-4)
    assert rep["max_abs_diff"] <= 1e-4 and rep["label_agreement"] == 1.0
    assert is_image_classifier(tmp_path / "merged") and labels(tmp_path / "merged") == sorted(IMAGE_CLASSES)
    assert (tmp_path / "merged" / "preprocessor_config.json").is_file()


def test_qat_trains_under_fake_quantization_and_returns_float_weights(cnn, data, tmp_path):
    import torch

    from edgeft.models.vision import load_image_classifier

    plain = _run(cnn, data, tmp_path / "plain", _cfg("full", epochs=2))
    m = _run(cnn, data, tmp_path / "qat", _cfg("full", epochs=2, image={"flip": False, "crop_scale": (0.8, 1.0),
                                                                          "qat": {"epochs": 1}}))
    q = m["qat"]
    assert q["steps"] == 9 and len(q["history"]) == 1 and q["kept_epoch"] in (0, 1)
    assert 0 <= q["top1_fake_quant_before"] <= 1 and q["top1_float_before"] == plain["eval"]["top1"]
    a = load_image_classifier(tmp_path / "plain" / "out" / "model").state_dict()
    b = load_image_classifier(tmp_path / "qat" / "out" / "model").state_dict()
    assert set(a) == set(b)
    if q["kept_epoch"]:  # the QAT epoch's weights were kept: they differ from the float run's
        assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_qat_is_refused_for_methods_other_than_full(cnn, data, tmp_path):
    with pytest.raises(UnsupportedError, match="finetune.image.qat"):
        _run(cnn, data, tmp_path, _cfg("bitfit", image={"qat": {"epochs": 1}}))
