"""The fit of the model filter's signal model: signal and transition parameters from labelled event logs.

The windows are made by the defender's own code: the logs run through a
:class:`~bayes_defense.stream.model_filter.ModelDefender` (with the same
observation map), which records each window's
:class:`~bayes_defense.stream.signals.WindowSignals`; the likelihood the fit
reports is :func:`bayes_defense.stream.evidence.window_log_likelihood` on
those windows, the function the filter runs (an oracle test checks that the
two agree window by window).

Estimation (labelled windows). Each window of a labelled attack instance is
in its precursor or execution phase; the attacker's row is its replica (or
the victim's, for attacks from outside identities), and unattributed
evidence sits in the last row. For every signal:

- the benign rate ``b``: a Beta posterior of its on-fraction over benign
  windows, less the share the benign faults' priors explain
  (``1 - (1 - on) / (1 - fault share)``);
- an attack's effect: a Beta posterior of the on-fraction in the attack's
  windows at its rows, turned into the per-window noisy-OR weight over ``b``
  (``q = 1 - (1 - on) / (1 - b)``, clipped to [0, 1]); outcome effects from
  the execution windows alone. :meth:`SignalPosterior.cluster_parameters`
  gives them in the catalogue's incident-window terms for the cluster model;
- transitions: Beta posteriors of the labelled phase changes per window.

Each Beta has the prior's value as its mean and ``prior_strength``
pseudo-windows of weight (:data:`BASELINE_STRENGTH` for the benign rates); the posterior draws are independent (conjugate),
so no sampler diagnostics apply. Benign faults are not labelled and keep
their prior draws. Phases latent (no labels) are not fitted: the fit says so.

Posterior predictive check, per summary statistic (each signal's benign
on-fraction, each attack's on-fraction per signal): the observed count
against counts replicated from the posterior draws through the model's
noisy-OR; a statistic whose observed count lies outside the central 99.9 %
of its replicates fails, and the fit's ``problems`` name it
(``bayes-defense fit`` then exits 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.faults import FAULTS, OUTCOME_SIGNALS
from bayes_defense.models.registry import attack_spec, tracked_attacks
from bayes_defense.stream import evidence
from bayes_defense.stream.signals import SIGNALS, WindowSignals

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PPC_TAIL", "BASELINE_STRENGTH", "RecordedWindows", "SignalPosterior", "record_windows",
           "window_phases", "window_log_likelihoods", "fit_signal_model", "predictive_check", "posterior_from_groups"]

FORMAT_NAME = "bayes_defense.signal_posterior"
FORMAT_VERSION = "1.0"
#: Two-sided tail of the posterior predictive check: outside the central 99.9 % fails.
PPC_TAIL = 0.0005
#: Pseudo-windows of the benign rates' prior. The indicators are thresholded at the 1 % tail of
#: benign windows, so their benign rate is known to be near 0.01 before any data; a short log
#: without a single benign "on" must not make it 0 (one later window would then look damning).
BASELINE_STRENGTH = 200.0


@dataclass
class RecordedWindows:
    """The windows of a log as the defender saw them: signals and the time each window ends."""

    windows: list
    ends: np.ndarray


def _events(data: Any) -> Iterable[Any]:
    if isinstance(data, (str, Path)):
        from bayes_defense.stream.io import read_events

        return read_events(data)
    return data


def record_windows(data: Any, *, observation_map: Any = None, window: float = 1.0) -> RecordedWindows:
    """Run a log through the model filter's own evidence code and keep each window's signals.

    Parameters
    ----------
    data : path or iterable of events
    observation_map : ObservationMap, path or name, optional
    window : float
        Seconds per window.

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> rec = record_windows([Event(float(t), "r0", "duplicate_messages", 0.0, {}) for t in range(1, 6)])
    >>> len(rec.windows), rec.ends.tolist()
    (5, [1.0, 2.0, 3.0, 4.0, 5.0])
    """
    from bayes_defense.stream.model_filter import ModelDefender

    defender = ModelDefender(ensemble=1, planner=None, observation_map=observation_map, window=window,
                             clock_confirm=1)
    defender.record = []
    defender.observe_batch(_events(data))
    defender.flush()
    windows = [w for _, w in defender.record]
    return RecordedWindows(windows, np.array([end for end, _ in defender.record], dtype=np.float64))


def window_phases(ends: np.ndarray, labels: Sequence[Mapping[str, Any]], attacks: Sequence[str],
                  window: float = 1.0) -> tuple[np.ndarray, list]:
    """Per window and attack, its labelled stage (0 benign, 2 precursor, 3 execution) and attacker nodes.

    A window ``(end - window, end]`` is in a phase when its middle is.

    Examples
    --------
    >>> stages, nodes = window_phases(np.arange(1.0, 6.0), [{"attack": "replay", "nodes": ["r1"],
    ...     "precursor_start": 1.0, "execution_start": 3.0, "end": 4.0}], ["replay"])
    >>> stages[:, 0].tolist()
    [0, 2, 2, 3, 0]
    """
    middle = np.asarray(ends, dtype=np.float64) - window / 2.0
    stages = np.zeros((middle.size, len(attacks)), dtype=np.int64)
    nodes: list = [dict() for _ in range(len(attacks))]
    for label in labels:
        name = label.get("attack")
        if name not in attacks:
            raise InvalidInputError(f"label names attack {name!r}, which the model does not track "
                                    f"({', '.join(attacks)})")
        i = list(attacks).index(name)
        start, execution, end = (float(label[k]) for k in ("precursor_start", "execution_start", "end"))
        precursor = (middle >= start) & (middle < execution)
        executing = (middle >= execution) & (middle < end)
        stages[precursor, i] = 2
        stages[executing, i] = 3
        who = tuple(label.get("nodes", ())) + tuple(label.get("victims", ()))
        for w in np.flatnonzero(precursor | executing).tolist():
            nodes[i][w] = who
    return stages, nodes


def _beta(rng, on: float, total: float, mean: float, strength: float, draws: int) -> np.ndarray:
    mean = min(max(mean, 1e-6), 1 - 1e-6)
    return rng.beta(on + strength * mean, total - on + strength * (1.0 - mean), draws)


def _fault_share(values: Mapping[str, np.ndarray], signal: str, replicas: float, attributed: bool) -> np.ndarray:
    """P(signal on from benign faults alone) at a replica row (or the unattributed row), per draw."""
    keep = np.ones_like(next(iter(values.values())))
    none = np.ones_like(keep)
    mix = np.zeros_like(keep)
    for name, fault in FAULTS.items():
        prior = values[f"fault.{name}.prior"]
        none = none - prior
        at_node = values.get(f"fault.{name}.{signal}", 0.0) if signal in fault.at_node else 0.0
        everywhere = values.get(f"fault.{name}.{signal}", 0.0) if signal in fault.cluster else 0.0
        share_at = (1.0 / max(replicas, 1.0)) if attributed else 1.0
        p = 1.0 - (1.0 - everywhere) * (1.0 - share_at * at_node)
        mix = mix + prior * p
    del keep
    return np.clip(mix, 0.0, 1.0)


@dataclass
class SignalPosterior:
    """Draws of the signal model's parameters from :func:`fit_signal_model`.

    Attributes
    ----------
    draws : dict
        ``{parameter name: float64 array (num_draws,)}``.
    attacks : tuple of str
    info : dict
        Windows, labelled windows, the observation map's source, the log likelihood per window.
    ppc : list of dict
        One entry per summary statistic: ``{statistic, observed, lower, upper, p_value, ok}``.
    problems : list of str
        Failed checks (empty when the fit is to be trusted).
    """

    draws: dict
    attacks: tuple
    info: dict = field(default_factory=dict)
    ppc: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    method: str = "conjugate"
    level: float = 0.9

    @property
    def num_draws(self) -> int:
        """Number of posterior draws."""
        return int(next(iter(self.draws.values())).shape[0])

    @property
    def diagnostics_ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems

    def signal_parameters(self, draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``draws`` of the parameters (without replacement when there are enough), for the model filter.

        Examples
        --------
        >>> post = SignalPosterior({"telemetry.msg_rate.baseline": np.linspace(0.01, 0.02, 5)}, tracked_attacks())
        >>> post.signal_parameters(3, seed=0)["telemetry.msg_rate.baseline"].shape
        (3,)
        """
        rng = np.random.default_rng(seed)
        index = rng.choice(self.num_draws, size=draws, replace=draws > self.num_draws)
        return {name: array[index] for name, array in self.draws.items()}

    def cluster_parameters(self) -> dict[str, np.ndarray]:
        """The draws in the cluster SCM's names (per incident window), for ``bd.models.cluster(n, parameters=...)``."""
        return evidence.incident_parameters(self.draws, self.attacks)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: draws, windows, the PPC's failures, problems."""
        return {"model": "defender (signal model)", "method": self.method, "draws": self.num_draws,
                "windows": self.info.get("windows"), "labelled_windows": self.info.get("labelled_windows"),
                "ppc_statistics": len(self.ppc), "ppc_failed": [p["statistic"] for p in self.ppc if not p["ok"]],
                "diagnostics_ok": self.diagnostics_ok, "problems": list(self.problems)}

    def to_inference_data(self):
        """ArviZ data: posterior draws (one chain), observed and replicated PPC statistics."""
        from bayes_defense.fitting import inference_data

        names = sorted(self.draws)
        theta = np.stack([self.draws[n] for n in names], -1)[None]
        observed = np.array([p["observed"] for p in self.ppc], dtype=np.float64)
        groups = {"posterior": {"theta": theta}, "observed_data": {"fraction": observed}}
        attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": self.method,
                 "attacks": json.dumps(list(self.attacks)), "info": json.dumps(self.info),
                 "ppc": json.dumps(self.ppc), "problems": json.dumps(self.problems), "level": self.level}
        return inference_data.from_groups(groups, dims={"theta": ["parameter"], "fraction": ["statistic"]},
                                          coords={"parameter": names,
                                                  "statistic": [p["statistic"] for p in self.ppc]}, attrs=attrs)

    def save(self, path: Any) -> Path:
        """Write the posterior as NetCDF-4 (read back by :func:`bayes_defense.load_posterior`)."""
        from bayes_defense.fitting.storage import save_posterior

        return save_posterior(self, path)


