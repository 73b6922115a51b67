"""TorchLM on an AdapterHub model: greedy generation equals a cache-free greedy loop.

adapters 1.3 bottleneck adapters on LLaMA decode wrongly when generate() reuses the KV cache
(seen on SmolLM2-135M: teacher-forced outputs right, cached decoding repeats one token; the tiny
model here does not show it), so TorchLM recomputes the sequence for such models: this checks that
it does, and that the recomputing loop is the greedy continuation.
"""

from __future__ import annotations

import pytest


def test_adapter_model_generates_like_a_cache_free_loop(tiny_lm_dir):
    adapters = pytest.importorskip("adapters")
    import torch
    from transformers import AutoModelForCausalLM

    from edgeft.runtime.lm import TorchLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32)
    adapters.init(model)
    model.add_adapter("x", config=adapters.SeqBnConfig(reduction_factor=4))
    model.set_active_adapters("x")
    with torch.no_grad():  # a trained-looking adapter: non-zero up-projections
        for n, p in model.named_parameters():
            if "adapters" in n:
                p.normal_(0, 0.5)
    lm = TorchLM(model)
    assert lm.use_cache is False
    prompt = list(range(5, 17))
    got = lm.generate([prompt], 8, [0])[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            if nxt == 0:
                break
            ids.append(nxt)
    assert got == ids[len(prompt):] and len(got) > 0
    ttft, steps = lm.timed_generate(prompt, 4)
    assert ttft > 0 and len(steps) == 3
