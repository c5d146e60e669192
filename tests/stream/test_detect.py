"""Tests of ``bayes-defense detect``: several columns, cause, warm-up, --train, bad input, atomic output."""

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from bayes_defense.commands import main

DATA = Path(__file__).parent.parent / "data"


def write_table(path, columns, rows, time="timestamp"):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([time, *columns])
        for i, row in enumerate(rows):
            writer.writerow([i, *row])


def read_scores(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def metrics(rows, seed, shift_column=None, onset=None):
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = np.column_stack([
        20 + 4 * np.sin(2 * np.pi * t / 48) + rng.normal(size=rows),
        100 + 5 * rng.normal(size=rows),
        3 + 0.2 * rng.normal(size=rows),
    ])
    if shift_column is not None:
        values[onset:onset + 25, shift_column] += 12 * values[:, shift_column].std()
    return values


def test_several_columns_scored_jointly_with_cause(tmp_path, capsys):
    source, out = tmp_path / "m.csv", tmp_path / "scores.csv"
    write_table(source, ["cpu", "requests", "disk"], metrics(2000, seed=1, shift_column=1, onset=1500))
    assert main(["detect", str(source), "--value-column", "cpu", "--value-column", "requests",
                 "--value-column", "disk", "--search-rows", "600", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 2000 and summary["episodes"] == 1 and summary["periods"] == [[48], [], []]
    rows = read_scores(out)
    assert list(rows[0]) == ["timestamp", "cpu", "requests", "disk", "probability", "lower", "upper", "cause"]
    assert all(row["probability"] == "" and row["cause"] == "" for row in rows[:600])
    flagged = [row for row in rows[1500:1525] if float(row["probability"]) >= 0.5]
    assert len(flagged) >= 20 and all(row["cause"] == "requests" for row in flagged)
    for row in rows[600:]:
        p, lo, hi = float(row["probability"]), float(row["lower"]), float(row["upper"])
        assert 0.0 <= lo <= p <= hi <= 1.0
        assert (row["cause"] != "") == (p >= 0.5)


def test_value_column_all_takes_every_numeric_column(tmp_path, capsys):
    source, out = tmp_path / "m.csv", tmp_path / "scores.csv"
    values = metrics(400, seed=2)
    with source.open("w") as handle:
        handle.write("time,host,a,b,label\n")
        for i, row in enumerate(values):
            handle.write(f"{i},web{i % 3},{row[0]},{row[1]},0\n")
    assert main(["detect", str(source), "--time-column", "time", "--value-column", "all",
                 "--exclude-column", "label", "--period", "none", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["columns"] == ["a", "b"]
    assert list(read_scores(out)[0])[:3] == ["time", "a", "b"]


def test_skipped_cells_are_counted_per_column(tmp_path, capsys):
    source, out = tmp_path / "m.csv", tmp_path / "scores.csv"
    values = metrics(300, seed=3)[:, :2].astype(object)
    values[10, 0], values[11, 0], values[12, 1], values[13, 1] = "abc", "", "inf", "nan"
    write_table(source, ["a", "b"], values)
    assert main(["detect", str(source), "--value-column", "a", "--value-column", "b", "--period", "none",
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == {"a": 2, "b": 2} and summary["rows"] == 300
    rows = read_scores(out)
    assert rows[10]["a"] == "abc" and rows[12]["b"] == "inf"  # the input is echoed as it was


@pytest.mark.parametrize("content, reason", [
    ("", "empty"),
    ("timestamp,value\n", "no data rows"),
    ("timestamp,value\n1,2\n3,4\n2,5\n", "line 4"),
    ("timestamp,value\n1,2\n", "not in"),
])
def test_bad_input_exits_2_and_leaves_no_file(tmp_path, capsys, content, reason):
    source, out = tmp_path / "m.csv", tmp_path / "scores.csv"
    source.write_text(content)
    arguments = ["detect", str(source), "--out", str(out)]
    if reason == "not in":
        arguments += ["--value-column", "cpu"]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and reason in error
    assert not out.exists() and list(tmp_path.iterdir()) == [source]


def test_unsorted_time_in_a_later_chunk_keeps_the_old_output(tmp_path, monkeypatch):
    import bayes_defense.stream.detect as detect

    monkeypatch.setattr(detect, "_CHUNK_ROWS", 50)
    source, out = tmp_path / "m.csv", tmp_path / "scores.csv"
    out.write_text("old\n")
    with source.open("w") as handle:
        handle.write("timestamp,value\n")
        for i in range(120):
            handle.write(f"{i if i != 90 else 5},{np.sin(i)}\n")
    assert main(["detect", str(source), "--period", "none", "--out", str(out)]) == 2
    assert out.read_text() == "old\n"


def test_dates_as_time_column(tmp_path):
    source, out = tmp_path / "m.csv", tmp_path / "scores.csv"
    with source.open("w") as handle:
        handle.write("timestamp,value\n")
        for i in range(100):
            handle.write(f"2014-04-{1 + i // 24:02d} {i % 24:02d}:00:00,{np.cos(i)}\n")
    assert main(["detect", str(source), "--period", "none", "--out", str(out)]) == 0
    assert len(read_scores(out)) == 100


def test_train_learns_parameters_then_scores_from_the_first_row(tmp_path, capsys):
    train, test, out = tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "scores.csv"
    # The test file continues the training file (the seasonal phase goes on).
    values = metrics(2000, seed=4, shift_column=0, onset=1800)[:, :2]
    write_table(train, ["cpu", "requests"], values[:1500])
    write_table(test, ["cpu", "requests"], values[1500:])
    assert main(["detect", str(test), "--value-column", "cpu", "--value-column", "requests",
                 "--train", str(train), "--train-steps", "150", "--out", str(out), "--json"]) in (0, 1)
    summary = json.loads(capsys.readouterr().out)
    assert summary["periods"] == [[48], []] and set(summary["train"]) >= {"elbo", "pareto_k", "ok"}
    rows = read_scores(out)
    assert rows[0]["probability"] != ""  # warm from the training file
    assert max(float(row["probability"]) for row in rows[:300]) < 0.5
    assert all(row["cause"] == "cpu" for row in rows[302:320])


def test_real_asd_rows_score_within_bounds(tmp_path, capsys):
    # The first 1,200 test rows of ASD entity omi-1 (MIT licence: tests/data/README.md and ASD_LICENSE).
    source, out = tmp_path / "omi.csv", tmp_path / "scores.csv"
    with gzip.open(DATA / "asd_omi-1_test_head.csv.gz", "rt") as handle:
        source.write_text(handle.read())
    assert main(["detect", str(source), "--time-column", "t", "--value-column", "all", "--exclude-column",
                 "label", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["columns"]) == 19
    rows = read_scores(out)
    scored = [row for row in rows if row["probability"]]
    assert scored and all(0 <= float(r["lower"]) <= float(r["probability"]) <= float(r["upper"]) <= 1
                          for r in scored)
