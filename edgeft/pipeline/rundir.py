"""Run directory: one folder per stage, written to a temp folder and renamed on success.

``runs/<name>/<stage>/stage.json`` records the stage key (hash of its parameters and of the
upstream stages' keys), params, versions, timing, status and metrics. A stage whose key matches
is skipped; a stage folder without a finished stage.json never exists (the rename is the commit).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

STAGES = ["data", "finetune", "merge", "export", "quantize", "validate", "package"]


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def work_dir(self, stage: str) -> Path:
        """Persistent scratch for a stage (checkpoints) that survives interruption."""
        return self.root / ".work" / stage

    def record(self, stage: str) -> dict | None:
        f = self.stage_dir(stage) / "stage.json"
        if not f.is_file():
            return None
        try:
            rec = json.loads(f.read_text())
        except json.JSONDecodeError:
            return None
        return rec if rec.get("status") == "ok" else None

    def is_current(self, stage: str, key: str) -> bool:
        rec = self.record(stage)
        return rec is not None and rec.get("key") == key

    def begin(self, stage: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{stage}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def commit(self, stage: str, tmp: Path, record: dict) -> Path:
        record = dict(record, status="ok", finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (tmp / "stage.json").write_text(json.dumps(record, indent=2, default=str))
        final = self.stage_dir(stage)
        old = None
        if final.exists():
            old = self.root / f".old-{stage}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def invalidate_from(self, stage: str) -> None:
        """Forget ``stage`` and everything after it (used by --from)."""
        for s in STAGES[STAGES.index(stage):]:
            d = self.stage_dir(s)
            if (d / "stage.json").is_file():
                rec = json.loads((d / "stage.json").read_text())
                rec["status"] = "stale"
                (d / "stage.json").write_text(json.dumps(rec, indent=2))
