"""The quickstart task: on-device intent parsing (utterance -> compact JSON), generated deterministically.

Every example is built from templates and slot values with a seeded RNG; train and eval are drawn
from disjoint utterances (an eval utterance never appears verbatim in train). Slot values are
copied verbatim from the utterance, so the task is learnable by a small model in a few hundred
examples while an un-tuned model, which does not know the schema, scores near zero.
"""

from __future__ import annotations

import json
import random

ROOMS = ["kitchen", "bedroom", "living room", "office", "hallway", "bathroom", "garage", "porch"]
TIMES = ["6:00", "6:30", "6:45", "7:00", "7:15", "7:30", "8:00", "8:20", "9:00", "10:30", "11:45", "5:50"]
AMPM = ["am", "pm"]
DURATIONS = [(3, "minutes"), (5, "minutes"), (10, "minutes"), (12, "minutes"), (15, "minutes"), (20, "minutes"),
             (25, "minutes"), (30, "seconds"), (45, "seconds"), (90, "seconds"), (1, "hours"), (2, "hours")]
TEMPS = [17, 18, 19, 20, 21, 22, 23, 24, 25, 68, 70, 72]
ARTISTS = ["the beatles", "miles davis", "adele", "daft punk", "nina simone", "queen", "bach", "coldplay",
           "taylor swift", "bob marley", "radiohead", "mozart"]
CONTACTS = ["mom", "alex", "sam", "dr. lee", "jordan", "grandpa", "maria", "the team"]
MESSAGES = ["running late", "on my way", "call me back", "dinner is ready", "see you at noon", "happy birthday",
            "meeting moved to 3", "bring the charger"]
LEVELS = [10, 20, 25, 40, 50, 60, 75, 80, 90]


def _alarm(r: random.Random):
    t = f"{r.choice(TIMES)} {r.choice(AMPM)}"
    u = r.choice(["wake me up at {t}", "set an alarm for {t}", "alarm at {t} please", "i need an alarm at {t}",
                  "can you set my alarm to {t}"]).format(t=t)
    return u, {"intent": "set_alarm", "time": t}


def _timer(r: random.Random):
    n, unit = r.choice(DURATIONS)
    d = f"{n} {unit}"
    u = r.choice(["set a timer for {d}", "start a {d} timer", "timer {d}", "count down {d}",
                  "remind me in {d}"]).format(d=d)
    return u, {"intent": "set_timer", "duration": d}


def _lights(r: random.Random):
    room = r.choice(ROOMS)
    if r.random() < 0.35:
        lvl = r.choice(LEVELS)
        u = r.choice(["dim the {room} lights to {l} percent", "set {room} lights to {l} percent",
                      "{room} brightness {l} percent"]).format(room=room, l=lvl)
        return u, {"intent": "lights", "room": room, "action": "dim", "level": lvl}
    action = r.choice(["on", "off"])
    u = r.choice(["turn {a} the {room} lights", "switch {a} lights in the {room}", "{room} lights {a}",
                  "lights {a} in the {room} please"]).format(a=action, room=room)
    return u, {"intent": "lights", "room": room, "action": action}


def _thermostat(r: random.Random):
    t = r.choice(TEMPS)
    room = r.choice(ROOMS)
    u = r.choice(["set the {room} to {t} degrees", "make the {room} {t} degrees", "heat the {room} to {t}",
                  "thermostat {room} {t} degrees"]).format(room=room, t=t)
    return u, {"intent": "thermostat", "room": room, "temperature": t}


def _media(r: random.Random):
    a = r.choice(ARTISTS)
    if r.random() < 0.3:
        act = r.choice(["pause", "resume", "skip"])
        u = r.choice(["{a} the music", "{a} playback", "please {a}"]).format(a=act)
        return u, {"intent": "media", "action": act}
    u = r.choice(["play some {a}", "put on {a}", "i want to hear {a}", "play music by {a}"]).format(a=a)
    return u, {"intent": "media", "action": "play", "artist": a}


def _message(r: random.Random):
    c, m = r.choice(CONTACTS), r.choice(MESSAGES)
    u = r.choice(["text {c} {m}", "send a message to {c} saying {m}", "tell {c} {m}",
                  "message {c}: {m}"]).format(c=c, m=m)
    return u, {"intent": "send_message", "contact": c, "text": m}


INTENTS = [_alarm, _timer, _lights, _thermostat, _media, _message]


def answer_text(obj: dict) -> str:
    """Canonical compact JSON, the exact string the model must produce."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def generate(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (train, eval) lists of {"prompt", "response"} with disjoint prompts, deterministic in ``seed``."""
    r = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    misses = 0  # draws in a row that gave no new prompt: the generator's space is nearly used up
    while len(out) < n_train + n_eval:
        u, obj = r.choice(INTENTS)(r)
        if u in seen:
            misses += 1
            if misses > 5000:
                raise ValueError(f"cannot generate {n_train + n_eval} distinct intent examples (found {len(out)}); "
                                 "lower n_train/n_eval")
            continue
        misses = 0
        seen.add(u)
        out.append({"prompt": u, "response": answer_text(obj)})
    r.shuffle(out)
    return out[:n_train], out[n_train:]
