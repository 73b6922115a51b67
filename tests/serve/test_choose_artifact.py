"""Which artifact ``edgeft serve`` picks from a bundle's report, and the runtime's sampled decode."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.errors import ConfigError
from edgeft.serve.bundle import choose_artifact


def _dev(deployable, required=True, lat=None):
    return {"required": required, "deployable": deployable, "threads_profile": 4,
            "results": {n: {"gated_on": "projected", "latency": {"projected": {"per_token_ms_p50": ms}}}
                        for n, ms in (lat or {}).items()}}


def _report(devices) -> dict:
    arts = {"int8": {"latency": {"per_token_ms_p50": 20.0}}, "int4": {"latency": {"per_token_ms_p50": 12.0}},
            "fp32": {"latency": {"per_token_ms_p50": 40.0}}}
    return {"artifacts": arts, "devices": devices}


def test_host_profile_wins_with_its_fastest_passing_artifact():
    rep = _report({"host": _dev(["int8", "fp32"], lat={"int8": 30.0, "fp32": 25.0}), "pi5": _dev(["int4"])})
    name, dev, why = choose_artifact(rep, ["int8", "int4", "fp32"])
    assert (name, dev) == ("fp32", "host") and "host" in why  # the host's own gated latency, not the others'


def test_without_host_the_required_devices_decide():
    rep = _report({"phone-cpu": _dev(["int8", "int4"]), "pi5": _dev(["int8", "int4"]),
                   "edge-tpu": _dev([], required=False)})
    name, dev, why = choose_artifact(rep, ["int8", "int4"])
    assert (name, dev) == ("int4", None) and "no host profile" in why and "every required" in why
    rep["devices"]["pi5"]["deployable"] = ["int8"]
    assert choose_artifact(rep, ["int8", "int4"])[0] == "int8"  # int4 no longer passes every required device


def test_device_option_and_its_errors():
    rep = _report({"phone-cpu": _dev(["int8", "int4"], lat={"int8": 5.0, "int4": 9.0}), "tpu": _dev([], False)})
    assert choose_artifact(rep, ["int8", "int4"], "phone-cpu")[:2] == ("int8", "phone-cpu")
    with pytest.raises(ConfigError, match="not a device of this bundle's report.*phone-cpu"):
        choose_artifact(rep, ["int8"], "pi5")
    with pytest.raises(ConfigError, match="no shipped artifact passed validation on it"):
        choose_artifact(rep, ["int8"], "tpu")
    with pytest.raises(ConfigError, match="--device NAME"):
        choose_artifact(_report({"tpu": _dev([], True)}), ["int8"])


def test_kv_cached_logit_stream_equals_the_full_recompute(tiny_lm_dir, tmp_path):
    """OrtLM.logit_stream (KV cache) gives the rows CausalLM's default (logits over the whole sequence) gives,
    and greedy sample_tokens reproduces generate()."""
    from optimum.exporters.onnx import main_export

    from edgeft.runtime import CausalLM
    from edgeft.runtime.lm import OrtLM
    from edgeft.runtime.sampling import sample_tokens

    main_export(str(tiny_lm_dir), output=str(tmp_path / "onnx"), task="text-generation-with-past", opset=18,
                do_validation=False)
    lm = OrtLM(tmp_path / "onnx", 1)
    prompt = [5, 17, 42, 9, 101]
    fast, slow = lm.logit_stream(prompt, 6), CausalLM.logit_stream(lm, prompt, 6)
    rf, rs = next(fast), next(slow)
    for tok in (3, 77, 12, 250, 8):
        assert np.allclose(rf, rs, atol=1e-4)
        rf, rs = fast.send(tok), slow.send(tok)
    assert np.allclose(rf, rs, atol=1e-4)
    greedy = [s.token for s in sample_tokens(lm, prompt, 10, [])]
    assert greedy == lm.generate([prompt], 10, [])[0]
    steps = list(sample_tokens(lm, prompt, 10, [], temperature=1.0, seed=3))
    assert [s.token for s in steps] == [s.token for s in sample_tokens(lm, prompt, 10, [], temperature=1.0, seed=3)]
    assert all(s.logprob <= 0 and s.entropy >= 0 for s in steps)