def posterior_from_groups(path: Path, groups: Mapping[str, Any]) -> SignalPosterior:
    """Rebuild a :class:`SignalPosterior` from a file's groups; refuse another major version or bad arrays."""
    posterior = groups["posterior"]
    version = str(posterior.attrs.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise InvalidInputError(f"{path.name} has signal posterior format version {version!r}; this release reads "
                                f"{FORMAT_VERSION.split('.')[0]}.x; refit with `bayes-defense fit`")
    try:
        attacks = tuple(json.loads(str(posterior.attrs["attacks"])))
        info = json.loads(str(posterior.attrs.get("info", "{}")))
        ppc = json.loads(str(posterior.attrs.get("ppc", "[]")))
        problems = json.loads(str(posterior.attrs.get("problems", "[]")))
    except (KeyError, ValueError, RecursionError):
        raise InvalidInputError(f"{path.name}: the signal posterior's metadata is missing or not JSON; the file is "
                                "damaged") from None
    missing = [a for a in attacks if a not in tracked_attacks()]
    if missing:
        raise InvalidInputError(f"{path.name} was fitted with attack(s) {', '.join(missing)} that are not tracked now; "
                                "add them with bayes_defense.models.registry.add_attack before loading")
    theta = np.asarray(posterior["theta"].values, dtype=np.float64)
    names = [str(x) for x in posterior["theta"].coords["parameter"].values]
    if theta.ndim != 3 or theta.shape[-1] != len(names) or not np.all(np.isfinite(theta)):
        raise InvalidInputError(f"{path.name}: posterior 'theta' must be finite with dims (chain, draw, parameter)")
    draws = {name: theta[..., j].reshape(-1) for j, name in enumerate(names)}
    evidence.check_values(draws, attacks)
    return SignalPosterior(draws, attacks, info, ppc, problems, str(posterior.attrs.get("method", "conjugate")))


def _attack_rows(window: WindowSignals, who: tuple) -> list[int]:
    rows = [window.replicas.index(n) for n in who if n in window.replicas]
    return rows + [len(window.replicas)]


def fit_signal_model(data: Any, *, labels: Any = None, observation_map: Any = None, window: float = 1.0,
                     num_samples: int = 400, prior_strength: float = 2.0, seed: int = 0,
                     progress: bool = False, check: bool = True) -> SignalPosterior:
    """Fit the signal and transition parameters of the model filter to labelled event logs.

    Parameters
    ----------
    data : path, iterable of events, or a list of ``(events, labels)`` pairs
        One log (with ``labels``) or several.
    labels : path or list of dict, optional
        ``labels.json`` of the single log. Required: phases latent are not fitted.
    observation_map : ObservationMap, path or name, optional
        The map the defender will run with.
    window : float
        Seconds per window.
    num_samples : int
        Posterior draws.
    prior_strength : float
        Pseudo-windows of weight of the prior in each Beta.
    seed : int
    progress, check : bool
        ``check`` runs the posterior predictive check and records failures in ``problems``.

    Returns
    -------
    SignalPosterior

    Examples
    --------
    >>> from bayes_defense.sim import Simulation, random_scenario
    >>> sim = Simulation(random_scenario(5, nodes=4, duration=200, attacks=["replay"], faults=[]))
    >>> post = fit_signal_model(list(sim.events()), labels=sim.labels, num_samples=50)
    >>> post.num_draws, post.info["labelled_windows"] > 0
    (50, True)
    """
    del progress
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise InvalidInputError(f"num_samples must be a whole number >= 2; got {num_samples!r}")
    if not (isinstance(prior_strength, (int, float)) and prior_strength > 0):
        raise InvalidInputError(f"prior_strength must be a number > 0; got {prior_strength!r}")
    if isinstance(data, list) and data and isinstance(data[0], tuple) and len(data[0]) == 2:
        runs = data
    else:
        if labels is None:
            raise InvalidInputError("the signal model is fitted from labelled logs: give labels= (labels.json); "
                                    "fitting with phases latent is not implemented")
        runs = [(data, labels)]
    attacks = tracked_attacks()
    rng = np.random.default_rng(seed)
    prior = evidence.parameter_names(attacks)
    prior_draws = evidence.prior_draws(num_samples, seed, attacks)
    n_signals = len(SIGNALS)
    benign_on = np.zeros(n_signals)
    benign_obs = np.zeros(n_signals)
    attack_on = np.zeros((len(attacks), n_signals, 2))        # precursor-or-execution, execution only
    attack_obs = np.zeros((len(attacks), n_signals, 2))
    phase_windows = np.zeros((len(attacks), 4))
    phase_changes = np.zeros((len(attacks), 3))               # benign->precursor, precursor->execution, execution->end
    total_windows = labelled_windows = 0
    replica_counts = []
    recorded_runs = []
    for events, run_labels in runs:
        if isinstance(run_labels, (str, Path)):
            run_labels = json.loads(Path(run_labels).read_text(encoding="utf-8"))
        recorded = record_windows(events, observation_map=observation_map, window=window)
        stages, nodes = window_phases(recorded.ends, run_labels, attacks, window)
        recorded_runs.append((recorded, stages))
        total_windows += len(recorded.windows)
        for w, win in enumerate(recorded.windows):
            x = win.values
            observed = ~np.isnan(x)
            replica_counts.append(len(win.replicas))
            if not stages[w].any():
                benign_on += np.nansum(x, 0)
                benign_obs += observed.sum(0)
                continue
            labelled_windows += 1
            for i in np.flatnonzero(stages[w]).tolist():
                rows = _attack_rows(win, nodes[i].get(w, ()))
                spec = attack_spec(attacks[i])
                for signal in {**spec.attacker_side, **spec.cluster_side, **dict.fromkeys(spec.impacts)}:
                    s = SIGNALS.index(signal)
                    use = rows if signal in spec.attacker_side else list(range(x.shape[0]))
                    values = x[use, s]
                    seen = ~np.isnan(values)
                    attack_on[i, s, 0] += values[seen].sum()
                    attack_obs[i, s, 0] += seen.sum()
                    if stages[w, i] == 3:
                        attack_on[i, s, 1] += values[seen].sum()
                        attack_obs[i, s, 1] += seen.sum()
        for i in range(len(attacks)):
            column = stages[:, i]
            for k in (0, 2, 3):
                phase_windows[i, k] += (column == k).sum()
            change = column[1:] != column[:-1]
            phase_changes[i, 0] += ((column[:-1] == 0) & (column[1:] == 2)).sum()
            phase_changes[i, 1] += ((column[:-1] == 2) & (column[1:] == 3)).sum()
            phase_changes[i, 2] += ((column[:-1] == 3) & change).sum()
    if labelled_windows == 0:
        raise InvalidInputError("the labels mark no window of the log as an attack's precursor or execution; "
                                "check that labels.json belongs to this log")
    replicas = float(np.mean(replica_counts)) if replica_counts else 1.0
    draws = dict(prior_draws)
    # Transitions first: the effects' time slicing reads precursor_to_execution.
    for i, attack in enumerate(attacks):
        for key, changes, stay in (("benign_to_precursor", phase_changes[i, 0], phase_windows[i, 0]),
                                   ("precursor_to_execution", phase_changes[i, 1], phase_windows[i, 2]),
                                   ("execution_to_benign", phase_changes[i, 2], phase_windows[i, 3])):
            if stay > 0:
                draws[f"{attack}.{key}"] = _beta(rng, changes, stay, prior[f"{attack}.{key}"], prior_strength,
                                                 num_samples)
        total = draws[f"{attack}.precursor_to_execution"] + draws[f"{attack}.precursor_to_benign"]
        draws[f"{attack}.precursor_to_benign"] = np.where(total >= 0.999, draws[f"{attack}.precursor_to_benign"]
                                                          * 0.5, draws[f"{attack}.precursor_to_benign"])
    benign_rate = {}
    for s, signal in enumerate(SIGNALS):
        name = evidence._baseline_name(signal)
        on_fraction = _beta(rng, benign_on[s], benign_obs[s], prior[name], BASELINE_STRENGTH, num_samples)
        faults = _fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
        draws[name] = np.clip(1.0 - (1.0 - on_fraction) / (1.0 - faults), 1e-5, 1.0)
        benign_rate[signal] = 1.0 - (1.0 - draws[name]) * (1.0 - faults)
    for i, attack in enumerate(attacks):
        spec = attack_spec(attack)
        for signal in {**spec.attacker_side, **spec.cluster_side, **dict.fromkeys(spec.impacts)}:
            s = SIGNALS.index(signal)
            column = 1 if signal in spec.impacts else 0
            if attack_obs[i, s, column] == 0:
                continue
            base = benign_rate[signal]
            name = evidence._effect_name(signal, attack)
            mean = 1.0 - (1.0 - float(np.mean(base))) * (1.0 - prior[name])
            on_fraction = _beta(rng, attack_on[i, s, column], attack_obs[i, s, column], mean, prior_strength,
                                num_samples)
            draws[name] = np.clip(1.0 - (1.0 - on_fraction) / (1.0 - base), 0.0, 1.0)
    draws = evidence.check_values(draws, attacks)
    posterior = SignalPosterior(draws, attacks, {"windows": total_windows, "labelled_windows": labelled_windows,
                                                 "runs": len(runs), "replicas": replicas,
                                                 "observation_map": getattr(observation_map, "source",
                                                                            observation_map or "default")})
    posterior.info["log_likelihood_per_window"] = float(np.mean([
        _labelled_log_likelihood(posterior.signal_parameters(8, seed), recorded, stages, window)
        / max(len(recorded.windows), 1)
        for recorded, stages in recorded_runs]))
    if check:
        posterior.ppc = predictive_check(posterior, benign_on, benign_obs, attack_on, attack_obs, replicas, seed)
        posterior.problems = [f"posterior predictive check failed for {p['statistic']}: observed {p['observed']:.4g}, "
                              f"replicated 99.9% interval [{p['lower']:.4g}, {p['upper']:.4g}]"
                              for p in posterior.ppc if not p["ok"]]
    return posterior


def window_log_likelihoods(values: Mapping[str, np.ndarray], recorded: RecordedWindows,
                           window: float = 1.0) -> np.ndarray:
    """``log P(window's signals | attack, stage)`` for every recorded window: ``(W, D, A, 4)``.

    The same computation the filter runs window by window
    (:class:`bayes_defense.stream.evidence.FaultFilter` over
    :func:`~bayes_defense.stream.evidence.window_log_likelihood`).
    """
    model = evidence.signal_tables(values)
    faults = evidence.FaultFilter(evidence.check_values(values), window)
    return np.stack([faults.step(model, win)[0] for win in recorded.windows]) if recorded.windows else np.zeros(
        (0, model.draws, len(model.attacks), 4))


def _labelled_log_likelihood(values: Mapping[str, np.ndarray], recorded: RecordedWindows, stages: np.ndarray,
                             window: float = 1.0) -> float:
    """Sum over windows of the log likelihood of each window given its labelled stage (draw mean).

    The stage of the first attack under way in a window is used (one attack at a time, as the filter assumes).
    """
    ll = window_log_likelihoods(values, recorded, window)
    total = 0.0
    for w in range(ll.shape[0]):
        active = np.flatnonzero(stages[w])
        i, k = (int(active[0]), int(stages[w, active[0]])) if active.size else (0, 0)
        total += float(ll[w, :, i, k].mean())
    return total


def predictive_check(posterior: SignalPosterior, benign_on, benign_obs, attack_on, attack_obs, replicas: float,
                     seed: int = 0) -> list[dict]:
    """The numeric posterior predictive check, one entry per summary statistic (module docstring)."""
    rng = np.random.default_rng(seed + 1)
    draws = posterior.draws
    out = []

    def judge(name: str, on: float, total: float, rate: np.ndarray) -> None:
        replicated = rng.binomial(int(total), np.clip(rate, 0.0, 1.0)) / total
        observed = on / total
        lower, upper = np.quantile(replicated, [PPC_TAIL, 1.0 - PPC_TAIL])
        p_value = float(min(1.0, 2.0 * min((replicated >= observed).mean(), (replicated <= observed).mean())))
        out.append({"statistic": name, "observed": float(observed), "lower": float(lower), "upper": float(upper),
                    "p_value": p_value, "ok": bool(lower <= observed <= upper)})

    for s, signal in enumerate(SIGNALS):
        if benign_obs[s] == 0:
            continue
        faults = _fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
        rate = 1.0 - (1.0 - draws[evidence._baseline_name(signal)]) * (1.0 - faults)
        judge(f"benign on-fraction of {signal}", benign_on[s], benign_obs[s], rate)
    for i, attack in enumerate(posterior.attacks):
        spec = attack_spec(attack)
        for signal in {**spec.attacker_side, **spec.cluster_side, **dict.fromkeys(spec.impacts)}:
            s = SIGNALS.index(signal)
            column = 1 if signal in spec.impacts else 0
            if attack_obs[i, s, column] == 0:
                continue
            faults = _fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
            base = 1.0 - (1.0 - draws[evidence._baseline_name(signal)]) * (1.0 - faults)
            rate = 1.0 - (1.0 - base) * (1.0 - draws[evidence._effect_name(signal, attack)])
            judge(f"{attack} on-fraction of {signal}", attack_on[i, s, column], attack_obs[i, s, column], rate)
    return out

