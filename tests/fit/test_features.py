"""Reading incident logs into window features, and the errors bad input gets."""

import json

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError, MalformedEventError
from bayes_defense.fitting import fit, load_posterior
from bayes_defense.fitting.defender import WindowFeatures, extract_features, simulate_windows
from bayes_defense.stream.io import read_events
from bayes_defense.stream.scored import ATTACK_HYPOTHESES, ScoredDefender


def test_features_are_the_defenders_scores_with_label_phases(replay_run):
    features = extract_features(replay_run.events_path, replay_run.labels_path)
    replay = ATTACK_HYPOTHESES.index("replay")
    label = replay_run.labels[0]
    # One row per window after the defender's 20 warm-up windows; windows end on whole seconds.
    assert features.scores.shape == (len(features), len(ATTACK_HYPOTHESES))
    assert features.labelled and features.events == replay_run.events
    phases = features.phases[:, replay]
    ends = np.arange(len(features)) + 21.0
    assert np.array_equal(phases == 1, (ends >= label["precursor_start"]) & (ends < label["execution_start"]))
    assert np.array_equal(phases == 2, (ends >= label["execution_start"]) & (ends <= label["end"]))
    others = np.delete(features.phases, replay, axis=1)
    assert (others == 0).all()
    # The scores are exactly what the defender's own evidence code gives, window by window.
    defender = ScoredDefender(ensemble=2)
    seen = []
    original = defender._evidence

    def recording():
        score, suspects = original()
        seen.append(score.copy())
        return score, suspects

    defender._evidence = recording
    defender.observe_batch(read_events(replay_run.events_path))
    defender.flush()
    assert np.allclose(np.array(seen[20:], np.float32), features.scores)


def test_unlabelled_log_has_unknown_phases(replay_run):
    features = extract_features(replay_run.events_path)
    assert (features.phases == -1).all() and not features.labelled


def test_concatenate_keeps_runs_apart():
    a, b = simulate_windows(n_windows=7, seed=1), simulate_windows(n_windows=5, seed=2)
    joined = WindowFeatures.concatenate([a, b])
    assert len(joined) == 12 and joined.run.tolist() == [0] * 7 + [1] * 5


def test_empty_log_is_refused(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("")
    with pytest.raises(InvalidInputError, match="no valid events"):
        fit("scored", log, progress=False)


def test_short_log_is_refused(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps({"ts": float(t), "node": "r0", "kind": "msg_rate_in", "value": 10.0}) + "\n"
                           for t in range(5)))
    with pytest.raises(InvalidInputError, match="warm up"):
        extract_features(log)


def test_unknown_event_kind_is_refused_with_its_line(replay_run, tmp_path):
    lines = replay_run.events_path.read_text().splitlines()
    lines.insert(3, json.dumps({"ts": 0.5, "node": "r1", "kind": "teleport", "value": 1.0}))
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedEventError, match="unknown kind 'teleport'.*allow_unknown_kind"):
        extract_features(log)
    # Asked to, the fit skips such events and reads the rest.
    assert len(extract_features(log, allow_unknown_kind=True)) == len(extract_features(replay_run.events_path))


def test_labels_outside_the_logs_time_range_are_refused(replay_run, tmp_path):
    label = dict(replay_run.labels[0], precursor_start=500.0, execution_start=520.0, end=540.0)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps([label]))
    with pytest.raises(InvalidInputError, match=r"spans \[500, 540\] s but the log covers \[.*another log"):
        extract_features(replay_run.events_path, path)


@pytest.mark.parametrize(("labels", "message"), [
    ([{"attack": "teleport", "precursor_start": 1, "execution_start": 2, "end": 3}], "known attacks are"),
    ([{"attack": "replay", "precursor_start": 30, "execution_start": 20, "end": 40}], "precursor_start <= execution_start"),
    ([{"attack": "replay", "precursor_start": "soon", "execution_start": 20, "end": 40}], "finite number"),
    ({"attack": "replay"}, "must be a list"),
])
def test_malformed_labels_are_refused(replay_run, labels, message):
    with pytest.raises(InvalidInputError, match=message):
        extract_features(replay_run.events_path, labels)


def test_labels_file_that_is_not_json(replay_run, tmp_path):
    path = tmp_path / "labels.json"
    path.write_text("[{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        extract_features(replay_run.events_path, path)


def test_netcdf_files_that_are_not_ours_are_refused(tmp_path):
    import xarray as xr

    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidInputError, match="not a NetCDF-4 file"):
        load_posterior(garbage)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"spread": (("chain", "draw"), np.ones((1, 3)))}).to_netcdf(foreign, engine="h5netcdf", group="posterior")
    with pytest.raises(InvalidInputError, match="not a bayes_defense posterior.*format attribute None"):
        load_posterior(foreign)
    classic = tmp_path / "classic.nc"
    xr.Dataset({"x": ("t", np.ones(3))}).to_netcdf(classic, engine="scipy")
    with pytest.raises(InvalidInputError, match="NetCDF-3"):
        load_posterior(classic)
    with pytest.raises(FileNotFoundError):
        load_posterior(tmp_path / "missing.nc")


def test_bad_arguments_are_refused():
    data = simulate_windows(n_windows=50, seed=0)
    with pytest.raises(InvalidInputError, match="method must be"):
        fit("scored", data, method="gibbs")
    with pytest.raises(InvalidInputError, match="model must be"):
        fit("cluster", data)
    with pytest.raises(InvalidInputError, match="num_samples"):
        fit("scored", data, num_samples=0)
    with pytest.raises(InvalidInputError, match="no incidents"):
        fit("scored")
