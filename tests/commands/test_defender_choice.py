"""``defend`` and ``fit`` name their defender: ``--defender``, ``--map`` (observation maps), posteriors that choose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayes_defense.cli import main
from bayes_defense.stream.io import read_events, write_events

# A user's own vocabulary for the simulator's kinds and node names: every kind renamed, node names free.
_MAP = """
[nodes]
replica = '^node-[0-9]+$'
[options]
schema_kinds = false
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("choice")
    assert main(["simulate", "--nodes", "7", "--duration", "300", "--attack", "equivocation", "--seed", "5",
                 "--out", str(out)]) == 0
    return out


def _renamed(run, tmp_path):
    """The run in another vocabulary: kinds prefixed ``my_``, replicas ``r3`` -> ``node-3``, and the map for it."""
    events = list(read_events(run / "events.jsonl"))
    kinds = sorted({e.kind for e in events})

    def node(name):
        return f"node-{name[1:]}" if name[:1] == "r" and name[1:].isdigit() else name

    def attrs(values):
        return {k: (node(v) if isinstance(v, str) else v) for k, v in values.items()}

    write_events(tmp_path / "mine.jsonl", [(e.ts, node(e.node), f"my_{e.kind}", e.value, attrs(e.attrs)) for e in events])
    text = _MAP + "".join(f'[kinds.my_{kind}]\nas = "{kind}"\n' for kind in kinds)
    (tmp_path / "mine.toml").write_text(text)
    return tmp_path / "mine.jsonl", tmp_path / "mine.toml"


