"""``edgeft serve`` on the tiny pipeline's bundle: a real uvicorn process on 127.0.0.1, real clients.

One end-to-end run of the tiny recipe (random LLaMA, ONNX fp32 / int8 / int4, validated on host) gives the
bundle; each test starts its own server process with the options it needs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time

import httpx
import pytest

import edgeft
from conftest import SYSTEM_PROMPT, tiny_recipe_dict, write_recipe
from serve_support import Server, run_cli

pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python boolean", "ignore:Exporting aten..index operator",
    "ignore:The given NumPy array is not writable", "ignore:mtime may not be reliable",
)

PROMPT = "set a timer for 10 minutes"


@pytest.fixture(scope="module")
def run(tiny_lm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-lm")
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe_dict(tiny_lm_dir))
    return edgeft.run(recipe, runs_root=root / "runs")


@pytest.fixture(scope="module")
def bundle(run):
    return run.bundle


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    logs = tmp_path_factory.mktemp("log")
    with Server(bundle, "--log", str(logs), "--concurrency", "2") as s:
        s.logs = logs
        yield s


def _manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _openai(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _model_id(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def _validated_answer(bundle, artifact: str, prompt: str, max_new_tokens: int) -> str:
    """The answer as validate / `edgeft generate` produce it: greedy, the recipe's system prompt."""
    from edgeft.chat import generate

    return generate(bundle / "artifacts" / artifact, prompt, SYSTEM_PROMPT, max_new_tokens, threads=2,
                    tokenizer=bundle / "tokenizer")


# --------------------------------------------------------------------------- service endpoints


def test_bundle_ships_reference_stats(bundle):
    paths = {f["path"] for f in _manifest(bundle)["files"]}
    assert "reference_stats.json" in paths
    stats = json.loads((bundle / "reference_stats.json").read_text())
    assert stats["kind"] == "causal-lm" and stats["n_train"] == 24
    shipped = {p.split("/")[1] for p in paths if p.startswith("artifacts/")}
    assert set(stats["artifacts"]) == shipped
    for ref in stats["artifacts"].values():
        assert len(ref["mean_logprob"]) == 8 and all(x <= 0 for x in ref["mean_logprob"])


def test_models_names_artifact_and_manifest_hash(server, bundle, run):
    m = httpx.get(server.url + "/v1/models").json()["data"][0]
    host = run.report.devices["host"]
    assert m["artifact"] in host.deployable and m["device"] == "host"
    assert m["manifest_sha256"] == _manifest(bundle)["manifest_sha256"]
    assert m["id"] == f"tiny-0.0.1/{m['artifact']}" and "host" in m["selected_because"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["kind"] == "causal-lm" and h["concurrency"] == 2


def test_openai_client_chat_matches_validated_greedy_answer(server, bundle):
    client = _openai(server)
    model = _model_id(server)
    artifact = model.split("/")[1]
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                       temperature=0)
    assert r.choices[0].message.content.strip() == _validated_answer(bundle, artifact, PROMPT, 12)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 12
    # the recipe's system prompt given explicitly is the same prompt
    r2 = client.chat.completions.create(model=model, max_tokens=12, messages=[
        {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PROMPT}])
    assert r2.choices[0].message.content == r.choices[0].message.content


