"""OrtLM's IO-bound decode loop vs the plain session.run loop, on tiny exported graphs.

Both graph families: optimum's export (the present KV is a new tensor each step, chained through
OrtValues) and onnxruntime-genai's model builder (GroupQueryAttention with one shared KV buffer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")


@pytest.fixture(scope="module")
def optimum_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    from edgeft.exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("fast-lm") / "onnx"
    export_onnx(tiny_lm_dir, out, opset=18)
    return out


@pytest.fixture(scope="module")
def gqa_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    from edgeft.exporters.genai import GenaiOptions, _build, builder_options

    out = tmp_path_factory.mktemp("fast-lm") / "genai-fp32"
    _build(tiny_lm_dir, out, "fp32", builder_options(GenaiOptions(precision="fp32")))
    return out


PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [11, 12], list(range(30, 60))]


def _reference_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    ids = torch.as_tensor([prompt])
    out = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(m(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.as_tensor([[nxt]])], dim=1)
    return out


@pytest.mark.parametrize("graph", ["optimum", "gqa"])
def test_bound_loop_matches_plain_loop(graph, optimum_dir, gqa_dir):
    from edgeft.runtime.lm import OrtLM

    path = optimum_dir if graph == "optimum" else gqa_dir
    plain, fast = OrtLM(path, threads=1, io_binding=False), OrtLM(path, threads=1, io_binding=True)
    assert fast.shared_kv is (graph == "gqa")
    for p in PROMPTS:
        # same logits over a whole window
        a, b = plain.logits(np.asarray(p)), fast.logits(np.asarray(p))
        assert a.shape == b.shape == (len(p), fast.vocab)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        # same greedy tokens, token for token (no EOS stop)
        ta = plain.generate([p], 24, [])[0]
        tb = fast.generate([p], 24, [])[0]
        assert ta == tb and len(tb) == 24


@pytest.mark.parametrize("graph", ["optimum", "gqa"])
def test_bound_decode_logits_equal_plain_step_logits(graph, optimum_dir, gqa_dir):
    """Per decode step, the bound loop's logits row equals a plain step's on the same cache."""
    from edgeft.runtime.lm import OrtLM

    path = optimum_dir if graph == "optimum" else gqa_dir
    plain, fast = OrtLM(path, threads=1, io_binding=False), OrtLM(path, threads=1)
    prompt = np.asarray([PROMPTS[0]], np.int64)
    dec = fast._bound(prompt, prompt.shape[1] + 8)
    mask = np.ones_like(prompt)
    logits, past = plain.step(prompt, mask, plain.empty_past(1))
    np.testing.assert_allclose(dec.prefill(), logits[0, -1], atol=1e-5, rtol=0)
    nxt = int(logits[0, -1].argmax())
    for _ in range(8):
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        logits, past = plain.step(np.asarray([[nxt]]), mask, past)
        row = dec.next(nxt).copy()
        np.testing.assert_allclose(row, logits[0, -1], atol=1e-5, rtol=0)
        nxt = int(row.argmax())


def test_fast_loop_matches_pytorch_greedy(tiny_lm_dir, optimum_dir, gqa_dir):
    from edgeft.runtime.lm import OrtLM

    ref = _reference_greedy(tiny_lm_dir, PROMPTS[0], 12)
    assert OrtLM(optimum_dir).generate([PROMPTS[0]], 12, [])[0] == ref
    assert OrtLM(gqa_dir).generate([PROMPTS[0]], 12, [])[0] == ref


def test_timed_generate_counts_and_eos(optimum_dir, gqa_dir):
    from edgeft.runtime.lm import OrtLM

    for path in (optimum_dir, gqa_dir):
        lm = OrtLM(path, threads=2, spinning=False)
        ttft, steps = lm.timed_generate(PROMPTS[1], 10)
        assert ttft > 0 and len(steps) == 9 and all(s > 0 for s in steps)
        full = lm.generate([PROMPTS[1]], 10, [])[0]
        stop = full[3]
        cut = lm.generate([PROMPTS[1]], 10, [stop])[0]
        assert cut == full[:full.index(stop)]


def test_shared_kv_buffer_full_is_an_error(gqa_dir):
    from edgeft.errors import ModelSourceError
    from edgeft.runtime.lm import OrtLM

    dec = OrtLM(gqa_dir)._bound(np.asarray([[1, 2, 3]], np.int64), 4)
    dec.prefill()
    dec.next(5)
    with pytest.raises(ModelSourceError, match="KV buffer of 4 tokens is full"):
        dec.next(6)


def test_lookup_draft_copies_what_followed_the_latest_longest_match():
    from edgeft.runtime.ortcore import lookup_draft

    assert lookup_draft([1, 2, 3, 4, 9, 1, 2, 3], 2) == [4, 9]  # trigram 1 2 3 seen before: 4 9 followed it
    assert lookup_draft([1, 2, 3, 4, 9, 1, 2, 3], 5) == [4, 9, 1, 2, 3]
    assert lookup_draft([5, 7, 1, 6, 2, 5, 8, 2, 5], 2, max_ngram=3) == [8, 2]  # bigram "2 5": latest is at 4
    assert lookup_draft([1, 2, 3], 4) == []  # nothing recurs
    assert lookup_draft([4, 4], 3) == [4]
    assert lookup_draft([1, 2, 1], 0) == []


@pytest.mark.parametrize("graph,io_binding", [("optimum", False), ("optimum", True), ("gqa", True), ("gqa", False)])
def test_lookup_decoding_gives_greedys_tokens_in_fewer_passes(graph, io_binding, optimum_dir, gqa_dir):
    from edgeft.runtime.lm import OrtLM

    path = optimum_dir if graph == "optimum" else gqa_dir
    plain = OrtLM(path, threads=1, io_binding=False)
    spec = OrtLM(path, threads=1, io_binding=io_binding, lookahead=4)
    prompts = PROMPTS + [[7, 8, 9, 10, 7, 8, 9, 10, 7, 8]]
    accepted = passes = 0
    for p in prompts:
        ref = plain.generate([p], 32, [])[0]
        got, ttft, steps = spec.decode(p, 32, None)
        assert got == ref, (p, got, ref)
        assert len(steps) == 31 and ttft > 0
        accepted += spec.last_stats["accepted"]
        passes += spec.last_stats["passes"]
        assert spec.last_stats["passes"] + spec.last_stats["accepted"] == 31
        # an EOS inside the continuation stops both loops at the same place
        stop = ref[len(ref) // 2]
        assert spec.generate([p], 32, [stop])[0] == plain.generate([p], 32, [stop])[0]
    assert accepted > 0 and passes < 31 * len(prompts)  # the random model repeats itself: drafts were verified


def test_ngram_drafts_chain_the_most_frequent_next_token_longest_context_first():
    from edgeft.runtime.ortcore import NgramDrafts

    d = NgramDrafts([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [9, 3, 7]])
    assert d.draft([8, 1, 2], 3) == [3, 4]  # "1 2" -> 3; "1 2 3" -> 4 (twice vs once); then "2 3 4" ends
    assert d.draft([9, 3], 2) == [7]  # the bigram "9 3" beats the unigram "3" (-> 4)
    assert d.draft([0, 0, 3], 1) == [4]  # unigram "3": seen 4 times, most often followed by 4
    assert d.draft([0, 0, 7], 2) == []  # unigram "7" ends a sequence: nothing follows it
    assert NgramDrafts([[5, 6]], min_count=2).draft([5], 2) == []  # a unigram seen once is not trusted


def test_lookup_decoding_with_ngram_drafts_stays_lossless(optimum_dir):
    from edgeft.runtime.lm import OrtLM
    from edgeft.runtime.ortcore import NgramDrafts

    plain = OrtLM(optimum_dir, threads=1, io_binding=False)
    refs = [plain.generate([p], 24, [])[0] for p in PROMPTS]
    # drafts from the model's own continuations (accepted) mixed with unrelated sequences (rejected)
    spec = OrtLM(optimum_dir, threads=1, lookahead=4, drafts=NgramDrafts(refs[:2] + [list(range(200, 260))]))
    for p, ref in zip(PROMPTS, refs):
        assert spec.generate([p], 24, [])[0] == ref


def test_drafts_file_beside_the_graph_is_the_default_and_explicit_lookahead_ignores_it(optimum_dir, tmp_path):
    import shutil

    from edgeft.errors import ModelSourceError
    from edgeft.runtime.lm import OrtLM
    from edgeft.runtime.ortcore import DEFAULT_LOOKAHEAD, DRAFTS_FILE, NgramDrafts

    plain = OrtLM(optimum_dir, threads=1, lookahead=0)
    refs = [p + plain.generate([p], 24, [])[0] for p in PROMPTS]
    art = tmp_path / "art"
    shutil.copytree(optimum_dir, art)
    table = NgramDrafts(refs[:2])
    table.save(art / DRAFTS_FILE)
    assert NgramDrafts.load(art / DRAFTS_FILE).next == table.next  # the saved table round-trips
    lm = OrtLM(art, threads=1)  # the artifact's default: speculate with its drafts
    assert lm.lookahead == DEFAULT_LOOKAHEAD and lm.drafts.next == table.next
    for p, ref in zip(PROMPTS, refs):
        assert lm.generate([p], 24, [])[0] == ref[len(p):]  # lossless
    assert lm.last_stats["accepted"] > 0  # and the drafts were used
    assert OrtLM(art, threads=1, lookahead=0).lookahead == 0 and OrtLM(art, threads=1, lookahead=2).drafts is None
    from edgeft.runtime.bench import run_inline

    timed = run_inline(str(art), "onnx", 1, PROMPTS[0], 12, 0, 1)  # validate's latency says it speculated
    assert timed["lookahead"] == DEFAULT_LOOKAHEAD and 0 < timed["passes_per_token"] < 1
    assert "lookahead" not in run_inline(str(optimum_dir), "onnx", 1, PROMPTS[0], 12, 0, 1)
    (art / DRAFTS_FILE).write_text("{not json")
    with pytest.raises(ModelSourceError, match="drafts.json: not a drafts table"):
        OrtLM(art, threads=1)


def test_served_greedy_speculates_with_the_drafts_and_equals_validates_decode(optimum_dir, tmp_path):
    """Greedy sample_tokens (what `edgeft serve` decodes) goes through the artifact's speculative loop: the
    tokens of generate(), each with the log-probability and entropy of the one-token-per-pass loop, in fewer
    forward passes; an eos stops it where it stops the plain loop."""
    import shutil

    from edgeft.runtime.lm import OrtLM
    from edgeft.runtime.ortcore import DRAFTS_FILE, NgramDrafts
    from edgeft.runtime.sampling import sample_tokens

    plain = OrtLM(optimum_dir, threads=1, lookahead=0)
    refs = [p + plain.generate([p], 24, [])[0] for p in PROMPTS]
    art = tmp_path / "art"
    shutil.copytree(optimum_dir, art)
    NgramDrafts(refs).save(art / DRAFTS_FILE)
    lm = OrtLM(art, threads=1)
    fed = []
    multi = lm._multi_loop

    def counting(prompt, n):
        prefill, feed, drop = multi(prompt, n)
        return prefill, (lambda tokens: fed.append(len(tokens)) or feed(tokens)), drop

    lm._multi_loop = counting
    passes = tokens = 0
    for p in PROMPTS:
        fed.clear()
        served, ref = list(sample_tokens(lm, p, 24, [])), list(sample_tokens(plain, p, 24, []))
        passes, tokens = passes + len(fed), tokens + len(served) - 1
        assert [s.token for s in served] == [s.token for s in ref] == lm.generate([p], 24, [])[0]
        assert np.allclose([s.logprob for s in served], [s.logprob for s in ref], atol=1e-4)
        assert np.allclose([s.entropy for s in served], [s.entropy for s in ref], atol=1e-4)
        stop = ref[len(ref) // 2].token
        cut = list(sample_tokens(lm, p, 24, [stop]))
        assert cut[-1].eos and [s.token for s in cut] == [s.token for s in sample_tokens(plain, p, 24, [stop])]
    assert 0 < passes < tokens  # the speculative loop ran, and drafts were accepted: fewer passes than tokens
