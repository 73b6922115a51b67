"""The device loop of every validate path: per device, per artifact, compatibility, the latency figure it is gated
on, the latency / RAM / size gates and the verdict; per device, whether some shippable artifact passes.

What differs between kinds of model is a :class:`Timing`: which latency keys are gated and kept, whether RAM is
estimated, how a device with a ``remote`` target is measured and how a latency is projected. The rules are the
same for all: speed is gated on the most faithful figure there is (the device itself, else, for a profile that
is not this machine, the projection, else this machine's measurement); a microcontroller's RAM is the TFLite
Micro tensor arena its graph used, not a host process; size is the artifact's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Timing:
    """How a kind of model is timed and gated on a device."""

    speed_keys: tuple[str, ...]  # the latency figures gated as speed (budgets ttft / decode, or per inference)
    keep: tuple[str, ...]  # the latency keys the report keeps per device
    est_ram_mb: Callable[[dict], Optional[float]] = lambda info: None  # (report entry) -> estimated RAM
    remote: Optional[Callable] = None  # (device, artifact) -> measured-device latency of an ONNX artifact
    project: Optional[Callable] = None  # (device, artifact, report entry, compat result) -> projected latency


def _kept(lat: Optional[dict], keep: tuple[str, ...]) -> Optional[dict]:
    return {k: lat.get(k) for k in keep if k in lat} if lat else None


def device_gates(dev, name: str, speed: Optional[dict], speed_keys: tuple[str, ...], c: dict, info: dict,
                 host_lat: Optional[dict]) -> list[dict]:
    """The budgets of ``dev`` on a compatible artifact: speed on ``speed``, RAM (the TFLite Micro arena on a
    microcontroller, else peak RSS on this machine) and size."""
    from edgeft.validate.gates import latency_gates

    g = []
    if speed:
        g += latency_gates(dev, name, {"label": speed["label"], **{k: speed[k] for k in speed_keys}})
    tflm = (c.get("tflite") or {}).get("tflite_micro") or {}
    if tflm.get("ran") and tflm.get("arena_used_bytes"):
        arena_mb = tflm["arena_used_bytes"] / 2**20
        g += latency_gates(dev, name, {"label": "measured-tflite-micro", "peak_rss_mb": arena_mb})
    elif host_lat:
        g += latency_gates(dev, name, {"label": "measured-host", "peak_rss_mb": host_lat["peak_rss_mb"]})
    g += latency_gates(dev, name, {"label": "measured-host", "size_mb": info["size_bytes"] / 2**20})
    return [x.to_dict() for x in g]


def device_entry(dev, threads: int, required: bool, results: dict, rep_artifacts: dict) -> dict:
    """A device's report entry: it passes when some shippable artifact passes every gate on it."""
    deployable = [n for n, r in results.items() if r["passed"] and rep_artifacts[n]["role"] == "artifact"]
    return {"class": dev.class_, "threads": threads, "threads_profile": dev.cpu.threads, "required": required,
            "passed": bool(deployable), "deployable": deployable, "results": results}


def device_matrix(artifacts, rep_artifacts: dict, latency: dict, ctx, failed_acc: set, timing: Timing) -> dict:
    """Per device of ``ctx``, per artifact (not the base): compatibility, the latency at the device's thread count,
    the latency / RAM / size gates, and the verdict (compatible, every gate passed, accuracy gates passed).
    ``latency[(name, threads)]`` holds this machine's measurements."""
    from edgeft.validate import compat

    rep_devices: dict[str, dict] = {}
    for dname, dev in ctx.devices.items():
        t = min(dev.cpu.threads, ctx.host_threads)
        results = {}
        for a in artifacts:
            if a.role == "base":
                continue
            info = rep_artifacts[a.name]
            art = {"name": a.name, "format": a.format, "precision": a.precision, "int8_mode": a.int8_mode,
                   "size_bytes": info["size_bytes"], "onnx": info.get("onnx"), "tflite": info.get("tflite"),
                   "est_ram_mb": timing.est_ram_mb(info)}
            c = compat.check(art, dev)
            host_lat = latency.get((a.name, t))
            device_lat = None
            if timing.remote is not None and dev.remote is not None and c["compatible"] and a.format == "onnx":
                device_lat = timing.remote(dev, a)
            projected = timing.project(dev, a, info, c) if timing.project is not None else None
            speed = (device_lat or (projected if projected and dev.class_ != "host" else None)
                     or (dict(host_lat, label="measured-host") if host_lat else None))
            g = device_gates(dev, a.name, speed, timing.speed_keys, c, info, host_lat) if c["compatible"] else []
            passed = c["compatible"] and all(x["passed"] for x in g) and a.name not in failed_acc
            results[a.name] = {**c, "est_ram_mb": art["est_ram_mb"], "gates": g, "passed": passed,
                               "gated_on": speed["label"] if speed else None,
                               "latency": {"measured-host": _kept(host_lat, timing.keep), "projected": projected,
                                           "measured-device": _kept(device_lat, timing.keep)}}
        rep_devices[dname] = device_entry(dev, t, dname in ctx.required, results, rep_artifacts)
    return rep_devices
