"""Preference pairs for the quickstart intent task (objective ``dpo``), generated deterministically.

Each pair is an intent example from :func:`edgeft.data.intents.generate` (same utterances, same
train/eval split for the same seed) with ``chosen`` = the correct compact JSON and ``rejected`` = a
plausible wrong one: one slot value swapped for another value of the same kind, a slot dropped,
the intent confused with a neighbouring one, or a slot copied with the wrong unit. ``response``
repeats ``chosen`` so the downstream stages (merge samples, export, validate) score the same answer.
"""

from __future__ import annotations

import json
import random

from edgeft.data import intents

_SWAPS = {
    "time": [f"{t} {a}" for t in intents.TIMES for a in intents.AMPM],
    "duration": [f"{n} {u}" for n, u in intents.DURATIONS],
    "room": intents.ROOMS,
    "temperature": intents.TEMPS,
    "artist": intents.ARTISTS,
    "contact": intents.CONTACTS,
    "text": intents.MESSAGES,
    "level": intents.LEVELS,
}
_ACTIONS = {"lights": ["on", "off"], "media": ["play", "pause", "resume", "skip"]}
_CONFUSED = {"set_alarm": "set_timer", "set_timer": "set_alarm", "lights": "thermostat", "thermostat": "lights",
             "media": "send_message", "send_message": "media"}
_REQUIRED = ("intent",)


def _wrong(obj: dict, r: random.Random) -> dict:
    """A plausible but wrong parse of the same utterance (never equal to ``obj``)."""
    slots = [k for k in obj if k not in _REQUIRED]
    kinds = ["swap"] * 3 + ["confuse"] + (["drop"] if len(slots) > 1 else [])
    kind = r.choice(kinds)
    out = dict(obj)
    if kind == "swap" and slots:
        key = r.choice(slots)
        pool = _ACTIONS.get(obj["intent"], []) if key == "action" else _SWAPS.get(key, [])
        options = [v for v in pool if v != obj[key]]
        if options:
            out[key] = r.choice(options)
            return out
        kind = "confuse"
    if kind == "drop":
        del out[r.choice(slots)]
        return out
    out["intent"] = _CONFUSED[obj["intent"]]
    return out


def pairs(records: list[dict], seed: int = 0) -> list[dict]:
    """Add ``chosen``/``rejected`` to prompt/response records (the rejected answer is seeded per prompt)."""
    out = []
    for rec in records:
        r = random.Random(f"{seed}:{rec['prompt']}")
        obj = json.loads(rec["response"])
        rejected = intents.answer_text(_wrong(obj, r))
        out.append({"prompt": rec["prompt"], "chosen": rec["response"], "rejected": rejected,
                    "response": rec["response"]})
    return out


def generate(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval) preference pairs over the intent task's deterministic split."""
    train, ev = intents.generate(n_train, n_eval, seed)
    return pairs(train, seed), pairs(ev, seed)
