"""Deterministic train/eval splits for the data sources that are not plain prompt/response files.

* raw text (objective ``clm``): the last ``eval_fraction`` of the text, cut at a line break, is the
  held-out slice; both parts become ``{"text": ...}`` records of about ``chunk_chars`` characters,
  cut at line breaks, so joining a split's records gives back its text exactly;
* multitask: every task's own source (generator, train/eval files, or one file whose last
  ``n_eval`` rows are held out) tagged with ``task`` and normalized to prompt/response;
* objective fields: :func:`check_fields` fails on the first record lacking a field the objective needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgeft.errors import DataError


def _resolve(rel: str, base_dir: Path) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(base_dir) / p


def _chunks(text: str, chunk_chars: int) -> list[dict]:
    out, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size >= chunk_chars:
            out.append({"text": "".join(cur)})
            cur, size = [], 0
    if cur and "".join(cur).strip():
        out.append({"text": "".join(cur)})
    return out


def text_records(path: Path, eval_fraction: float, chunk_chars: int = 2000,
                 max_chars: int | None = None) -> tuple[list[dict], list[dict]]:
    """(train, eval) ``{"text"}`` records: eval is the held-out tail of the (optionally truncated) text."""
    from edgeft.data.readers import read_text

    text = read_text(path)
    if max_chars is not None:
        text = text[:max_chars]
    cut = int(len(text) * (1 - eval_fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    train, ev = text[:cut], text[cut:]
    if not train.strip() or not ev.strip():
        raise DataError(f"{path}: too short to hold out {eval_fraction:.0%} for eval ({len(text)} characters); "
                        f"give a longer text or change data.text.eval_fraction")
    return _chunks(train, chunk_chars), _chunks(ev, chunk_chars)


def _file_rows(path: Path, prompt_field: str, response_field: str, label_names: dict | None = None) -> list[dict]:
    from edgeft.data.readers import read_records

    rows = read_records(path, [prompt_field, response_field])
    names = label_names or {}
    return [{"prompt": str(r[prompt_field]), "response": names.get(str(r[response_field]), str(r[response_field]))}
            for r in rows]


def task_records(task, base_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train, eval) prompt/response records of one multitask task, each tagged with ``task``."""
    from edgeft.data.generators import GENERATORS

    if task.generated is not None:
        g = task.generated
        train, ev = GENERATORS.get(g.generator, f"finetune.multitask.tasks[{task.name}].generated.generator")(
            g.n_train, g.n_eval, g.seed)
    elif task.files is not None:
        f = task.files
        train = _file_rows(_resolve(f.train, base_dir), f.prompt_field, f.response_field)
        ev = _file_rows(_resolve(f.eval, base_dir), f.prompt_field, f.response_field)
    else:
        f = task.file
        path = _resolve(f.path, base_dir)
        rows = _file_rows(path, f.prompt_field, f.response_field, f.label_names)
        if len(rows) <= f.n_eval:
            raise DataError(f"{path}: {len(rows)} rows, cannot hold out n_eval={f.n_eval} and keep some for "
                            f"training; lower finetune.multitask task {task.name!r} file.n_eval")
        train, ev = rows[: len(rows) - f.n_eval], rows[len(rows) - f.n_eval:]
        if f.n_train is not None:
            train = train[: f.n_train]
    tag = lambda recs: [{"task": task.name, "prompt": r["prompt"], "response": r["response"]} for r in recs]  # noqa: E731
    return tag(train), tag(ev)


def multitask_records(tasks: Sequence, base_dir: Path) -> tuple[list[dict], list[dict]]:
    train, ev = [], []
    for t in tasks:
        a, b = task_records(t, base_dir)
        train += a
        ev += b
    return train, ev


def check_fields(records: list[dict], fields: Sequence[str], source: str, objective: str) -> None:
    """Fail naming the source, row and field when a record lacks a field the objective needs."""
    for i, r in enumerate(records, start=1):
        for f in fields:
            v = r.get(f)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{source}: row {i}: missing field {f!r} needed by objective {objective!r} "
                                f"(fields present: {', '.join(r) or 'none'})")
