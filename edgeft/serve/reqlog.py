"""The opt-in request log (``edgeft serve --log DIR``): one JSON object per line in ``DIR/requests.jsonl``.

Each line holds what ``edgeft monitor`` needs: the input as sent (messages or prompt, texts), the output,
token counts, latency, the sampling settings and the model's confidence (causal LMs: mean log-probability
of the generated tokens and mean entropy; classifiers: every class probability). The file is rotated by
size with the standard library's ``RotatingFileHandler`` (``requests.jsonl.1`` is the newest old file,
then ``.2``, ...; the oldest beyond ``backups`` is deleted). Nothing else is ever written: request
content never becomes a path, and the folder is the only place the server writes to.

The log holds user inputs verbatim. Keep it on the device or a store with the same access rules as the
data it came from, and delete it on the schedule your privacy policy sets (``backups`` x ``max_bytes``
bounds how much is kept).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import threading
import time
import uuid
from pathlib import Path

LOG_NAME = "requests.jsonl"


class _Raw(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class RequestLog:
    def __init__(self, folder: Path, max_bytes: int = 10 * 2**20, backups: int = 5) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOG_NAME
        self._logger = logging.Logger(f"edgeft.serve.requests.{uuid.uuid4().hex}")  # private: never propagated
        self._handler = logging.handlers.RotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8")
        self._handler.setFormatter(_Raw())
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._logger.info(line)

    def close(self) -> None:
        self._handler.close()


def log_files(folder: Path) -> list[Path]:
    """The log's files, oldest first (``requests.jsonl.N`` ... ``.1``, then ``requests.jsonl``)."""
    folder = Path(folder)
    rotated = sorted((p for p in folder.glob(LOG_NAME + ".*") if p.suffix.lstrip(".").isdigit()),
                     key=lambda p: -int(p.suffix.lstrip(".")))
    current = folder / LOG_NAME
    return rotated + ([current] if current.is_file() else [])
