"""Dataset readers: every malformed case fails naming the file and the line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeft.data.readers import read_records, read_text, write_jsonl
from edgeft.errors import DataError

REQ = ["prompt", "response"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    """cwd = tmp_path with a data/ folder, so messages read 'data/train.jsonl:7: ...'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return Path("data")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error(path, required=REQ) -> str:
    with pytest.raises(DataError) as e:
        read_records(path, required)
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    assert str(path) in msg
    return msg


# --------------------------------------------------------------------------- happy paths


def test_jsonl_skips_blank_lines_and_keeps_types(data):
    path = write(data / "train.jsonl", '{"prompt": "a", "response": "b", "n": 1}\n\n  \n{"prompt": "c", "response": "d"}\n')
    assert read_records(path, REQ) == [{"prompt": "a", "response": "b", "n": 1}, {"prompt": "c", "response": "d"}]


def test_jsonl_value_with_line_separator_char(data):
    record = {"prompt": "a\u2028b", "response": "c"}
    path = write(data / "train.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
    assert read_records(path, REQ) == [record]


def test_csv_with_quotes_and_bom(data):
    path = write(data / "train.csv", '\ufeffprompt,response\n"set a timer, 5 min","{""a"": 1}"\nhi,there\n')
    assert read_records(path, REQ) == [
        {"prompt": "set a timer, 5 min", "response": '{"a": 1}'},
        {"prompt": "hi", "response": "there"},
    ]


def test_tsv(data):
    path = write(data / "train.tsv", "prompt\tresponse\tlabel\nlights on\t{}\t1\n")
    assert read_records(path, REQ) == [{"prompt": "lights on", "response": "{}", "label": "1"}]


def test_shared_sst2_tsv_reads():
    path = Path("/work/shared/data/sst2-train.tsv")
    if not path.exists():
        pytest.skip("shared data not present")
    header = path.read_text(encoding="utf-8").splitlines()[0].split("\t")
    records = read_records(path, header)
    assert records and set(records[0]) == set(header)


# --------------------------------------------------------------------------- file-level errors


def test_file_not_found(data):
    assert error(data / "missing.jsonl") == "data/missing.jsonl: file not found (paths in a recipe are relative to the recipe file)"


def test_unknown_extension_lists_supported(data):
    msg = error(write(data / "train.json", "[]"))
    assert msg == "data/train.json: unsupported file type ('.json'); supported: .csv, .jsonl, .tsv"


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.tsv"])
def test_empty_file(data, name):
    msg = error(write(data / name, "\n  \n"))
    assert "file is empty" in msg


def test_csv_header_only(data):
    assert "no data rows after the header" in error(write(data / "train.csv", "prompt,response\n"))


def test_not_utf8(data):
    path = data / "train.csv"
    path.write_bytes(b"prompt,response\nhi,caf\xe9\n")
    assert error(path).startswith("data/train.csv:2: not UTF-8 text")


# --------------------------------------------------------------------------- jsonl rows


def test_jsonl_invalid_json_names_line_and_column(data):
    path = write(data / "train.jsonl", '{"prompt": "a", "response": "b"}\n' * 6 + '{"prompt": "a" "response": "b"}\n')
    assert error(path) == (
        "data/train.jsonl:7: invalid JSON (Expecting ',' delimiter at col 16); each line must be one JSON object"
    )


def test_jsonl_line_not_an_object(data):
    path = write(data / "train.jsonl", '{"prompt": "a", "response": "b"}\n["a", "b"]\n')
    msg = error(path)
    assert msg.startswith('data/train.jsonl:2: expected a JSON object like {"prompt": ..., "response": ...}, got a list')


def test_jsonl_missing_field_names_field_and_present_fields(data):
    path = write(data / "train.jsonl", '{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "respones": "b"}\n')
    msg = error(path)
    assert msg.startswith("data/train.jsonl:3: missing field 'response' (fields present: prompt, respones)")
    assert "did you mean 'respones'?" in msg


@pytest.mark.parametrize("value", ['""', '"   "', "null"])
def test_jsonl_empty_value(data, value):
    path = write(data / "train.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": %s}\n' % value)
    assert error(path).startswith("data/train.jsonl:2: field 'response' is empty")


# --------------------------------------------------------------------------- csv/tsv rows


def test_csv_missing_column_in_header(data):
    msg = error(write(data / "train.csv", "prompt,answer\na,b\n"))
    assert msg.startswith("data/train.csv:1: missing column 'response' in the header (columns present: prompt, answer)")


def test_csv_wrong_column_count(data):
    path = write(data / "train.csv", "prompt,response\na,b\nset a timer, 5 min,{}\n")
    msg = error(path)
    assert msg.startswith("data/train.csv:3: row has 3 columns, the header has 2 (prompt, response)")
    assert "quote values that contain a comma" in msg


def test_tsv_wrong_column_count_counts_physical_lines(data):
    path = write(data / "train.tsv", 'prompt\tresponse\n"multi\nline"\tok\n\na\tb\tc\n')
    msg = error(path)
    assert msg.startswith("data/train.tsv:5: row has 3 columns, the header has 2")
    assert "stray tab" in msg


def test_csv_empty_value(data):
    msg = error(write(data / "train.csv", "prompt,response\na,b\nc, \n"))
    assert msg.startswith("data/train.csv:3: field 'response' is empty")


def test_csv_duplicate_header(data):
    assert "duplicate column name(s) 'prompt'" in error(write(data / "train.csv", "prompt,prompt,response\na,b,c\n"))


def test_csv_bad_quoting(data):
    msg = error(write(data / "train.csv", 'prompt,response\n"a"x,b\n'))
    assert msg.startswith("data/train.csv:2: malformed ','-separated row")


# --------------------------------------------------------------------------- write / read_text


def test_write_jsonl_roundtrip_and_atomic(tmp_path):
    path = tmp_path / "out" / "eval.jsonl"
    records = [{"prompt": "é", "response": "x\u2028y"}, {"prompt": "b", "response": "c"}]
    assert write_jsonl(path, records) == path
    assert read_records(path, REQ) == records
    assert os.listdir(path.parent) == ["eval.jsonl"]


def test_write_jsonl_failure_keeps_old_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "response": "b"}])

    def gen():
        yield {"prompt": "new", "response": "new"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, gen())
    assert read_records(path, REQ) == [{"prompt": "a", "response": "b"}]
    assert os.listdir(tmp_path) == ["a.jsonl"]


def test_read_text(data):
    assert read_text(write(data / "t.txt", "hello\n")) == "hello\n"
    with pytest.raises(DataError, match=r"data/e\.txt: file is empty"):
        read_text(write(data / "e.txt", ""))
    assert read_text(data / "e.txt", allow_empty=True) == ""
    with pytest.raises(DataError, match=r"data/none\.txt: file not found"):
        read_text(data / "none.txt")
