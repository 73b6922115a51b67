"""Registry of generated tasks (deterministic train/eval splits)."""

from __future__ import annotations

from typing import Callable

from edgeft.data import intents, preferences
from edgeft.registry import Registry

GENERATORS: Registry[Callable[[int, int, int], tuple[list[dict], list[dict]]]] = Registry("task generator")
GENERATORS.register("intents")(intents.generate)
GENERATORS.register("intent-preferences")(preferences.generate)
