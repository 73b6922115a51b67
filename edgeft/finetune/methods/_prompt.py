"""Shared by the prompt-learning methods (prompt-tuning, prefix-tuning, p-tuning): they all refuse merge."""

from __future__ import annotations

MERGE_NOTE = ("{name} learns virtual tokens{what} that are not part of the model weights the exporter traces, "
              "so there is nothing to merge; use method lora, dora or ia3 for an exportable model, or run the "
              "PEFT model directly (edgeft.finetune.load_trained)")


def note(name: str, what: str = "") -> str:
    return MERGE_NOTE.format(name=name, what=what)