def _alerts(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_renamed_vocabulary_read_through_its_map_gives_the_same_alerts(run, tmp_path, capsys):
    log, mapping = _renamed(run, tmp_path)
    # A low threshold, so that the comparison has alerts to compare whatever the prior's sensitivity.
    assert main(["defend", str(run / "events.jsonl"), "--defender", "model", "--out", str(tmp_path / "a.jsonl"),
                 "--threshold", "0.3", "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert reference["defender"] == "model"
    assert main(["defend", str(log), "--map", str(mapping), "--out", str(tmp_path / "b.jsonl"), "--threshold", "0.3",
                 "--json"]) == 0
    renamed = json.loads(capsys.readouterr().out)
    assert renamed["defender"] == "model" and renamed["accepted"] == reference["accepted"]
    original, mine = _alerts(tmp_path / "a.jsonl"), _alerts(tmp_path / "b.jsonl")
    assert original, "the comparison needs alerts"
    strip = [{k: v for k, v in a.items() if k != "nodes"} for a in original]
    assert [{k: v for k, v in a.items() if k != "nodes"} for a in mine] == strip
    assert [[n.replace("node-", "r") for n in a["nodes"]] for a in mine] == [a["nodes"] for a in original]


def test_a_log_the_map_does_not_match_exits_1_and_names_its_kinds(run, tmp_path, capsys):
    log, _ = _renamed(run, tmp_path)
    assert main(["defend", str(log), "--defender", "model", "--out", str(tmp_path / "a.jsonl"), "--json"]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["accepted"] == 0 and "my_msg_rate_in" in summary["unmatched_kinds"]
    assert "match nothing in the observation map" in captured.err and "my_msg_rate_in" in captured.err


def test_the_scored_defender_refuses_a_map_and_unknown_maps_are_named(run, tmp_path, capsys):
    assert main(["defend", str(run / "events.jsonl"), "--defender", "scored", "--map", "plenum",
                 "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "takes no observation map" in capsys.readouterr().err
    assert main(["defend", str(run / "events.jsonl"), "--map", "no_such_map", "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "no shipped observation map 'no_such_map'" in capsys.readouterr().err


def test_a_model_filter_fit_chooses_the_model_filter_in_defend(run, tmp_path, capsys):
    posterior = tmp_path / "signal.nc"
    assert main(["fit", str(run), "--defender", "model", "--out", str(posterior), "--json"]) in (0, 1)
    summary = json.loads(capsys.readouterr().out)
    assert summary["labelled_windows"] > 0 and posterior.is_file()
    assert main(["defend", str(run / "events.jsonl"), "--posterior", str(posterior), "--out",
                 str(tmp_path / "a.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["defender"] == "model"
    assert main(["defend", str(run / "events.jsonl"), "--posterior", str(posterior), "--defender", "scored",
                 "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "fitted for the model defender" in capsys.readouterr().err
    assert main(["fit", str(run), "--defender", "model", "--method", "nuts", "--out", str(posterior)]) == 2
    assert main(["fit", str(run), "--faults", str(run / "faults.json"), "--defender", "scored",
                 "--out", str(posterior)]) == 2


@pytest.mark.parametrize("learning", [False, True], ids=["plain", "learning"])
def test_model_filter_resume_gives_the_uninterrupted_alerts(run, tmp_path, capsys, learning):
    log = run / "events.jsonl"
    extra = ["--learn", str(run / "labels.json")] if learning else []
    reference = ["--learned", str(tmp_path / "ref.nc")] if learning else []
    assert main(["defend", str(log), "--defender", "model", "--out", str(tmp_path / "ref.jsonl"), "--json",
                 *extra, *reference]) == 0
    capsys.readouterr()
    # A checkpoint at every block: the run's last checkpoint is removed at the end, so write one by hand
    # from a run cut short, as an interruption would leave it.
    from bayes_defense.commands import defend as command

    saved = {}
    original = command.defend_stream

    def interrupted(reader, defender, **kwargs):
        on_block = kwargs["on_block"]

        def block_then_stop():
            on_block()
            saved["done"] = True
            raise KeyboardInterrupt

        kwargs["on_block"] = block_then_stop
        return original(reader, defender, **kwargs)

    command.defend_stream = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            main(["defend", str(log), "--defender", "model", "--out", str(tmp_path / "a.jsonl"),
                  "--checkpoint-every", "0", *extra])
    finally:
        command.defend_stream = original
    checkpoint = tmp_path / "a.jsonl.checkpoint"
    assert saved and checkpoint.is_file()
    if not learning:   # --learn implies the model filter; the scored defender cannot read its state
        assert main(["defend", str(log), "--defender", "scored", "--out", str(tmp_path / "a.jsonl"),
                     "--resume", str(checkpoint)]) == 2
        assert "resume with the --defender" in capsys.readouterr().err
    resumed = ["--learned", str(tmp_path / "resumed.nc")] if learning else []
    assert main(["defend", str(log), "--defender", "model", "--out", str(tmp_path / "a.jsonl"),
                 "--resume", str(checkpoint), *extra, *resumed]) == 0
    assert _alerts(tmp_path / "a.jsonl") == _alerts(tmp_path / "ref.jsonl")
    if learning:
        from bayes_defense.fitting import load_posterior

        before, after = load_posterior(tmp_path / "ref.nc"), load_posterior(tmp_path / "resumed.nc")
        assert after.info["labelled_windows"] == before.info["labelled_windows"] > 0
        for name, values in before.draws.items():
            np.testing.assert_array_equal(after.draws[name], values, err_msg=name)


def test_the_demo_with_the_model_filter_shows_each_first_alerts_explanation(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--duration", "300", "--defender", "model", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["defender"] == "model"
    alerted = [row for row in summary["table"] if row["first_alert"] is not None]
    for row in alerted:
        causes = row["explanation"]
        assert causes and all(0.0 <= c["lower"] <= c["probability"] <= c["upper"] <= 1.0 for c in causes)
        assert [c["probability"] for c in causes] == sorted((c["probability"] for c in causes), reverse=True)
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert all("explanation" in line for line in lines)
    assert main(["demo", "--out", str(tmp_path), "--duration", "300", "--defender", "model"]) == 0
    printed = capsys.readouterr().out
    assert "model defender: detection rate" in printed
    if alerted:
        assert "first alert / countermeasure / explanation" in printed


def test_defend_learn_folds_labels_in_and_ends_with_the_fit_of_the_same_log(run, tmp_path, capsys):
    from bayes_defense.fitting import load_posterior

    labels = run / "labels.json"
    learned = tmp_path / "learned.nc"
    assert main(["defend", str(run / "events.jsonl"), "--learn", str(labels), "--learned", str(learned),
                 "--out", str(tmp_path / "a.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["defender"] == "model" and summary["learned"] == len(json.loads(labels.read_text()))
    fitted = tmp_path / "fitted.nc"
    # The events file, not the directory: the directory's faults.json would fit the faults too.
    assert main(["fit", str(run / "events.jsonl"), "--labels", str(labels), "--defender", "model",
                 "--out", str(fitted), "--json"]) in (0, 1)
    capsys.readouterr()
    import bayes_defense as bd
    from bayes_defense.fitting.signal_posterior import default_posterior

    # The defender started from the shipped default posterior, so what it learnt is that posterior's counts
    # plus this log's: the exact merge of the default with the offline fit of the log.
    online, offline = load_posterior(learned), load_posterior(fitted)
    expected = bd.merge_posteriors([default_posterior(), offline])
    assert online.info["labelled_windows"] == expected.info["labelled_windows"] > offline.info["labelled_windows"] > 0
    for name, values in expected.draws.items():
        np.testing.assert_allclose(online.draws[name], values, rtol=0, atol=1e-12, err_msg=name)
    assert main(["defend", str(run / "events.jsonl"), "--learn", str(labels), "--defender", "scored",
                 "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "does not learn" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"attack": "replay"}]))
    assert main(["defend", str(run / "events.jsonl"), "--learn", str(bad), "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "no finite end" in capsys.readouterr().err
