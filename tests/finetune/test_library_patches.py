"""Each place edgeft patches a third-party internal still takes effect with the pinned libraries.

A patch of a private name fails silently when the library renames or stops reading it: nothing
raises, the speed-up or fix just stops happening. Each test here patches as edgeft does, runs the
library code path (a tiny model, or the library's source where running it needs more) and checks
the patched behaviour happened, so an upgrade that moves the name fails here first.

The patches (grep edgeft/ for assignments to another library's names):

- ``trl.trainer.utils._use_triton``, replaced inside ``edgeft.finetune.speed.answer_only_lm_head``:
  TRL's fused LM head then scores only the loss positions on CPU.
- ``PretrainedConfig._attn_implementation``, set by ``edgeft.finetune.speed.use_packed_attention``:
  transformers' attention layers then dispatch to ``edgeft.finetune.speed.packed_attention``.
- ``SFTTrainer._metrics`` / ``SFTTrainer._total_train_tokens``, written by the trainer subclass in
  ``edgeft.finetune.objectives.sft`` when it computes the answer-only loss: TRL logs them.
- placeholder classes set on the ``transformers`` module by ``edgeft.exporters.genai._import_builder``
  so onnxruntime-genai's model builder imports with transformers 4.57.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _tiny_lm(tiny_lm_dir, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), attn_implementation=attn,
                                                torch_dtype=torch.float32).eval()


def _batch(vocab: int = 64):
    """Two rows of 12 tokens; labels only on the last 3 of each (the "answer")."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    return {"input_ids": ids, "labels": labels}


# --------------------------------------------------------------------------- trl _use_triton


def test_use_triton_patch_makes_trls_fused_head_score_only_the_loss_positions(tiny_lm_dir, monkeypatch):
    from trl.trainer import utils as trl_utils

    from edgeft.finetune import speed

    rows = []
    real = trl_utils._ChunkedLogProbFunction

    class Spy:  # records how many positions the fused head projects through the LM head
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    model = _tiny_lm(tiny_lm_dir)
    trl_utils.add_fused_lm_head(model)
    batch = _batch(model.config.vocab_size)
    n_loss = int((batch["labels"][:, 1:] != -100).sum())
    model(**batch, fused_lm_head=True)
    with speed.answer_only_lm_head():
        model(**batch, fused_lm_head=True)
    assert rows == [2 * 11, n_loss], (
        f"TRL's fused head projected {rows} positions (default, then inside answer_only_lm_head); expected "
        f"{[22, n_loss]}: TRL no longer reads trl.trainer.utils._use_triton, so the patch does nothing")


# --------------------------------------------------------------------------- transformers _attn_implementation


def test_attn_implementation_patch_routes_attention_to_packed_attention(tiny_lm_dir, monkeypatch):
    from edgeft.finetune import speed

    calls = []
    real = speed.packed_attention

    def counting(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(speed, "packed_attention", counting)  # register_packed_attention registers this one
    model = _tiny_lm(tiny_lm_dir)
    ids = torch.randint(3, model.config.vocab_size, (1, 10))
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])  # three packed examples
    with torch.no_grad(), speed.use_packed_attention(model) as used:
        assert used
        packed = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
    assert len(calls) == model.config.num_hidden_layers, (
        f"packed_attention ran {len(calls)} times for {model.config.num_hidden_layers} layers: transformers no "
        f"longer dispatches attention on config._attn_implementation")
    assert model.config._attn_implementation == "sdpa"  # restored on exit
    with torch.no_grad():  # and the packed rows match the examples run alone (no attention across them)
        alone = model(input_ids=ids[:, 4:7], use_cache=False).logits
    assert torch.allclose(packed[:, 4:7], alone, atol=1e-4)


# --------------------------------------------------------------------------- trl SFTTrainer._metrics


