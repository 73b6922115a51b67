"""Dataset file readers: ``.jsonl``, ``.csv`` and ``.tsv`` records, plain text, atomic JSONL writes.

Every problem is a one-line :class:`~edgeft.errors.DataError` naming the file, the line (or row)
number and the fix, e.g.::

    data/train.jsonl:7: invalid JSON (Expecting ',' delimiter at col 12); each line must be one JSON object
    data/train.csv:12: missing field 'response' (fields present: prompt, answer)

Line numbers are physical lines of the file (1-based), so ``sed -n 7p FILE`` shows the culprit; for
CSV/TSV the header is line 1 and a quoted value spanning lines reports the line the row ends on.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from edgeft.errors import DataError
from edgeft.fileio import atomic_write

__all__ = ["SUPPORTED_SUFFIXES", "read_records", "read_text", "write_jsonl"]

PathLike = Union[str, os.PathLike]

#: Record file types :func:`read_records` understands.
SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".tsv")


def _open_text(path: PathLike) -> str:
    shown = str(path)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{shown}: file not found (paths in a recipe are relative to the recipe file)")
    if p.is_dir():
        raise DataError(f"{shown}: is a folder, expected a file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"{shown}: cannot read ({e.strerror})") from None
    try:
        # utf-8-sig: files saved by spreadsheet programs often start with a byte-order mark
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{shown}:{line}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None


def read_text(path: PathLike, *, allow_empty: bool = False) -> str:
    """The whole file as UTF-8 text (e.g. a held-out text for perplexity)."""
    text = _open_text(path)
    if not allow_empty and not text.strip():
        raise DataError(f"{path}: file is empty; expected some text")
    return text


def general_text(cfg, base_dir: PathLike = ".") -> str:
    """The text of a ``validate.perplexity.general`` check, from ``start_fraction`` on (cut at a line break).

    ``python-docs`` is the Python language reference's prose as CPython ships it (``pydoc_data.topics``,
    topics in name order): general English that every install has and no fine-tune trains on. Any
    other value is a UTF-8 file, relative to ``base_dir`` (the recipe's folder).
    """
    if cfg.text == "python-docs":
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
    else:
        p = Path(cfg.text)
        text = read_text(p if p.is_absolute() else Path(base_dir) / p)
    if cfg.start_fraction:
        cut = int(len(text) * cfg.start_fraction)
        nl = text.find("\n", cut)
        text = text[nl + 1 if nl >= 0 else cut:]
    return text


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _check_required(shown: str, line: int, record: dict, required: Sequence[str], what: str) -> None:
    for field in required:
        if field not in record:
            present = [str(k) for k in record]
            match = difflib.get_close_matches(field, present, n=1, cutoff=0.6)
            did = f"; did you mean {match[0]!r}?" if match else ""
            raise DataError(
                f"{shown}:{line}: missing field {field!r} (fields present: {', '.join(present) or 'none'}){did}; "
                f"every {what} needs {', '.join(repr(r) for r in required)}"
            )
        value = record[field]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{shown}:{line}: field {field!r} is empty; fill it in or remove the {what}")


def _read_jsonl(shown: str, text: str, required: Sequence[str]) -> list[dict]:
    records: list[dict] = []
    example = "{" + ", ".join(f'"{r}": ...' for r in required) + "}" if required else '{"key": ...}'
    # split on "\n" only: str.splitlines() would also split inside values holding U+2028 etc.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{shown}:{number}: invalid JSON ({e.msg} at col {e.colno}); each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{shown}:{number}: expected a JSON object like {example}, got {_type_name(record)}; "
                f"each line must be one JSON object"
            )
        _check_required(shown, number, record, required, "line")
        records.append(record)
    if not records:
        raise DataError(f"{shown}: file is empty; expected one JSON object per line, like {example}")
    return records


def _read_delimited(shown: str, text: str, required: Sequence[str], delimiter: str) -> list[dict]:
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    if not text.strip():
        raise DataError(f"{shown}: file is empty; expected a header row ({sep}-separated column names) then data rows")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[dict] = []
    header: Optional[list[str]] = None
    try:
        for row in reader:
            number = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                if any(not name for name in header):
                    blank = header.index("") + 1
                    raise DataError(f"{shown}:{number}: header column {blank} has no name; name every column")
                dupes = sorted({name for name in header if header.count(name) > 1})
                if dupes:
                    names = ", ".join(map(repr, dupes))
                    raise DataError(f"{shown}:{number}: duplicate column name(s) {names} in the header")
                missing = [r for r in required if r not in header]
                if missing:
                    match = difflib.get_close_matches(missing[0], header, n=1, cutoff=0.6)
                    did = f"; did you mean {match[0]!r}?" if match else ""
                    raise DataError(
                        f"{shown}:{number}: missing column {missing[0]!r} in the header "
                        f"(columns present: {', '.join(header)}){did}"
                    )
                continue
            if len(row) != len(header):
                hint = (
                    "check for a stray tab inside a value"
                    if delimiter == "\t"
                    else "quote values that contain a comma, e.g. \"a, b\""
                )
                raise DataError(
                    f"{shown}:{number}: row has {len(row)} columns, the header has {len(header)} "
                    f"({', '.join(header)}); {hint}"
                )
            record = dict(zip(header, row))
            _check_required(shown, number, record, required, "row")
            records.append(record)
    except csv.Error as e:
        raise DataError(f"{shown}:{reader.line_num}: malformed {sep}-separated row ({e}); check the quoting") from None
    if header is None:
        raise DataError(f"{shown}: file is empty; expected a header row ({sep}-separated column names) then data rows")
    if not records:
        raise DataError(f"{shown}: no data rows after the header; add at least one row")
    return records


def read_records(path: PathLike, required: Sequence[str] = ()) -> list[dict]:
    """Read ``.jsonl`` (one JSON object per line; blank lines skipped), ``.csv`` or ``.tsv`` (header row).

    Every record must have a non-empty value for each field in ``required``. CSV/TSV values are
    strings; JSONL values keep their JSON types. Raises DataError naming the file and line.
    """
    shown = str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        got = f"'{suffix}'" if suffix else "no extension"
        raise DataError(f"{shown}: unsupported file type ({got}); supported: {', '.join(SUPPORTED_SUFFIXES)}")
    text = _open_text(path)
    if suffix == ".jsonl":
        return _read_jsonl(shown, text, list(required))
    return _read_delimited(shown, text, list(required), "\t" if suffix == ".tsv" else ",")


def write_jsonl(path: PathLike, records: Iterable[dict]) -> Path:
    """Write records as JSON lines atomically: a temp file in the same folder, then ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    """
    target = Path(path)

    def write(f) -> None:
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise DataError(f"{path}: record {i} is {_type_name(record)}, expected a dict")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    atomic_write(target, write)
    return target
