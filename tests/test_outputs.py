"""JSONL logs survive a kill or a full disk mid-append (issue 11, section 2): readers skip a torn last line
with a warning, and the next append cannot leave it in the middle of the file."""

import json

import pytest

from lab2.errors import UserError
from lab2.state.files import append_jsonl, keep_jsonl, read_jsonl


def _torn(path, records=2):
    path.write_text(
        "".join(json.dumps({"epoch": i + 1, "eval_acc": 0.5}) + "\n" for i in range(records)) + '{"epoch": 3, "eva'
    )
    return path


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    records = read_jsonl(_torn(tmp_path / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2]
    assert "last line is incomplete" in capsys.readouterr().err


def test_appending_after_a_torn_line_cuts_it_off(tmp_path):
    path = _torn(tmp_path / "flow.jsonl")
    append_jsonl(path, {"epoch": 3, "eval_acc": 0.6})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_filter_survives_a_torn_line_and_odd_records(tmp_path):
    path = _torn(tmp_path / "metrics.jsonl")
    append_jsonl(path, {"no_epoch": True})
    assert [r["epoch"] for r in keep_jsonl(path, lambda r: r["epoch"] <= 1)] == [1]
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1]


def test_damage_in_the_middle_is_one_clear_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        read_jsonl(path)
