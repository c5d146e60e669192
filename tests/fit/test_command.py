"""``bayes-defense fit``: files in, posterior out, one-line errors."""

import json

import pytest

from bayes_defense.cli import main
from bayes_defense.fitting import load_posterior


def test_fit_command_writes_a_loadable_posterior_and_ppc(replay_run, tmp_path, capsys):
    out, figure = tmp_path / "posterior.nc", tmp_path / "ppc.png"
    status = main(["fit", str(replay_run.events_path), "--labels", str(replay_run.labels_path), "--out", str(out),
                   "--defender", "scored", "--steps", "150", "--samples", "40", "--ppc", str(figure), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert status in (0, 1) and (status == 0) == summary["diagnostics_ok"]
    assert summary["method"] == "svi" and summary["labelled"] and summary["events"] == replay_run.events
    assert {"r_hat_max", "ess_bulk_min", "ess_tail_min", "problems", "out", "ppc"} <= set(summary)
    assert load_posterior(out).info["windows"] == summary["windows"]
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_fit_command_updates_a_prior_posterior(replay_run, tmp_path, capsys):
    first, second = tmp_path / "a.nc", tmp_path / "b.nc"
    base = ["fit", str(replay_run.out_dir), "--defender", "scored", "--steps", "60", "--samples", "40", "--json"]
    main(base + ["--out", str(first)])
    capsys.readouterr()
    main(base + ["--out", str(second), "--prior", str(first)])
    assert json.loads(capsys.readouterr().out)["out"] == str(second)
    prior = load_posterior(second).info["prior"]
    # The stored prior is the first posterior moment-matched, not the default.
    assert prior["spread_scale"] != [0.3] * 8


@pytest.mark.parametrize(("arguments", "message"), [
    (["missing/events.jsonl"], "no such event log"),
    (["{run}", "--labels", "a.json", "--labels", "b.json"], "give one --labels per event log"),
    (["{run}", "--prior", "{labels}"], "not a NetCDF-4 file"),
    (["{events}", "--labels", "{bad_labels}"], "spans"),
])
def test_fit_command_bad_input_gives_one_line(replay_run, tmp_path, capsys, arguments, message):
    bad_labels = tmp_path / "labels.json"
    bad_labels.write_text(json.dumps([{"attack": "replay", "precursor_start": 900, "execution_start": 950,
                                       "end": 990}]))
    names = {"run": str(replay_run.out_dir), "labels": str(replay_run.labels_path),
             "events": str(replay_run.events_path), "bad_labels": str(bad_labels)}
    argv = ["fit", *(a.format(**names) for a in arguments), "--out", str(tmp_path / "p.nc"), "--defender", "scored",
            "--steps", "5"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bayes-defense fit: error:") and message in error and "\n" not in error


def _incident_table(path):
    import pandas as pd

    import bayes_defense as bd

    rows = [{**evidence, **seen} for attack in ("replay", "flooding")
            for evidence, seen in bd.models.sample_incidents(bd.models.cluster(4), attack, 20, seed=1)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fit_command_fits_the_cluster_model_to_incident_tables(tmp_path, capsys):
    from bayes_defense.fitting.cluster import ClusterPosterior

    table, out = _incident_table(tmp_path / "incidents.csv"), tmp_path / "cluster.nc"
    status = main(["fit", str(table), "--nodes", "4", "--steps", "40", "--samples", "30", "--out", str(out),
                   "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert status in (0, 1) and (status == 0) == summary["diagnostics_ok"]
    assert summary["model"] == "cluster(4)" and summary["rows"] == 40 and summary["out"] == str(out)
    posterior = load_posterior(out)
    assert isinstance(posterior, ClusterPosterior) and posterior.num_draws == 30
    # A cluster posterior is not a defender prior, and the reverse.
    assert main(["fit", str(table), "--prior", str(out), "--defender", "scored", "--out", str(tmp_path / "x.nc")]) == 2
    assert "cluster-model posterior" in capsys.readouterr().err
    assert main(["fit", str(table), "--nodes", "2", "--out", str(tmp_path / "y.nc")]) == 2
    assert "n_nodes must be from 4 to 100" in capsys.readouterr().err
