"""The fit of the model filter's signal model: signal, transition and fault parameters from event logs.

The windows are made by the defender's own code: the logs run through a
:class:`~bayes_defense.stream.model_filter.ModelDefender` (with the same
observation map), which records each window's
:class:`~bayes_defense.stream.signals.WindowSignals`; the likelihood the fit
reports is :func:`bayes_defense.stream.evidence.window_log_likelihood` on
those windows, the function the filter runs (an oracle test checks that the
two agree window by window).

The estimation from the windows' counts (sufficient statistics, the conjugate Betas, the posterior
predictive check) is :mod:`bayes_defense.fitting.signal_posterior`; this module makes the windows,
counts them with their labels, and fits phases latent.

Phases latent (a log without labels): expectation-maximisation over the
phase chain. With the current parameters (the Beta posterior means), the
windows' likelihoods under every attack and stage (the filter's) and the
chain of one attack at a time (benign, or one attack in its pattern,
precursor or execution stage; the filter's transition matrices) give by
forward-backward smoothing each window's stage probabilities and the
expected phase changes; the attacker's row is weighted by its posterior
given the window and stage. These soft counts replace the labels' 0/1 in the
same counting, the Beta means are recomputed, and the two steps repeat until
the expected windows in every attack's stages and the expected phase changes
move by less than ``tolerance`` windows between iterations (a fixed point of
the sufficient statistics). The posterior is then drawn from the converged
soft counts; a fit that reaches ``max_iterations`` first says so in
``problems``. An unlabelled log's transitions are not fitted (they keep the
prior, or what labelled logs fitted with it say): its phase changes are a few
events timed only by the signals, and a chain whose stays follow its soft
counts let an attack's chain absorb long benign stretches (measured in
docs/learning.md). Labelled and unlabelled logs can be fitted together (their
counts add). What the latent fit recovers depends on how fully the catalogue
names the telemetry an attack makes: docs/learning.md has the measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting.signal_posterior import (
    BASELINE_STRENGTH,
    FORMAT_NAME,
    FORMAT_VERSION,
    PPC_TAIL,
    SignalPosterior,
    SignalStatistics,
    attack_rows,
    check_fit_settings,
    count_labelled_windows,
    count_transitions,
    count_windows,
    point_estimate,
    posterior_from_groups,
    posterior_from_statistics,
    predictive_check,
)
from bayes_defense.models.faults import FAULTS
from bayes_defense.models.registry import tracked_attacks
from bayes_defense.stream import evidence

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PPC_TAIL", "BASELINE_STRENGTH", "RecordedWindows", "SignalPosterior",
           "SignalStatistics", "record_windows", "window_phases", "check_fault_labels", "window_faults",
           "window_primaries", "count_windows", "count_transitions", "posterior_from_statistics", "window_log_likelihoods",
           "attack_rows", "count_labelled_windows", "fit_signal_model", "predictive_check", "posterior_from_groups"]
_FAULT_NAMES = tuple(FAULTS)


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

    # A window's signals do not depend on the parameters; the prior's one draw is the cheapest filter to run.
    defender = ModelDefender("prior", ensemble=1, planner=None, observation_map=observation_map, window=window,
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


def check_fault_labels(records: Any, source: str = "fault labels") -> list[dict[str, Any]]:
    """Validate benign-fault labels in the simulator's ``faults.json`` form; return them as a list of dicts.

    Each record is ``{"fault": name, "node": replica or null, "nodes": [replicas] or null, "start": seconds,
    "end": seconds, ...}`` (``magnitude`` and other fields are allowed and ignored), ``fault`` one of
    :data:`bayes_defense.models.faults.FAULTS` and ``start <= end``.

    Examples
    --------
    >>> check_fault_labels([{"fault": "crash", "node": "r2", "start": 10.0, "end": 15.0}])[0]["fault"]
    'crash'
    >>> check_fault_labels([{"fault": "meteor", "start": 1, "end": 2}])
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: fault labels record 0: fault 'meteor' is not a benign fault of the model (crash, partition, slow, slow_primary, load_spike, jitter, restart)
    """
    records, source = _json_list(records, source, "the list of fault records that the simulator writes as "
                                 "faults.json")
    out = []
    for k, record in enumerate(records):
        where = f"{source} record {k}"
        if not isinstance(record, Mapping):
            raise InvalidInputError(f"{where} must be an object {{fault, node, nodes, start, end}}; got "
                                    f"{type(record).__name__}")
        name = record.get("fault")
        if name not in FAULTS:
            raise InvalidInputError(f"{where}: fault {name!r} is not a benign fault of the model "
                                    f"({', '.join(_FAULT_NAMES)})")
        times = []
        for key in ("start", "end"):
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"{where}: {key!r} must be a finite number of seconds; got {value!r}")
            times.append(float(value))
        if times[1] < times[0]:
            raise InvalidInputError(f"{where}: end {times[1]} is before start {times[0]}")
        node, nodes = record.get("node"), record.get("nodes")
        if node is not None and not isinstance(node, str):
            raise InvalidInputError(f"{where}: 'node' must be a node name or null; got {node!r}")
        if nodes is not None and not (isinstance(nodes, list) and all(isinstance(n, str) for n in nodes)):
            raise InvalidInputError(f"{where}: 'nodes' must be a list of node names or null; got {nodes!r}")
        out.append({"fault": name, "node": node, "nodes": None if nodes is None else list(nodes),
                    "start": times[0], "end": times[1]})
    return out


def window_faults(ends: np.ndarray, records: Any, window: float = 1.0,
                  primaries: Sequence[str | None] | None = None) -> list[tuple]:
    """Per window, the labelled faults under way: a tuple of ``(fault index, node names)``, empty when none.

    A window is under a fault when its middle lies in ``[start, end)``. The
    simulator's ``restart`` record spans the replica's downtime (it is
    silent, as after a crash: the model's ``crash``), and the model's
    ``restart`` is its return: the :attr:`~bayes_defense.models.faults.Fault.duration`
    after ``end``, when it logs the restart and resends old messages
    (docs/log-schema.md, "Benign faults"). A ``slow`` record is the model's
    ``slow_primary`` in the windows where its replica is the primary
    (``primaries``: the primary's name per window, as the log names it;
    None where unknown, and then it stays ``slow``). Node names are
    ``nodes``, else ``node``; an empty tuple means the record names no replica.

    Examples
    --------
    >>> marks = window_faults(np.arange(1.0, 9.0), [{"fault": "restart", "node": "r1", "start": 1.0, "end": 3.0}])
    >>> [[(list(FAULTS)[g], nodes) for g, nodes in m] for m in marks][:4]
    [[], [('crash', ('r1',))], [('crash', ('r1',))], [('restart', ('r1',))]]
    >>> marks = window_faults(np.arange(1.0, 4.0), [{"fault": "slow", "node": "r0", "start": 0.0, "end": 3.0}],
    ...                       primaries=["r0", "r0", "r1"])
    >>> [list(FAULTS)[m[0][0]] for m in marks]
    ['slow_primary', 'slow_primary', 'slow']
    """
    middle = np.asarray(ends, dtype=np.float64) - window / 2.0
    if primaries is not None and len(primaries) != middle.size:
        raise InvalidInputError(f"primaries must name one primary (or None) per window: {middle.size} windows, "
                                f"{len(primaries)} names")
    marks: list[list] = [[] for _ in range(middle.size)]
    for record in check_fault_labels(records):
        names = tuple(record["nodes"]) if record["nodes"] else ((record["node"],) if record["node"] else ())
        spans = [(record["fault"], record["start"], record["end"])]
        if record["fault"] == "restart":
            back = record["end"] + FAULTS["restart"].duration
            spans = [("crash", record["start"], record["end"]), ("restart", record["end"], back)]
        for name, start, end in spans:
            g = _FAULT_NAMES.index(name)
            for w in np.flatnonzero((middle >= start) & (middle < end)).tolist():
                if name == "slow" and primaries is not None and primaries[w] is not None and primaries[w] in names:
                    marks[w].append((_FAULT_NAMES.index("slow_primary"), names))
                else:
                    marks[w].append((g, names))
    return [tuple(m) for m in marks]


def window_primaries(recorded: RecordedWindows) -> list[str | None]:
    """The primary's name in each recorded window (None where the log has not named one yet).

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> rec = record_windows([Event(0.5, "r0", "duplicate_messages", 0.0, {}),
    ...                       Event(1.5, "r1", "preprepare_interval", 0.1, {"primary": "r0"}),
    ...                       Event(2.5, "r1", "new_view", 1.0, {"primary": "r1"})])
    >>> window_primaries(rec)
    [None, 'r0', 'r1']
    """
    return [w.replicas[w.primary] if 0 <= w.primary < len(w.replicas) else None for w in recorded.windows]


def _runs(data: Any, labels: Any, faults: Any) -> list[tuple]:
    """``[(events, labels or None, fault labels or None)]`` from the fit's ``data`` argument."""
    if isinstance(data, list) and data and isinstance(data[0], tuple) and len(data[0]) in (2, 3):
        if labels is not None or faults is not None:
            raise InvalidInputError("give labels and fault labels inside each (events, labels, faults) tuple when "
                                    "fitting several logs, not as labels= / faults=")
        runs = []
        for k, run in enumerate(data):
            if not isinstance(run, tuple) or len(run) not in (2, 3):
                raise InvalidInputError(f"run {k}: expected a tuple (events, labels) or (events, labels, faults); "
                                        f"got {type(run).__name__}")
            runs.append((run[0], run[1], run[2] if len(run) == 3 else None))
        return runs
    return [(data, labels, faults)]


def _json_list(value: Any, what: str, expected: str) -> tuple[list, str]:
    """``(the list, where it came from)`` from a list or the path of a JSON file holding one; else a clear error."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path.name}: cannot read {what} ({type(error).__name__}); expected {expected}"
                                    ) from None
        what = path.name
    if not isinstance(value, list):
        raise InvalidInputError(f"{what} must be {expected}; got {type(value).__name__}")
    return value, what


def _read_labels(labels: Any) -> list:
    return _json_list(labels, "labels", "labels.json, a JSON list of {attack, nodes, precursor_start, "
                      "execution_start, end}")[0]


def fit_signal_model(data: Any, *, labels: Any = None, faults: Any = None, observation_map: Any = None,
                     window: float = 1.0, num_samples: int = 400, prior_strength: float = 2.0, seed: int = 0,
                     progress: bool = False, check: bool = True, max_iterations: int = 50,
                     tolerance: float = 0.01) -> SignalPosterior:
    """Fit the signal, transition and fault parameters of the model filter to event logs.

    Parameters
    ----------
    data : path, iterable of events, or a list of ``(events, labels)`` or ``(events, labels, faults)`` tuples
        One log (with ``labels`` and ``faults``) or several; a log whose labels are None is fitted with its
        phases latent (module docstring).
    labels : path or list of dict, optional
        ``labels.json`` of the single log; None fits its phases latent.
    faults : path or list of dict, optional
        ``faults.json`` of the single log (:func:`check_fault_labels`); without it the faults keep their prior.
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
    max_iterations, tolerance
        The latent fit's limit and convergence criterion (expected windows per stage and expected phase
        changes move by less than ``tolerance`` between iterations).

    Returns
    -------
    SignalPosterior

    Examples
    --------
    >>> from bayes_defense.sim import Simulation, random_scenario
    >>> sim = Simulation(random_scenario(5, nodes=4, duration=200, attacks=["replay"], faults=["crash"]))
    >>> post = fit_signal_model(list(sim.events()), labels=sim.labels, faults=sim.faults, num_samples=50)
    >>> post.num_draws, post.info["labelled_windows"] > 0, post.summary()["faults"]
    (50, True, 'fitted from fault labels: crash')
    """
    del progress
    check_fit_settings(num_samples, prior_strength)
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise InvalidInputError(f"max_iterations must be a whole number >= 1; got {max_iterations!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise InvalidInputError(f"tolerance must be a number > 0 (windows); got {tolerance!r}")
    attacks = tracked_attacks()
    hard = SignalStatistics.zeros(attacks)
    labelled, latent = [], []
    for events, run_labels, run_faults in _runs(data, labels, faults):
        recorded = record_windows(events, observation_map=observation_map, window=window)
        marks = None if run_faults is None else window_faults(recorded.ends, run_faults, window,
                                                              window_primaries(recorded))
        hard.runs += 1
        if run_labels is None:
            latent.append((recorded, marks))
            continue
        stages, nodes = window_phases(recorded.ends, _read_labels(run_labels), attacks, window)
        before = hard.labelled_windows
        count_labelled_windows(hard, recorded.windows, stages,
                               [[n.get(w, ()) for n in nodes] for w in range(len(recorded.windows))], marks)
        if hard.labelled_windows == before:
            raise InvalidInputError("the labels mark no window of the log as an attack's precursor or execution; "
                                    "check that labels.json belongs to this log")
        count_transitions(hard, stages)
        labelled.append((recorded, stages))
    info: dict[str, Any] = {"observation_map": getattr(observation_map, "source", observation_map or "default")}
    statistics, method = hard, "conjugate"
    log_likelihoods = []
    if latent:
        statistics, em, log_likelihoods = _expectation_maximisation(hard, latent, window, float(prior_strength),
                                                                    max_iterations, float(tolerance))
        info["em"] = em
        method = "conjugate-em"
    posterior = posterior_from_statistics(statistics, num_samples=num_samples, prior_strength=prior_strength,
                                          seed=seed, check=check, info=info, method=method)
    posterior.info["settings"]["window"] = float(window)
    values = posterior.signal_parameters(8, seed)
    log_likelihoods += [_labelled_log_likelihood(values, recorded, stages, window) / max(len(recorded.windows), 1)
                        for recorded, stages in labelled]
    posterior.info["log_likelihood_per_window"] = float(np.mean(log_likelihoods))
    if latent and not posterior.info["em"]["converged"]:
        em = posterior.info["em"]
        moved = "an unknown amount" if em["change"] is None else f"{em['change']:.3g} windows"
        posterior.problems.append(f"the latent-phase fit did not converge in {em['iterations']} iterations: the "
                                  f"expected stage windows still moved by {moved} (tolerance {em['tolerance']:g}); "
                                  "raise max_iterations")
    return posterior


def _joint_chain(values: Mapping[str, np.ndarray], attacks: tuple, window: float) -> np.ndarray:
    """The chain of one attack at a time, ``(1 + 3 A, 1 + 3 A)``: none, then each attack's pattern, precursor, execution.

    Each attack's own 4-stage matrix is the filter's
    (:func:`bayes_defense.stream.model_filter.phase_transitions`); from "none"
    each attack starts at its own rate, and an attack that returns to benign
    returns the chain to "none".
    """
    from bayes_defense.stream.model_filter import phase_transitions

    per_attack = np.exp(phase_transitions(values, attacks, window)[:, 0])
    size = 1 + 3 * len(attacks)
    matrix = np.zeros((size, size))
    for i in range(len(attacks)):
        index = 1 + 3 * i + np.arange(3)
        chain = per_attack[i]
        matrix[0, index] = chain[0, 1:]
        matrix[index, 0] = chain[1:, 0]
        matrix[np.ix_(index, index)] = chain[1:, 1:]
    matrix[0, 0] = 1.0 - matrix[0, 1:].sum()
    if matrix[0, 0] <= 0.0:
        raise InvalidInputError("the attacks' start rates (benign_to_precursor) sum to 1 or more; the latent fit "
                                "needs them below 1")
    return matrix


def _smooth(values: Mapping[str, np.ndarray], recorded: RecordedWindows, window: float) -> tuple:
    """Forward-backward over the joint chain: ``(stage probabilities (W, 1 + 3 A), expected changes, log
    likelihood, attacker positions per window)`` under point ``values``."""
    attacks = tracked_attacks()
    model = evidence.signal_tables(values, attacks)
    faults = evidence.FaultFilter(values, window)
    steps = [faults.step(model, win) for win in recorded.windows]
    transition = _joint_chain(values, attacks, window)
    count, size = len(steps), transition.shape[0]
    log_emission = np.empty((count, size))
    for w, (ll, _, _) in enumerate(steps):
        log_emission[w, 0] = ll[0, 0, 0]
        log_emission[w, 1:] = ll[0, :, 1:].reshape(-1)
    peak = log_emission.max(1, keepdims=True)
    emission = np.exp(log_emission - peak)
    start = np.full(size, 1e-4) * (transition[0] > 0)
    start[0] = 1.0
    start /= start.sum()
    forward = np.empty((count, size))
    scale = np.empty(count)
    current = start
    for w in range(count):
        current = (current @ transition if w else current) * emission[w]
        scale[w] = current.sum()
        current = current / scale[w]
        forward[w] = current
    backward = np.ones((count, size))
    for w in range(count - 2, -1, -1):
        backward[w] = transition @ (emission[w + 1] * backward[w + 1]) / scale[w + 1]
    occupancy = forward * backward
    occupancy /= occupancy.sum(1, keepdims=True)
    if count > 1:
        pairs = transition * (forward[:-1].T @ (emission[1:] * backward[1:] / scale[1:, None]))
    else:
        pairs = np.zeros((size, size))
    log_likelihood = float(np.log(scale).sum() + peak.sum())
    positions = [np.exp(by_position[0]) for _, by_position, _ in steps]        # (A, 4, R + 1) per window
    return occupancy, pairs, log_likelihood, positions


def _count_latent(statistics: SignalStatistics, recorded: RecordedWindows, marks: list | None,
                  occupancy: np.ndarray, pairs: np.ndarray, positions: list) -> np.ndarray:
    """Soft counts of one unlabelled log; returns its occupancy summary (A, 5) for the convergence test."""
    attacks = statistics.attacks
    stage = occupancy[:, 1:].reshape(len(recorded.windows), len(attacks), 3)     # pattern, precursor, execution
    active = stage.sum(-1)
    rows = []
    for w in range(len(recorded.windows)):
        # The attacker's row given the window and stage, mixed over the stages by their probabilities.
        weight = np.einsum("ak,akr->ar", stage[w], positions[w][:, 1:]) / np.maximum(active[w], 1e-300)[:, None]
        weight[:, -1] = 1.0   # the unattributed row counts whoever the attacker is
        rows.append(weight)
    count_windows(statistics, recorded.windows, benign=occupancy[:, 0], active=active, executing=stage[:, :, 2],
                  rows=rows, faults=marks)
    # The expected phase changes are reported, not counted: without labels they are the least identified
    # part (a few events per log, timed only by the signals), and a chain whose stays are fitted to soft
    # counts can hold an attack "under way" through long benign stretches that its effects then absorb.
    # So an unlabelled log's transitions keep the prior (or what labelled logs fitted together say).
    summary = np.zeros((len(attacks), 5))
    for i in range(len(attacks)):
        pattern, precursor, execution = 1 + 3 * i + np.arange(3)
        summary[i] = (stage[:, i, :2].sum(), stage[:, i, 2].sum(), pairs[0, pattern] + pairs[0, precursor],
                      pairs[pattern, execution] + pairs[precursor, execution],
                      pairs[execution].sum() - pairs[execution, execution])
    return summary


def _expectation_maximisation(hard: SignalStatistics, latent: list, window: float, prior_strength: float,
                              max_iterations: int, tolerance: float) -> tuple:
    """The latent fit (module docstring): returns the converged statistics, the record of the iterations, and
    the log likelihood per window of each unlabelled log."""
    values = point_estimate(hard, prior_strength)
    previous = None
    trace, change, converged = [], math.inf, False
    total = hard
    iteration = 0
    while iteration < max_iterations:
        iteration += 1
        soft = SignalStatistics.zeros(hard.attacks)
        summaries, log_likelihood, per_window = [], 0.0, []
        for recorded, marks in latent:
            occupancy, pairs, ll, positions = _smooth(values, recorded, window)
            summaries.append(_count_latent(soft, recorded, marks, occupancy, pairs, positions))
            log_likelihood += ll
            per_window.append(ll / max(len(recorded.windows), 1))
        total = hard + soft
        values = point_estimate(total, prior_strength)
        trace.append(log_likelihood)
        summary = np.concatenate(summaries)
        if previous is not None:
            change = float(np.max(np.abs(summary - previous)))
            if change < tolerance:
                converged = True
                break
        previous = summary
    em = {"iterations": iteration, "converged": converged, "change": change if math.isfinite(change) else None,
          "tolerance": tolerance, "log_likelihood": trace,
          "criterion": "expected windows per stage and expected phase changes of every attack move by less than "
                       "tolerance between iterations",
          # Expected (precursor, execution) windows per attack over the unlabelled logs, at the last E-step.
          "stage_windows": {attack: [float(x) for x in sum(s[i, :2] for s in summaries)]
                            for i, attack in enumerate(hard.attacks)}}
    return total, em, per_window


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