@pytest.fixture(scope="module")
def sft_trainer(tiny_lm_dir, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), report_to=[], use_cpu=True, max_length=32,
                     disable_tqdm=True, bf16=False, dataloader_num_workers=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                               "completion": [{"role": "assistant", "content": "hello"}]}] * 2)
    return SFTTrainer(model=_tiny_lm(tiny_lm_dir), args=args, train_dataset=data, processing_class=tok)


def test_sft_metrics_written_by_edgeft_are_what_trl_logs(sft_trainer):
    """edgeft's answer-only loss appends to ``_metrics["train"]`` and sets ``num_tokens`` from
    ``_total_train_tokens`` as TRL's own compute_loss does; TRL's ``log`` must average them into the logs."""
    trainer = sft_trainer
    assert isinstance(trainer._total_train_tokens, int)
    trainer.model.train()
    trainer._metrics["train"]["mean_token_accuracy"].append(0.25)
    trainer._metrics["train"]["mean_token_accuracy"].append(0.75)
    trainer._total_train_tokens += 40
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]
    logged = {}
    trainer.callback_handler.on_log = lambda args, state, control, logs: logged.update(logs) or control
    trainer.log({"loss": 1.0})
    assert logged.get("mean_token_accuracy") == 0.5 and logged.get("num_tokens") == 40, (
        f"TRL logged {logged}: SFTTrainer.log no longer reads _metrics, so edgeft's token accuracy is lost")
    assert not trainer._metrics["train"]  # TRL clears them per logging step, as edgeft expects


def test_trl_compute_loss_still_counts_tokens_the_way_edgeft_copies():
    import inspect

    from trl import SFTTrainer

    source = inspect.getsource(SFTTrainer.compute_loss)
    for line in ('self._metrics[mode]["mean_token_accuracy"].append', "self._total_train_tokens +=",
                 'self._metrics[mode]["num_tokens"] = [self._total_train_tokens]'):
        assert line in source, f"TRL's SFTTrainer.compute_loss changed ({line!r} is gone): update the copy in " \
                               f"edgeft/finetune/objectives/sft.py (Trainer.compute_loss)"


# --------------------------------------------------------------------------- transformers placeholders for genai


def _module_level_transformers_imports(package: str) -> set[str]:
    """Names imported at module level with ``from transformers import ...`` anywhere in ``package``."""
    spec = importlib.util.find_spec(package)
    names: set[str] = set()
    for root in spec.submodule_search_locations or []:
        for f in Path(root).rglob("*.py"):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in tree.body:  # top level only: an import inside a function is not run at import time
                if isinstance(node, ast.ImportFrom) and node.module == "transformers":
                    names.update(a.name for a in node.names)
    return names


def test_genai_placeholders_are_what_the_builder_imports_from_transformers():
    pytest.importorskip("onnxruntime_genai")
    import transformers

    from edgeft.exporters.genai import _FUTURE_TRANSFORMERS_CLASSES

    imported = _module_level_transformers_imports("onnxruntime_genai.models")
    for name in _FUTURE_TRANSFORMERS_CLASSES:
        assert name in imported, (f"onnxruntime-genai's builder no longer imports {name} from transformers at import "
                                  f"time: drop it from edgeft.exporters.genai._FUTURE_TRANSFORMERS_CLASSES")
    missing = sorted(n for n in imported - set(_FUTURE_TRANSFORMERS_CLASSES) if not hasattr(transformers, n))
    assert not missing, f"the builder imports {missing} from transformers, which lacks them: add placeholders"


def test_genai_placeholders_let_the_builder_import():
    pytest.importorskip("onnxruntime_genai")
    import transformers

    from edgeft.exporters.genai import _FUTURE_TRANSFORMERS_CLASSES, _import_builder

    builder = _import_builder()
    assert builder.__name__ == "onnxruntime_genai.models.builder"
    assert all(hasattr(transformers, name) for name in _FUTURE_TRANSFORMERS_CLASSES)