def test_openai_client_streams_the_same_text(server):
    client = _openai(server)
    model = _model_id(server)
    msgs = [{"role": "user", "content": "turn off the kitchen lights"}]
    full = client.chat.completions.create(model=model, messages=msgs, max_tokens=20)
    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_sse_wire_format_ends_with_done(server):
    body = {"prompt": "hello", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert all(x.startswith("data: ") for x in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert all(e["object"] == "text_completion" for e in events)


def test_completions_stop_string_cuts_the_text(server):
    url = server.url + "/v1/completions"
    full = httpx.post(url, json={"prompt": "the plot", "max_tokens": 24}, timeout=60).json()["choices"][0]
    text = full["text"]
    assert len(text) >= 2, full
    stop = text[len(text) // 2]  # a character the greedy answer contains
    cut = httpx.post(url, json={"prompt": "the plot", "max_tokens": 24, "stop": ["@@never@@", stop]},
                     timeout=60).json()
    assert cut["choices"][0]["text"] == text[:text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = httpx.post(url, json={"prompt": "the plot", "max_tokens": 24, "stop": stop, "stream": True}, timeout=60)
    events = [json.loads(x[6:]) for x in streamed.text.split("\n\n") if x.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == text[:text.find(stop)]


def test_temperature_sampling_is_seeded(server):
    url = server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "temperature": 1.5, "seed": 7}
    a = httpx.post(url, json=body, timeout=60).json()
    b = httpx.post(url, json=body, timeout=60).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    others = {httpx.post(url, json={**body, "seed": s}, timeout=60).json()["choices"][0]["message"]["content"]
              for s in range(8)}
    assert len(others) > 1  # sampling, not greedy


def test_curl_works_unchanged(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    import subprocess

    out = subprocess.run(["curl", "-s", server.url + "/v1/chat/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})],
                         capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["object"] == "chat.completion"


# --------------------------------------------------------------------------- bad input

LONG = " ".join(["lights"] * 400)  # far past the tiny model's 256-token context
BAD = {
    "malformed JSON": (b'{"messages": [', 400, "malformed JSON"),
    "invalid UTF-8": (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "UTF-8"),
    "lone surrogate escape": (b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', 400, "malformed JSON"),
    "empty body": (b"", 400, "empty body"),
    "not an object": (b"[1, 2]", 400, "Input should be"),
    "missing messages": (b'{"max_tokens": 4}', 400, "messages"),
    "wrong type": (b'{"messages": "hello"}', 400, "messages"),
    "wrong role": (b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "role"),
    "string max_tokens": (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "4"}', 400, "max_tokens"),
    "negative max_tokens": (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}', 400, "max_tokens"),
    "n > 1": (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "n"),
    "prompt longer than the context": (json.dumps({"messages": [{"role": "user", "content": LONG}]}).encode(), 400,
                                       "context"),
    "unknown model": (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "not served"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_a_one_line_4xx_and_the_server_keeps_serving(server, name):
    body, status, words = BAD[name]
    r = httpx.post(server.url + "/v1/chat/completions", content=body, timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert words in msg and "\n" not in msg, msg
    ok = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                    json={"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2})
    assert ok.status_code == 200


def test_wrong_endpoint_for_the_model_kind(server):
    r = httpx.post(server.url + "/v1/classify", json={"input": "x"}, timeout=60)
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_metrics_count_requests_errors_and_tokens(server):
    httpx.post(server.url + "/v1/chat/completions", content=b"{", timeout=60)
    httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": PROMPT}],
                                                          "max_tokens": 3}, timeout=60)
    text = httpx.get(server.url + "/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    ok = [s for s in fams["edgeft_requests"].samples if s.labels.get("status") == "200" and s.name.endswith("_total")]
    assert sum(s.value for s in ok) >= 1
    bad = [s for s in fams["edgeft_errors"].samples if s.labels.get("kind") == "bad_request"
           and s.name.endswith("_total")]
    assert sum(s.value for s in bad) >= 1
    assert any(s.name == "edgeft_request_latency_seconds_count" and s.value >= 1
               for s in fams["edgeft_request_latency_seconds"].samples)
    assert "edgeft_queue_depth" in fams and "edgeft_decode_tokens_per_second" in fams
    assert next(s.value for s in fams["edgeft_completion_tokens"].samples if s.name.endswith("_total")) >= 1


# --------------------------------------------------------------------------- load, timeouts, shutdown


def _long_prompt(url: str, max_tokens: int) -> str:
    """A prompt the random model answers without ever ending its turn (so every request decodes max_tokens)."""
    for i in range(40):
        r = httpx.post(url + "/v1/completions", json={"prompt": f"request {i}", "max_tokens": max_tokens},
                       timeout=120).json()
        if r["choices"][0]["finish_reason"] == "length":
            return f"request {i}"
    raise AssertionError("the tiny model ended its turn early on every candidate prompt")


async def _burst_behind_a_stream(url: str, n: int, prompt: str, max_tokens: int) -> list[httpx.Response]:
    """``n`` requests at once while a streamed request holds the server's one slot (its first chunk has arrived)."""
    async with httpx.AsyncClient(timeout=120) as c:
        body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
        async with c.stream("POST", url + "/v1/completions", json=body) as held:
            lines = held.aiter_lines()
            while not (await lines.__anext__()).strip():
                pass
            rs = await asyncio.gather(*[
                c.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens}) for _ in range(n)])
            async for _ in lines:
                pass
        return rs


def test_overload_gets_429_with_retry_after_and_nothing_is_lost(bundle):
    with Server(bundle, "--concurrency", "1", "--queue", "1") as s:
        prompt = _long_prompt(s.url, 200)
        for _ in range(3):  # the held request can finish before the burst is read on a loaded machine: try again
            rs = asyncio.run(_burst_behind_a_stream(s.url, 16, prompt, 200))
            codes = [r.status_code for r in rs]
            assert set(codes) <= {200, 429} and codes.count(200) >= 1, codes
            if 429 in codes:
                break
        assert codes.count(429) >= 1, codes
        for r in rs:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]["message"]
            else:
                assert r.json()["usage"]["completion_tokens"] == 200
        assert httpx.get(s.url + "/health").json()["in_flight"] == 0


def test_request_timeout(bundle):
    with Server(bundle, "--timeout", "0.001", "--concurrency", "1") as s:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 200}, timeout=60)
        assert r.status_code in (503, 504) and "timed out" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/health").status_code == 200


def test_graceful_shutdown_finishes_requests_in_flight(bundle):
    s = Server(bundle, "--concurrency", "1", "--queue", "8")
    prompt = _long_prompt(s.url, 200)  # each request decodes 200 tokens: the later ones are queued at the signal
    results: list = [None] * 4
    first_chunk = threading.Event()

    def stream(i: int) -> None:
        body = {"prompt": prompt, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
            lines = []
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    first_chunk.set()
            results[i] = (r.status_code, lines)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert first_chunk.wait(60)
    deadline = time.monotonic() + 60  # every request accepted (one decoding, three queued) before the signal
    while time.monotonic() < deadline:
        h = httpx.get(s.url + "/health", timeout=10).json()
        if h["in_flight"] + h["queued"] + sum(r is not None for r in results) >= 4:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the server never held all 4 requests: {h}")
    rc, err = s.stop(signal.SIGTERM)
    for t in threads:
        t.join(60)
    for status, lines in results:
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert not any('"error"' in x for x in lines)
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"  # decoded to the end
    assert rc == 0, err


# --------------------------------------------------------------------------- verification at start-up


def _tamper(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["artifact", "report"])
def test_tampered_bundle_is_refused_naming_the_file(bundle, tmp_path, what):
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    rel = (next(p for p in sorted((copy / "artifacts").rglob("*.onnx*"))).relative_to(copy).as_posix()
           if what == "artifact" else "report.json")
    _tamper(copy / rel)
    res = run_cli("serve", copy, "--port", "9")
    assert res.returncode == 8, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to serve") and rel in line and "sha256 mismatch" in line


def test_tampered_tarball_is_refused(run, tmp_path):
    tar = tmp_path / run.tarball.name
    shutil.copy(run.tarball, tar)
    shutil.copy(run.tarball.with_name(run.tarball.name + ".sha256"), tmp_path)
    _tamper(tar)
    res = run_cli("serve", tar, "--port", "9")
    assert res.returncode == 8 and "refusing to serve" in res.stderr and tar.name in res.stderr


def test_tarball_serves(run):
    with Server(run.tarball) as s:
        assert httpx.get(s.url + "/v1/models").json()["data"][0]["manifest_sha256"] == _manifest(run.bundle)[
            "manifest_sha256"]


# --------------------------------------------------------------------------- request log -> monitor


def test_request_log_then_monitor(server, bundle, tmp_path):
    client = _openai(server)
    model = _model_id(server)
    from edgeft.data.intents import generate

    prompts = [r["prompt"] for r in generate(24, 1, seed=5)[0]]
    for p in prompts:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], max_tokens=8)
    rows = [json.loads(x) for x in (server.logs / "requests.jsonl").read_text().splitlines()]
    chat = [r for r in rows if r["endpoint"] == "chat" and r["input"]["prompt"] in prompts]
    assert len(chat) == len(prompts)
    r = chat[0]
    assert r["artifact"] == model.split("/")[1] and r["latency_ms"] > 0 and r["completion_tokens"] <= 8
    assert r["confidence"]["mean_logprob"] <= 0 and r["confidence"]["mean_entropy"] >= 0
    res = run_cli("monitor", server.logs, "--bundle", bundle, "--out", tmp_path / "mon", "--top-k", "5")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "mon" / "drift.json").read_text())
    assert rep["artifact"] == r["artifact"] and rep["log"]["rows"] >= len(prompts)
    assert {f["feature"] for f in rep["features"]} == {"input_length", "input_tokens", "confidence", "entropy",
                                                       "output_length"}
    html = (tmp_path / "mon" / "drift.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "input_length" in html and "<script" not in html
    assert "<h2>Distributions</h2>" in html and "://" not in html
    review = [json.loads(x) for x in (tmp_path / "mon" / "review.jsonl").read_text().splitlines()]
    assert len(review) == 5 and {"prompt", "response", "score", "rank"} <= set(review[0])
    assert [x["score"] for x in review] == sorted((x["score"] for x in review), reverse=True)
    assert len({x["prompt"] for x in review}) == len(review)  # a repeated request is reviewed once


def test_request_log_rotates_by_size(bundle, tmp_path):
    with Server(bundle, "--log", str(tmp_path), "--log-max-mb", "0.001", "--log-backups", "2") as s:
        for i in range(12):
            httpx.post(s.url + "/v1/completions", json={"prompt": f"p{i} " * 20, "max_tokens": 4}, timeout=60)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"], names
    from edgeft.monitor.drift import read_log

    assert read_log(tmp_path).bad_lines == 0
