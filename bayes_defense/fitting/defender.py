"""Fitting the defender's observation and transition model to logged incidents.

The streaming defender (:mod:`bayes_defense.stream.defender`) turns every
telemetry window into one evidence score per attack hypothesis and filters a
hidden phase (benign, precursor, execution) per hypothesis. Its parameters are
the model :func:`fit` learns from event logs:

- scores: in phase ``k`` the score of a window is a normal variable with mean
  0 (benign), ``score_precursor`` or ``score_execution`` and standard
  deviation ``spread``, clipped to ``[0, 12]`` as the defender clips it (the
  fit uses the censored likelihood, so clipped windows count as what they
  are: "at most 0" or "at least 12"); a window of the precursor or the
  execution phase is quiet with probability ``quiet_precursor`` or
  ``quiet_execution`` and then scores as a benign window does (an attack's
  signal comes and goes: a Sybil's joins arrive in bursts, between which its
  score is exactly 0);
- incidents: with labels, the windows of one incident (one attack's
  precursor or execution episode in a run) share that incident's own mean,
  ``score_k * exp(incident_scale * z)`` with ``z`` standard normal, so that
  an incident counts as one draw of the attack's mean however many windows
  it lasts: a log with one weak censorship incident moves the censorship
  mean about as far as one observation should (``incident_scale`` is a prior
  hyperparameter, 0.5 by default; unlabelled windows use ``score_k``);
- phases: a Markov chain per window with ``benign_to_precursor``,
  ``precursor_to_execution``, ``precursor_to_benign`` and
  ``execution_to_benign``.

A log is read once, in a stream: its events go through the defender's own
evidence code (so the fit sees exactly the scores the defender will see) and
only one score vector per window is kept, eight numbers per window, whatever
the number of events. With labels (``labels.json``) every window's phase is
known; without them the phase is latent and marginalised exactly by the
forward algorithm (an associative scan over windows). Inference is Pyro SVI
with minibatches of windows (``pyro.plate(..., subsample_size=...)``) or NUTS.

Posterior draws feed the defender (:meth:`Posterior.defender_parameters`,
``StreamingDefender(parameters=...)``, ``bayes-defense defend --posterior``)
and later fits (``fit(..., prior=posterior)``). ArviZ conversion and NetCDF
storage go through :mod:`bayes_defense.fitting.inference_data` and
:mod:`bayes_defense.fitting.storage`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError, MalformedEventError
from bayes_defense.fitting import inference_data
from bayes_defense.fitting.diagnostics import (
    FitDiagnosticsWarning,
    convergence_problems,
    diagnostics_summary,
    loss_trend,
)
from bayes_defense.fitting.options import check_method, check_sizes
from bayes_defense.fitting.storage import save_posterior
from bayes_defense.fitting.svi import svi_multivariate_normal

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PARAMETER_NAMES",
    "FitDiagnosticsWarning",
    "FitPrior",
    "Posterior",
    "WindowFeatures",
    "extract_features",
    "fit_defender",
    "posterior_from_groups",
    "plot_ppc",
    "simulate_windows",
]

#: Written on every group of a saved posterior; a file without it is refused.
FORMAT_NAME = "bayes_defense.posterior"
#: Version of the stored layout; a file with another major version is refused.
#: 1.1 added the quiet-window probabilities; a 1.0 file is read with them 0.
FORMAT_VERSION = "1.1"

#: Defender parameters the fit learns, in the order of ``default_parameters``.
PARAMETER_NAMES: tuple[str, ...] = (
    "score_precursor", "score_execution", "spread", "benign_to_precursor",
    "precursor_to_execution", "precursor_to_benign", "execution_to_benign",
    "quiet_precursor", "quiet_execution",
)
_QUIET = ("quiet_precursor", "quiet_execution")
# Default Beta(a, b) prior of each quiet probability (mean 0.1, mode 0).
_QUIET_PRIOR = (1.0, 9.0)

# Pyro sample sites of the fit model: the precursor row of the transition
# matrix is one Dirichlet site (stay, to benign, to execution), so that its
# three probabilities always sum to one.
_SITES: tuple[str, ...] = ("score_precursor", "score_execution", "spread", "benign_to_precursor",
                           "precursor_exit", "execution_to_benign", "quiet_precursor", "quiet_execution")
_TRANSITION_SITES = frozenset({"benign_to_precursor", "precursor_exit", "execution_to_benign"})
_PHASE_GROUPS: tuple[str, ...] = ("benign", "precursor", "execution", "all")
_STATISTICS: tuple[str, ...] = ("positive_fraction", "mean", "q90")
# Unlabelled runs are cut into segments of this many windows; each segment is
# a unit of the minibatch plate. Segments after a run's first start from the
# chain's stationary distribution.
_SEGMENT = 64
# Windows per block when statistics are accumulated over a long log.
_BLOCK = 16_384
# The defender's initial phase probabilities (StreamingDefender.reset).
_INITIAL = (1 - 2e-4, 1e-4, 1e-4)
def _attacks() -> tuple[str, ...]:
    from bayes_defense.stream.scored import ATTACK_HYPOTHESES

    return ATTACK_HYPOTHESES


def _score_cap() -> float:
    from bayes_defense.stream import scored

    return float(scored.SCORE_CAP)


def _warmup_windows() -> int:
    from bayes_defense.stream import scored

    return int(scored.WARMUP_WINDOWS)


@dataclass(frozen=True)
class FitPrior:
    """Hyperparameters of the fit's prior, one entry per attack hypothesis.

    Scores and spread are LogNormal (``*_loc``, ``*_scale`` on the log
    scale); ``benign_to_precursor``, ``execution_to_benign`` and the quiet
    probabilities are Beta; the precursor row ``(stay, to benign, to
    execution)`` is Dirichlet. The default centres on the means of the
    defender's default ensemble
    (:func:`bayes_defense.stream.defender.default_parameters`) but is weaker:
    scores and spread vary by about 50% and 30%, and each transition
    probability is worth about one observed transition. The quiet
    probabilities are Beta(1, 9): mean 0.1 and mode 0 (the default
    ensemble's value), worth ten windows, which the hundreds of windows of
    an incident outweigh. ``incident_scale`` (0.5) is the standard deviation
    of one incident's log mean score around the attack's (its windows share
    it); 0 treats every window as an independent draw of the attack's mean.

    Examples
    --------
    >>> prior = FitPrior.default()
    >>> prior.score_precursor_loc.shape, round(float(np.exp(prior.score_precursor_loc[0])), 2)
    ((8,), 3.5)
    """

    score_precursor_loc: np.ndarray
    score_precursor_scale: np.ndarray
    score_execution_loc: np.ndarray
    score_execution_scale: np.ndarray
    spread_loc: np.ndarray
    spread_scale: np.ndarray
    benign_to_precursor_a: np.ndarray
    benign_to_precursor_b: np.ndarray
    precursor_exit: np.ndarray  # (attacks, 3) Dirichlet concentration
    execution_to_benign_a: np.ndarray
    execution_to_benign_b: np.ndarray
    quiet_precursor_a: np.ndarray = None
    quiet_precursor_b: np.ndarray = None
    quiet_execution_a: np.ndarray = None
    quiet_execution_b: np.ndarray = None
    incident_scale: float = 0.5

    def __post_init__(self) -> None:
        # Priors written before the quiet probabilities existed get the default Beta(1, 9).
        n = len(np.atleast_1d(self.spread_loc))
        for name, value in (("quiet_precursor_a", _QUIET_PRIOR[0]), ("quiet_precursor_b", _QUIET_PRIOR[1]),
                            ("quiet_execution_a", _QUIET_PRIOR[0]), ("quiet_execution_b", _QUIET_PRIOR[1])):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(n, value))

    @classmethod
    def default(cls, attacks: int | None = None) -> FitPrior:
        """The default prior (see the class docstring)."""
        n = len(_attacks()) if attacks is None else int(attacks)

        def full(value: float) -> np.ndarray:
            return np.full(n, float(value))

        return cls(
            score_precursor_loc=full(math.log(3.5)), score_precursor_scale=full(0.5),
            score_execution_loc=full(math.log(6.0)), score_execution_scale=full(0.5),
            spread_loc=full(math.log(1.35)), spread_scale=full(0.3),
            # Transitions: the default ensemble's means, worth about one observed
            # transition each, so that a few incidents outweigh them.
            benign_to_precursor_a=full(0.5), benign_to_precursor_b=full(1500.0),
            precursor_exit=np.tile([88.0, 0.25, 1.0], (n, 1)),
            execution_to_benign_a=full(1.0), execution_to_benign_b=full(59.0),
            quiet_precursor_a=full(_QUIET_PRIOR[0]), quiet_precursor_b=full(_QUIET_PRIOR[1]),
            quiet_execution_a=full(_QUIET_PRIOR[0]), quiet_execution_b=full(_QUIET_PRIOR[1]),
        )

    @classmethod
    def from_draws(cls, draws: Mapping[str, np.ndarray], incident_scale: float = 0.5) -> FitPrior:
        """Moment-match independent LogNormal/Beta/Dirichlet factors to posterior draws.

        ``draws`` maps each of the fit's sites to an array ``(samples, attacks[, 3])``.
        The match keeps each parameter's mean and variance and drops the
        correlations between parameters (assumed-density filtering).
        """
        def lognormal(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logs = np.log(values)
            return logs.mean(0), np.maximum(logs.std(0, ddof=1), 1e-3)

        def beta(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mean, var = values.mean(0), np.maximum(values.var(0, ddof=1), 1e-300)
            total = np.maximum(mean * (1 - mean) / var - 1.0, 1e-3)
            return mean * total, (1 - mean) * total

        exit_draws = draws["precursor_exit"]
        mean, var = exit_draws.mean(0), np.maximum(exit_draws.var(0, ddof=1), 1e-300)
        # Each component gives the same concentration for an exact Dirichlet; average on the log scale.
        total = np.exp(np.log(np.maximum(mean * (1 - mean) / var - 1.0, 1e-3)).mean(-1))
        sp, ss = lognormal(draws["score_precursor"])
        se, ses = lognormal(draws["score_execution"])
        sd, sds = lognormal(draws["spread"])
        ba, bb = beta(draws["benign_to_precursor"])
        ea, eb = beta(draws["execution_to_benign"])
        quiet = []
        for name in ("quiet_precursor", "quiet_execution"):
            values = np.asarray(draws[name], float)
            # A posterior of format 1.0 has no quiet windows (all draws 0): start from the default prior.
            quiet.extend(beta(values) if values.any() else
                         tuple(np.full(values.shape[1:], value) for value in _QUIET_PRIOR))
        qpa, qpb, qea, qeb = quiet
        return cls(sp, ss, se, ses, sd, sds, ba, bb, mean * total[:, None], ea, eb, qpa, qpb, qea, qeb,
                   float(incident_scale))

    def as_dict(self) -> dict[str, list]:
        """JSON-ready hyperparameters (stored in a saved posterior)."""
        return {name: np.asarray(getattr(self, name)).tolist() for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitPrior:
        """Inverse of :meth:`as_dict`."""
        out = {name: np.asarray(data[name], dtype=float) for name in cls.__dataclass_fields__ if name in data}
        if "incident_scale" in out:
            out["incident_scale"] = float(out["incident_scale"])
        return cls(**out)


@dataclass
class WindowFeatures:
    """Per-window evidence scores of one or more incident logs: what the fit sees.

    Attributes
    ----------
    scores : numpy.ndarray
        ``(windows, attacks)`` float32 evidence scores, as the defender computes them.
    phases : numpy.ndarray
        ``(windows, attacks)`` int8: 0 benign, 1 precursor, 2 execution, -1 unknown (no labels).
    run : numpy.ndarray
        ``(windows,)`` int32: which incident each window comes from (runs are separate chains).
    window : float
        Seconds per window.
    events : int
        Events read to make them.
    time_range : list of (float, float)
        First and last event time of each run.

    Examples
    --------
    >>> features = WindowFeatures.empty()
    >>> len(features), features.labelled
    (0, True)
    """

    scores: np.ndarray
    phases: np.ndarray
    run: np.ndarray
    window: float = 1.0
    events: int = 0
    time_range: list = field(default_factory=list)

    @classmethod
    def empty(cls, window: float = 1.0) -> WindowFeatures:
        """Features with no windows."""
        attacks = len(_attacks())
        return cls(np.zeros((0, attacks), np.float32), np.zeros((0, attacks), np.int8),
                   np.zeros(0, np.int32), float(window))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def labelled(self) -> bool:
        """True when every window's phase is known."""
        return bool((self.phases >= 0).all())

    @property
    def runs(self) -> int:
        """Number of incident logs behind these windows."""
        return len(np.unique(self.run))

    @staticmethod
    def concatenate(parts: Sequence[WindowFeatures]) -> WindowFeatures:
        """Join features of several logs; each keeps its own run number.

        Examples
        --------
        >>> a = simulate_windows(n_windows=5, seed=0)
        >>> len(WindowFeatures.concatenate([a, a])), WindowFeatures.concatenate([a, a]).runs
        (10, 2)
        """
        parts = list(parts)
        if not parts:
            return WindowFeatures.empty()
        windows = {p.window for p in parts}
        if len(windows) > 1:
            raise InvalidInputError(f"features with different window lengths cannot be joined: {sorted(windows)} s")
        runs, offset = [], 0
        for part in parts:
            _, inverse = np.unique(part.run, return_inverse=True)
            runs.append(inverse.astype(np.int32) + offset)
            offset += int(inverse.max()) + 1 if len(part) else 0
        return WindowFeatures(np.concatenate([p.scores for p in parts]), np.concatenate([p.phases for p in parts]),
                              np.concatenate(runs), parts[0].window, sum(p.events for p in parts),
                              [r for p in parts for r in p.time_range])


class _Chunks:
    """A growing numpy array kept as fixed-size blocks (no quadratic copying)."""

    def __init__(self, width: int, dtype: Any, block: int = 65_536) -> None:
        self.width, self.dtype, self.block = width, dtype, block
        self.blocks: list[np.ndarray] = []
        self.fill = block

    def append(self, row: np.ndarray) -> None:
        if self.fill == self.block:
            self.blocks.append(np.empty((self.block, self.width), self.dtype))
            self.fill = 0
        self.blocks[-1][self.fill] = row
        self.fill += 1

    def array(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros((0, self.width), self.dtype)
        return np.concatenate(self.blocks[:-1] + [self.blocks[-1][: self.fill]])


def _recorder(window: float):
    from bayes_defense.stream.scored import ScoredDefender as StreamingDefender

    class _ScoreRecorder(StreamingDefender):
        """The defender's evidence code, recording each window's scores instead of filtering."""

        def __init__(self) -> None:
            super().__init__(window=window, ensemble=2)
            self.rows = _Chunks(len(_attacks()), np.float32)
            self.ends = _Chunks(1, np.float64)

        def _close_window(self) -> None:
            score, _ = self._evidence()
            self.windows += 1
            self.rows.append(score)
            self.ends.append(self._current * self.window)

    return _ScoreRecorder()


def _read_labels(labels: Any) -> list[dict[str, Any]]:
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.exists():
            raise FileNotFoundError(f"no such labels file: {str(path)!r}")
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"labels file {path.name!r} is not valid JSON ({error.msg} at line {error.lineno}); "
                                    f"expected a list of {{attack, nodes, precursor_start, execution_start, end}}") from None
    if not isinstance(labels, list):
        raise InvalidInputError(f"labels must be a list of {{attack, precursor_start, execution_start, end}} objects; "
                                f"got {type(labels).__name__}")
    attacks = _attacks()
    checked = []
    for index, label in enumerate(labels):
        if not isinstance(label, Mapping):
            raise InvalidInputError(f"label {index} must be an object, got {label!r}")
        attack = label.get("attack")
        if attack not in attacks:
            raise InvalidInputError(f"label {index} names attack {attack!r}; known attacks are {', '.join(attacks)}")
        times = []
        for key in ("precursor_start", "execution_start", "end"):
            value = label.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"label {index} ({attack}): {key} must be a finite number of seconds, got {value!r}")
            times.append(float(value))
        if not times[0] <= times[1] <= times[2]:
            raise InvalidInputError(f"label {index} ({attack}): need precursor_start <= execution_start <= end, "
                                    f"got {times[0]}, {times[1]}, {times[2]}")
        checked.append({"attack": attack, "precursor_start": times[0], "execution_start": times[1], "end": times[2]})
    return checked


def extract_features(events: Any, labels: Any = None, *, window: float = 1.0, progress: bool | None = None,
                     allow_unknown_kind: bool = False) -> WindowFeatures:
    """Stream one incident log into per-window evidence scores, with phases from its labels.

    Parameters
    ----------
    events : path-like or iterable of Event
        An event log (``events.jsonl``/``.csv``/``.parquet`` or a simulation
        directory) or events in time order.
    labels : path-like or list of dict, optional
        ``labels.json`` (or its contents); without labels phases are unknown.
    window : float
        Seconds per window, as the defender's ``window``.
    progress : bool, optional
        Show a progress bar (default: when standard error is a terminal).
    allow_unknown_kind : bool
        Skip events of kinds the schema does not know instead of refusing the log.

    Returns
    -------
    WindowFeatures
        The first windows of the log, in which the defender's baselines
        warm up and report no evidence, are left out.

    Raises
    ------
    InvalidInputError
        The log has no events, too few windows, an unknown event kind, or
        labels outside its time range.

    Examples
    --------
    >>> import tempfile
    >>> from bayes_defense.sim import Scenario, AttackSpec, simulate
    >>> run = simulate(Scenario(nodes=4, duration=80.0, seed=1,
    ...     attacks=[AttackSpec("replay", start=50.0, precursor=20.0, duration=20.0)]), tempfile.mkdtemp())
    >>> features = extract_features(run.events_path, run.labels_path)
    >>> features.scores.shape[1], sorted(set(features.phases[:, 5].tolist()))
    (8, [0, 1, 2])
    """
    from bayes_defense.stream.io import read_events

    name = "events"
    if isinstance(events, (str, os.PathLike)):
        name = str(events)
        events = read_events(events, allow_unknown_kind=True)
    recorder = _recorder(float(window))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(desc="reading events", unit="ev", unit_scale=True, leave=False)
    from bayes_defense.stream.schema import KNOWN_KINDS

    known = frozenset(KNOWN_KINDS)
    count = 0
    first = None
    observe = recorder.observe
    try:
        for event in events:
            kind = getattr(event, "kind", None) if not isinstance(event, Mapping) else event.get("kind")
            if kind not in known:
                if allow_unknown_kind:
                    continue
                raise MalformedEventError(
                    f"{name}: event {count + 1} has unknown kind {kind!r}; schema 1.x kinds are "
                    f"{', '.join(KNOWN_KINDS)} (pass allow_unknown_kind=True to skip such events)")
            observe(event)
            count += 1
            if first is None and recorder.accepted:
                first = float(recorder._last_ts)
            if bar is not None and count % 65_536 == 0:
                bar.update(65_536)
    except MalformedEventError as error:
        raise MalformedEventError(f"cannot fit on this log: {error}") from None
    finally:
        if bar is not None:
            bar.close()
    if recorder.accepted == 0:
        raise InvalidInputError(f"{name}: the incident log has no valid events ({count} read, rejected: "
                                f"{dict(recorder.rejected) or 'none'}); nothing to fit")
    recorder.flush()
    scores = recorder.rows.array()
    ends = recorder.ends.array()[:, 0]
    skip = _warmup_windows()
    if len(scores) <= skip:
        raise InvalidInputError(
            f"{name}: the log spans {len(scores)} window(s) of {window} s; the defender needs {skip} to warm up "
            f"and the fit at least one more; give a longer log")
    scores, ends = scores[skip:], ends[skip:]
    last = float(recorder._last_ts)
    attacks = _attacks()
    phases = np.full(scores.shape, -1 if labels is None else 0, np.int8)
    if labels is not None:
        for index, label in enumerate(_read_labels(labels)):
            start, end = label["precursor_start"], label["end"]
            if start < first - window or end > last + window:
                raise InvalidInputError(
                    f"label {index} ({label['attack']}) spans [{start:g}, {end:g}] s but the log covers "
                    f"[{first:g}, {last:g}] s; were these labels written for another log?")
            column = attacks.index(label["attack"])
            in_precursor = (ends >= start) & (ends < label["execution_start"])
            in_execution = (ends >= label["execution_start"]) & (ends <= end)
            phases[in_precursor, column] = 1
            phases[in_execution, column] = 2
    return WindowFeatures(scores, phases, np.zeros(len(scores), np.int32), float(window), recorder.accepted,
                          [(first, last)])


def _as_features(incidents: Any, labels: Any, window: float, progress: bool | None,
                 allow_unknown_kind: bool) -> WindowFeatures:
    if isinstance(incidents, WindowFeatures):
        return incidents
    if isinstance(incidents, (str, os.PathLike)) or (isinstance(incidents, tuple) and len(incidents) == 2
                                                     and not isinstance(incidents[0], WindowFeatures)
                                                     and isinstance(incidents[0], (str, os.PathLike))):
        incidents = [incidents]
    if labels is not None and len(incidents) != 1:
        raise InvalidInputError("labels= applies to a single incident log; for several logs pass "
                                "(events, labels) pairs or simulation directories holding labels.json")
    parts = []
    for item in incidents:
        if isinstance(item, WindowFeatures):
            parts.append(item)
            continue
        item_labels = labels
        if isinstance(item, tuple):
            item, item_labels = item
        path = Path(item)
        if item_labels is None and path.is_dir() and (path / "labels.json").exists():
            item_labels = path / "labels.json"
        parts.append(extract_features(path, item_labels, window=window, progress=progress,
                                      allow_unknown_kind=allow_unknown_kind))
    if not parts:
        raise InvalidInputError("no incidents given: pass an event log, a simulation directory, "
                                "(events, labels) pairs or WindowFeatures")
    return WindowFeatures.concatenate(parts)


def _transition_log(bp, exits, eb):
    """Log transition matrices ``(attacks, 3, 3)`` from the per-row probabilities."""
    import torch

    zero = torch.zeros_like(bp)
    # exits is ordered (stay, to benign, to execution); row 1 is (to benign, stay, to execution).
    rows = [torch.stack([1 - bp, bp, zero], -1), exits[..., [1, 0, 2]], torch.stack([eb, zero, 1 - eb], -1)]
    # Impossible moves (benign -> execution) get a tiny probability so that gradients stay finite.
    return torch.stack(rows, -2).clamp(min=1e-200).log()


def _censored_log(s, means, sigma, cap: float):
    """Log-likelihood of scores ``s`` under Normal(means, sigma) clipped to ``[0, cap]`` (broadcast)."""
    import torch

    z = (s - means) / sigma
    middle = -0.5 * z * z - sigma.log() - 0.5 * math.log(2 * math.pi)
    lower = torch.special.log_ndtr(-means / sigma)
    upper = torch.special.log_ndtr((means - cap) / sigma)
    return torch.where(s <= 0.0, lower, torch.where(s >= cap, upper, middle))


def _quiet_mixture(benign, active, quiet):
    """``log(quiet * e**benign + (1 - quiet) * e**active)``: a phase window that may look benign."""
    import torch

    return torch.logaddexp(quiet.log() + benign, torch.log1p(-quiet) + active)


def _emission_log(scores, means, spread, cap: float, quiet):
    """Log-likelihood ``(..., attacks, 3)`` of scores ``(..., attacks)`` in each phase.

    ``means`` is ``(attacks, 3)`` (benign mean 0), ``quiet`` is
    ``(attacks, 2)``: the precursor and execution quiet probabilities.
    """
    import torch

    base = _censored_log(scores.unsqueeze(-1), means, spread.unsqueeze(-1), cap)
    benign = base[..., 0]
    return torch.stack([benign, _quiet_mixture(benign, base[..., 1], quiet[..., 0]),
                        _quiet_mixture(benign, base[..., 2], quiet[..., 1])], -1)


def _chain_product(matrices):
    """Log-space product of ``(..., T, 3, 3)`` matrices over T by pairwise reduction (depth log T)."""
    import torch

    while matrices.shape[-3] > 1:
        if matrices.shape[-3] % 2:
            eye = torch.full(matrices.shape[:-3] + (1, 3, 3), -1e30, dtype=matrices.dtype)
            eye[..., 0, [0, 1, 2], [0, 1, 2]] = 0.0
            matrices = torch.cat([matrices, eye], -3)
        left, right = matrices[..., 0::2, :, :], matrices[..., 1::2, :, :]
        matrices = (left.unsqueeze(-1) + right.unsqueeze(-3)).logsumexp(-2)
    return matrices[..., 0, :, :]


def _stationary(bp, exits, eb):
    """Stationary distribution ``(attacks, 3)`` of the three-phase chain."""
    import torch

    pb, pe = exits[..., 1], exits[..., 2]
    benign = torch.ones_like(bp)
    precursor = bp / (pb + pe)
    execution = precursor * pe / eb
    total = benign + precursor + execution
    return torch.stack([benign, precursor, execution], -1) / total.unsqueeze(-1)


class _Data:
    """Model-ready tensors: labelled windows, and unlabelled runs cut into segments.

    Scores are kept as float32 and phases as int8, as the features hold them
    (about 40 bytes per window), and converted to float64 and int64 one
    minibatch at a time, so that memory stays close to the features' own
    size however long the log.
    """

    def __init__(self, features: WindowFeatures) -> None:
        import torch

        labelled = (features.phases >= 0).all(axis=1)
        # Windows of labelled runs (a run is labelled as a whole).
        rows = np.flatnonzero(labelled)
        run = features.run[rows]
        phases = features.phases[rows].astype(np.int8)
        previous = np.full_like(phases, -1)
        same = np.zeros(len(rows), bool)
        same[1:] = (run[1:] == run[:-1]) & (rows[1:] == rows[:-1] + 1)
        previous[1:][same[1:]] = phases[:-1][same[1:]]
        del run
        scores = features.scores[rows].astype(np.float32)
        self.scores = torch.as_tensor(scores)
        self.phases = torch.as_tensor(phases)
        self.previous = torch.as_tensor(previous)
        self.cap = _score_cap()
        self._sufficient_statistics(scores, phases, previous, same)
        del same
        # Unlabelled runs, each cut into segments of _SEGMENT windows (the last one padded).
        segments, masks, firsts = [], [], []
        unlabelled = np.flatnonzero(~labelled)
        for run_id in np.unique(features.run[unlabelled]):
            block = features.scores[unlabelled[features.run[unlabelled] == run_id]]
            for start in range(0, len(block), _SEGMENT):
                piece = block[start:start + _SEGMENT]
                padded = np.zeros((_SEGMENT, block.shape[1]), np.float32)
                padded[: len(piece)] = piece
                mask = np.zeros(_SEGMENT, bool)
                mask[: len(piece)] = True
                segments.append(padded)
                masks.append(mask)
                firsts.append(start == 0)
        attacks = features.scores.shape[1]
        self.segments = torch.as_tensor(np.array(segments, np.float32).reshape(-1, _SEGMENT, attacks))
        self.masks = torch.as_tensor(np.array(masks, bool).reshape(-1, _SEGMENT))
        self.firsts = torch.as_tensor(np.array(firsts, bool))
        self.attacks = attacks

    def _sufficient_statistics(self, scores: np.ndarray, phases: np.ndarray, previous: np.ndarray,
                               contiguous: np.ndarray) -> None:
        """Counts and sums that carry everything benign windows say, and the incidents' windows one by one.

        ``contiguous[i]`` says that window ``i`` follows window ``i - 1`` in the same run.
        """
        import torch

        attacks = scores.shape[1] if scores.ndim == 2 else len(_attacks())
        low = np.zeros((attacks, 3))
        carry = [-1] * attacks
        high, middle, first, second = np.zeros_like(low), np.zeros_like(low), np.zeros_like(low), np.zeros_like(low)
        counts = np.zeros((attacks, 3, 3))
        active_scores, active_attacks, active_phases, active_incidents = [], [], [], []
        # An incident is one attack's unbroken stretch of precursor and execution
        # windows in one run; numbered across blocks.
        incidents, was_active = 0, np.zeros(attacks, bool)
        # In blocks of windows: the temporaries stay a few MB however long the log.
        for begin in range(0, len(scores), _BLOCK):
            block = scores[begin:begin + _BLOCK].astype(np.float64)
            block_phases, block_previous = phases[begin:begin + _BLOCK], previous[begin:begin + _BLOCK]
            # Precursor and execution windows are kept one by one (a quiet window
            # makes their likelihood a mixture, which sums do not carry); they are
            # the few windows of incidents, benign windows are the bulk.
            is_active = block_phases >= 1
            before = np.empty_like(is_active)
            before[0] = was_active & contiguous[begin]
            before[1:] = is_active[:-1] & contiguous[begin + 1:begin + len(block), None]
            was_active = is_active[-1].copy()
            number = np.full(is_active.shape, -1, np.int64)
            for col in range(attacks):
                start = is_active[:, col] & ~before[:, col]
                ids = np.where(start, incidents + np.cumsum(start) - 1, -1)
                incidents += int(start.sum())
                # Ids grow down a column, so the running maximum is the latest start's id;
                # rows before the block's first start continue the previous block's incident.
                latest = np.maximum.accumulate(ids)
                latest = np.where(latest < 0, carry[col], latest)
                number[:, col] = np.where(is_active[:, col], latest, -1)
                if is_active[-1, col]:
                    carry[col] = int(latest[-1])
            rows, columns = np.nonzero(is_active)
            active_incidents.append(number[rows, columns].astype(np.int64))
            active_scores.append(block[rows, columns].astype(np.float32))
            active_attacks.append(columns.astype(np.int8))
            active_phases.append(block_phases[rows, columns].astype(np.int8))
            for k in range(3):
                in_phase = block_phases == k
                is_low, is_high = in_phase & (block <= 0.0), in_phase & (block >= self.cap)
                is_mid = in_phase & ~is_low & ~is_high
                low[:, k] += is_low.sum(0)
                high[:, k] += is_high.sum(0)
                middle[:, k] += is_mid.sum(0)
                first[:, k] += np.where(is_mid, block, 0.0).sum(0)
                second[:, k] += np.where(is_mid, block * block, 0.0).sum(0)
                for j in range(3):
                    counts[:, j, k] += ((block_previous == j) & in_phase).sum(0)
        self.stats = {name: torch.as_tensor(value, dtype=torch.float64) for name, value in
                      (("low", low), ("high", high), ("middle", middle), ("first", first), ("second", second),
                       ("counts", counts))}
        incident = np.concatenate(active_incidents) if active_incidents else np.zeros(0, np.int64)
        # Renumber incidents 0..I-1 in order of appearance.
        _, incident = np.unique(incident, return_inverse=True)
        self.incidents = int(incident.max()) + 1 if len(incident) else 0
        entry_attacks = np.concatenate(active_attacks).astype(np.int64) if active_attacks else np.zeros(0, np.int64)
        incident_attacks = np.zeros(self.incidents, np.int64)
        incident_attacks[incident] = entry_attacks
        self.incident_attacks = torch.as_tensor(incident_attacks)
        self.active = {
            "incidents": torch.as_tensor(incident.astype(np.int64)),
            "scores": torch.as_tensor(np.concatenate(active_scores) if active_scores else np.zeros(0, np.float32)),
            "attacks": torch.as_tensor(np.concatenate(active_attacks) if active_attacks else np.zeros(0, np.int8)),
            "phases": torch.as_tensor(np.concatenate(active_phases) if active_phases else np.zeros(0, np.int8)),
        }


def _collapsed_log_likelihood(data: _Data, params: Mapping[str, Any], scale: float = 0.0):
    """Log-likelihood of all labelled windows from their sufficient statistics (O(1) in the log's length)."""
    log_t = _transition_log(params["benign_to_precursor"], params["precursor_exit"], params["execution_to_benign"])
    return _collapsed_emission(data, params, scale) + (data.stats["counts"] * log_t).sum()


def _collapsed_emission(data: _Data, params: Mapping[str, Any], scale: float = 0.0):
    """The score part of :func:`_collapsed_log_likelihood`.

    Benign windows enter through their sufficient statistics; precursor and
    execution windows one by one (:func:`_incident_log_likelihood`).
    """
    return _benign_emission(data.stats, params["spread"], data.cap) + _incident_log_likelihood(data, params, scale)


def _benign_emission(stats: Mapping[str, Any], sigma, cap: float):
    """Censored-normal log-likelihood (mean 0) of all benign windows from their sufficient statistics."""
    import torch

    low, high, middle = stats["low"][:, 0], stats["high"][:, 0], stats["middle"][:, 0]
    return (low * math.log(0.5) + high * torch.special.log_ndtr(-cap / sigma)
            - 0.5 * stats["second"][:, 0] / (sigma * sigma)
            - middle * (sigma.log() + 0.5 * math.log(2 * math.pi))).sum()


def _incident_log_likelihood(data: _Data, params: Mapping[str, Any], scale: float = 0.0):
    """Log-likelihood of the labelled precursor and execution windows.

    Each window is a quiet mixture; its mean is its incident's,
    ``exp(params["incident_log_mean"][incident, phase - 1])`` (absent or
    ``scale = 0``: the attack's own score).
    """
    import torch

    sigma = params["spread"]
    active = data.active
    if not len(active["scores"]):
        return torch.zeros((), dtype=sigma.dtype)
    attack = active["attacks"].long()
    phase = active["phases"].long()
    s = active["scores"].to(sigma.dtype)
    log_means = params.get("incident_log_mean")
    if log_means is not None and scale > 0:
        means = log_means[active["incidents"], phase - 1].exp()
    else:
        means = torch.stack([params["score_precursor"], params["score_execution"]], -1)[attack, phase - 1]
    quiet = torch.stack([params["quiet_precursor"], params["quiet_execution"]], -1)[attack, phase - 1]
    return _phase_window_log(s, means, sigma[attack], data.cap, quiet.log(), torch.log1p(-quiet)).sum()


def _phase_window_log(s, means, spread, cap: float, log_quiet, log_loud):
    """Log-likelihood of precursor or execution windows: quiet (benign-looking) with ``e**log_quiet``, else
    showing their mean, with ``e**log_loud`` (one minus it)."""
    import torch

    benign = _censored_log(s, torch.zeros_like(s), spread, cap)
    return torch.logaddexp(log_quiet + benign, log_loud + _censored_log(s, means, spread, cap))


def _conjugate_posterior(data: _Data, prior: FitPrior) -> dict[str, np.ndarray]:
    """Exact Beta / Dirichlet posterior parameters of the transitions given labelled windows."""
    counts = data.stats["counts"].numpy()
    return {
        "benign_to_precursor": np.stack([prior.benign_to_precursor_a + counts[:, 0, 1],
                                         prior.benign_to_precursor_b + counts[:, 0, 0]], -1),
        # The Dirichlet row is ordered (stay, to benign, to execution).
        "precursor_exit": prior.precursor_exit + counts[:, 1][:, [1, 0, 2]],
        "execution_to_benign": np.stack([prior.execution_to_benign_a + counts[:, 2, 0],
                                         prior.execution_to_benign_b + counts[:, 2, 2]], -1),
    }


def _conjugate_transitions(data: _Data, prior: FitPrior, num_samples: int) -> dict[str, np.ndarray]:
    """Independent draws from the exact transition posterior (seeded through torch's generator)."""
    import torch

    post = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in _conjugate_posterior(data, prior).items()}
    shape = torch.Size([num_samples])
    return {
        "benign_to_precursor": torch.distributions.Beta(post["benign_to_precursor"][:, 0],
                                                        post["benign_to_precursor"][:, 1]).sample(shape).numpy(),
        "precursor_exit": torch.distributions.Dirichlet(post["precursor_exit"]).sample(shape).numpy(),
        "execution_to_benign": torch.distributions.Beta(post["execution_to_benign"][:, 0],
                                                        post["execution_to_benign"][:, 1]).sample(shape).numpy(),
    }


def _sample_parameters(prior: FitPrior):
    import pyro
    import pyro.distributions as dist
    import torch

    def t(x):
        return torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)

    return {
        "score_precursor": pyro.sample("score_precursor", dist.LogNormal(
            t(prior.score_precursor_loc), t(prior.score_precursor_scale)).to_event(1)),
        "score_execution": pyro.sample("score_execution", dist.LogNormal(
            t(prior.score_execution_loc), t(prior.score_execution_scale)).to_event(1)),
        "spread": pyro.sample("spread", dist.LogNormal(t(prior.spread_loc), t(prior.spread_scale)).to_event(1)),
        "benign_to_precursor": pyro.sample("benign_to_precursor", dist.Beta(
            t(prior.benign_to_precursor_a), t(prior.benign_to_precursor_b)).to_event(1)),
        "precursor_exit": pyro.sample("precursor_exit", dist.Dirichlet(t(prior.precursor_exit)).to_event(1)),
        "execution_to_benign": pyro.sample("execution_to_benign", dist.Beta(
            t(prior.execution_to_benign_a), t(prior.execution_to_benign_b)).to_event(1)),
        "quiet_precursor": pyro.sample("quiet_precursor", dist.Beta(
            t(prior.quiet_precursor_a), t(prior.quiet_precursor_b)).to_event(1)),
        "quiet_execution": pyro.sample("quiet_execution", dist.Beta(
            t(prior.quiet_execution_a), t(prior.quiet_execution_b)).to_event(1)),
    }


def _log_likelihoods(data: _Data, params: Mapping[str, Any], windows=None, segments=None):
    """Per-window and per-segment log-likelihoods (summed over attacks) of the chosen rows."""
    import torch

    zeros = torch.zeros_like(params["score_precursor"])
    means = torch.stack([zeros, params["score_precursor"], params["score_execution"]], -1)
    spread = params["spread"]
    quiet = torch.stack([params["quiet_precursor"], params["quiet_execution"]], -1)
    log_t = _transition_log(params["benign_to_precursor"], params["precursor_exit"], params["execution_to_benign"])
    window_ll = segment_ll = None
    if windows is not None:
        scores = data.scores[windows].to(spread.dtype)
        phase = data.phases[windows].long()
        previous = data.previous[windows].long()
        # Only benign windows are scored here; precursor and execution windows
        # are scored with their incidents (_incident_log_likelihood).
        benign = _censored_log(scores, torch.zeros_like(scores), spread, data.cap)
        ll = torch.where(phase == 0, benign, torch.zeros_like(benign))
        attack = torch.arange(data.attacks)
        step = log_t[attack, previous.clamp(min=0), phase]
        window_ll = (ll + torch.where(previous >= 0, step, torch.zeros_like(step))).sum(-1)
    if segments is not None:
        emission = _emission_log(data.segments[segments].to(spread.dtype), means, spread, data.cap,
                                 quiet)  # (S, L, A, 3)
        matrices = log_t.unsqueeze(0).unsqueeze(0) + emission.unsqueeze(-2)  # (S, L, A, 3, 3)
        eye = torch.full((3, 3), -1e30, dtype=matrices.dtype)
        eye[[0, 1, 2], [0, 1, 2]] = 0.0
        mask = data.masks[segments][..., None, None, None]
        matrices = torch.where(mask, matrices, eye)
        product = _chain_product(matrices.transpose(1, 2))  # (S, A, 3, 3)
        initial = torch.tensor(_INITIAL, dtype=matrices.dtype).log()
        stationary = _stationary(params["benign_to_precursor"], params["precursor_exit"],
                                 params["execution_to_benign"]).log()
        start = torch.where(data.firsts[segments][:, None, None], initial, stationary)  # (S, A, 3)
        segment_ll = (start.unsqueeze(-1) + product).logsumexp((-2, -1)).sum(-1)
    return window_ll, segment_ll


def _incident_prior(data: _Data, params: Mapping[str, Any], scale: float):
    """Normal(log score of the incident's attack and phase, scale) for each incident's log mean ``(I, 2)``.

    Centred: with many windows per incident its log mean is pinned by the data
    and nearly independent of the attack's score, which NUTS and the SVI guide
    handle better than the non-centred form.
    """
    import pyro.distributions as dist
    import torch

    log_scores = torch.stack([params["score_precursor"], params["score_execution"]], -1).log()
    return dist.Normal(log_scores[data.incident_attacks], scale).to_event(2)


def _sample_incident_log_means(data: _Data, params: Mapping[str, Any], scale: float):
    import pyro

    return pyro.sample("incident_log_mean", _incident_prior(data, params, scale))


def _model(data: _Data, prior: FitPrior, window_batch: int | None = None, segment_batch: int | None = None):
    import pyro

    params = _sample_parameters(prior)
    scale = float(prior.incident_scale)
    if data.incidents and scale > 0:
        params["incident_log_mean"] = _sample_incident_log_means(data, params, scale)
    if len(data.active["scores"]):
        pyro.factor("incident_windows", _incident_log_likelihood(data, params, scale))
    if len(data.scores):
        with pyro.plate("windows", len(data.scores), subsample_size=window_batch) as rows:
            window_ll, _ = _log_likelihoods(data, params, windows=rows)
            pyro.factor("labelled_windows", window_ll)
    if len(data.segments):
        with pyro.plate("segments", len(data.segments), subsample_size=segment_batch) as rows:
            _, segment_ll = _log_likelihoods(data, params, segments=rows)
            pyro.factor("unlabelled_segments", segment_ll)


def _to_defender(site_draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fit sites ``(samples, attacks[, 3])`` -> defender names ``(samples, attacks)``."""
    out = {name: np.asarray(site_draws[name]) for name in ("score_precursor", "score_execution", "spread",
                                                          "benign_to_precursor", "execution_to_benign") + _QUIET}
    exits = np.asarray(site_draws["precursor_exit"])
    out["precursor_to_benign"] = exits[..., 1]
    out["precursor_to_execution"] = exits[..., 2]
    return {name: out[name] for name in PARAMETER_NAMES}


def simulate_windows(parameters: Mapping[str, np.ndarray] | None = None, *, n_windows: int = 600,
                     phases: np.ndarray | None = None, seed: int = 0, labelled: bool = True,
                     incident_scale: float = 0.0) -> WindowFeatures:
    """Draw window scores from the defender's model with known parameters.

    Parameters
    ----------
    parameters : dict, optional
        One value per attack for each of :data:`PARAMETER_NAMES` (arrays of
        shape ``(attacks,)``); default: the mean of the default fit prior.
    n_windows : int
        Windows to draw when ``phases`` is not given.
    phases : numpy.ndarray, optional
        ``(windows, attacks)`` phases to use instead of drawing them from the chain.
    seed : int
        Seed of the draws.
    labelled : bool
        Keep the phases (True) or mark them unknown (False).
    incident_scale : float
        Standard deviation of each incident's log mean score around the
        attack's (an incident is one attack's unbroken stretch of precursor
        and execution windows; its two phases get separate effects). 0, the
        default, gives every incident the attack's means.

    Returns
    -------
    WindowFeatures

    Examples
    --------
    >>> features = simulate_windows(n_windows=100, seed=1)
    >>> features.scores.shape, bool(features.scores.min() >= 0.0)
    ((100, 8), True)
    """
    rng = np.random.default_rng([int(seed), 0xF17])
    attacks = len(_attacks())
    if parameters is None:
        parameters = _prior_mean(FitPrior.default())
    # The quiet probabilities may be left out (0: the model without quiet windows).
    p = {name: np.broadcast_to(np.asarray(parameters[name] if name in parameters or name not in _QUIET else 0.0,
                                          float), (attacks,)) for name in PARAMETER_NAMES}
    if phases is None:
        phases = np.zeros((int(n_windows), attacks), np.int8)
        state = np.zeros(attacks, np.int64)
        for t in range(int(n_windows)):
            u = rng.random(attacks)
            to_precursor = (state == 0) & (u < p["benign_to_precursor"])
            to_execution = (state == 1) & (u < p["precursor_to_execution"])
            to_benign = ((state == 1) & (u >= p["precursor_to_execution"])
                         & (u < p["precursor_to_execution"] + p["precursor_to_benign"])) | (
                (state == 2) & (u < p["execution_to_benign"]))
            state = np.where(to_precursor, 1, np.where(to_execution, 2, np.where(to_benign, 0, state)))
            phases[t] = state
    phases = np.asarray(phases, np.int8)
    means = np.stack([np.zeros(attacks), p["score_precursor"], p["score_execution"]], -1)
    quiet = np.stack([np.zeros(attacks), p["quiet_precursor"], p["quiet_execution"]], -1)
    # Quiet windows are drawn from their own stream, so that without them the
    # scores are the same draws as before they existed.
    quiet_rng = np.random.default_rng([int(seed), 0xF18]) if quiet.any() else None
    if incident_scale > 0:
        # Per window, the factor exp(scale * z) of its incident and phase (1 elsewhere).
        effect_rng = np.random.default_rng([int(seed), 0xF19])
        factor = np.ones(phases.shape)
        for a in range(attacks):
            active = phases[:, a] >= 1
            start = active & ~np.concatenate([[False], active[:-1]])
            incident = np.cumsum(start) - 1
            z = effect_rng.standard_normal((int(start.sum()), 2))
            rows = np.flatnonzero(active)
            factor[rows, a] = np.exp(incident_scale * z[incident[rows], phases[rows, a] - 1])
    else:
        factor = None
    scores = np.empty(phases.shape, np.float32)
    # In blocks of windows, to bound the temporaries on long logs; the normal
    # draws come out in the same order as in one call.
    for begin in range(0, len(phases), _BLOCK):
        block = phases[begin:begin + _BLOCK]
        mu = means[np.arange(attacks), block.astype(np.intp)]
        if factor is not None:
            mu = mu * factor[begin:begin + _BLOCK]
        if quiet_rng is not None:
            mu = np.where(quiet_rng.random(block.shape) < quiet[np.arange(attacks), block.astype(np.intp)], 0.0, mu)
        scores[begin:begin + _BLOCK] = np.clip(mu + p["spread"] * rng.standard_normal(block.shape), 0.0, _score_cap())
    if not labelled:
        phases = np.full(phases.shape, -1, np.int8)
    return WindowFeatures(scores, phases, np.zeros(len(phases), np.int32), 1.0, 0, [(0.0, float(len(phases)))])


def _prior_mean(prior: FitPrior) -> dict[str, np.ndarray]:
    exits = prior.precursor_exit / prior.precursor_exit.sum(-1, keepdims=True)
    return {
        "score_precursor": np.exp(prior.score_precursor_loc + prior.score_precursor_scale ** 2 / 2),
        "score_execution": np.exp(prior.score_execution_loc + prior.score_execution_scale ** 2 / 2),
        "spread": np.exp(prior.spread_loc + prior.spread_scale ** 2 / 2),
        "benign_to_precursor": prior.benign_to_precursor_a / (prior.benign_to_precursor_a + prior.benign_to_precursor_b),
        "precursor_to_execution": exits[:, 2],
        "precursor_to_benign": exits[:, 1],
        "execution_to_benign": prior.execution_to_benign_a / (prior.execution_to_benign_a + prior.execution_to_benign_b),
        "quiet_precursor": prior.quiet_precursor_a / (prior.quiet_precursor_a + prior.quiet_precursor_b),
        "quiet_execution": prior.quiet_execution_a / (prior.quiet_execution_a + prior.quiet_execution_b),
    }


def _summaries(scores: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Telemetry summaries ``(..., attacks, phase group, statistic)`` of scores ``(..., windows, attacks)``."""
    shape = scores.shape[:-2] + (scores.shape[-1], len(_PHASE_GROUPS), len(_STATISTICS))
    out = np.full(shape, np.nan)
    for g, group in enumerate(_PHASE_GROUPS):
        select = np.ones(phases.shape, bool) if group == "all" else phases == g
        for a in range(scores.shape[-1]):
            rows = select[:, a]
            if not rows.any():
                continue
            chosen = scores[..., rows, a]
            out[..., a, g, 0] = (chosen > 0).mean(-1)
            out[..., a, g, 1] = chosen.mean(-1)
            out[..., a, g, 2] = np.quantile(chosen, 0.9, axis=-1)
    return out


def _replicate(draws: Mapping[str, np.ndarray], features: WindowFeatures, seed: int,
               incident_scale: float = 0.0) -> np.ndarray:
    """Replicated summaries ``(draws, attacks, group, statistic)``: the posterior predictive."""
    count = next(iter(draws.values())).shape[0]
    out = []
    for d in range(count):
        one = {name: draws[name][d] for name in PARAMETER_NAMES}
        parts = []
        for run_id in np.unique(features.run):
            rows = features.run == run_id
            run_phases = features.phases[rows]
            known = (run_phases >= 0).all()
            replicated = simulate_windows(one, n_windows=int(rows.sum()), phases=run_phases if known else None,
                                          seed=seed * 1_000_003 + d * 7919 + int(run_id),
                                          incident_scale=incident_scale if known else 0.0)
            parts.append(replicated.scores)
        out.append(_summaries(np.concatenate(parts), features.phases))
    return np.array(out)


def _run_svi(data: _Data, prior: FitPrior, *, num_steps: int, batch_size: int, learning_rate: float,
             num_samples: int, seed: int, show: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import pyro
    import torch
    from pyro.infer.autoguide import init_to_median

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    window_batch = min(batch_size, len(data.scores)) if len(data.scores) else None
    segment_batch = min(max(1, batch_size // _SEGMENT), len(data.segments)) if len(data.segments) else None

    def model():
        return _model(data, prior, window_batch, segment_batch)

    guide, losses = svi_multivariate_normal(model, init_to_median, num_steps=num_steps, learning_rate=learning_rate,
                                            show=show, desc="SVI")
    with torch.no_grad():
        rows = [guide() for _ in range(num_samples)]
    # Guide draws are independent; two halves as two "chains" let split r_hat and ESS check the draws.
    half = num_samples // 2
    draws = {name: np.stack([row[name].detach().numpy() for row in rows])[: 2 * half].reshape(
        (2, half) + tuple(rows[0][name].shape)) for name in _SITES}
    return draws, {"losses": losses}


def _prior_distributions(prior: FitPrior) -> dict[str, Any]:
    """The prior of each fit site as a torch distribution (float64)."""
    import pyro.distributions as dist
    import torch

    def t(x):
        return torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)

    return {
        "score_precursor": dist.LogNormal(t(prior.score_precursor_loc), t(prior.score_precursor_scale)).to_event(1),
        "score_execution": dist.LogNormal(t(prior.score_execution_loc), t(prior.score_execution_scale)).to_event(1),
        "spread": dist.LogNormal(t(prior.spread_loc), t(prior.spread_scale)).to_event(1),
        "benign_to_precursor": dist.Beta(t(prior.benign_to_precursor_a), t(prior.benign_to_precursor_b)).to_event(1),
        "precursor_exit": dist.Dirichlet(t(prior.precursor_exit)).to_event(1),
        "execution_to_benign": dist.Beta(t(prior.execution_to_benign_a), t(prior.execution_to_benign_b)).to_event(1),
        "quiet_precursor": dist.Beta(t(prior.quiet_precursor_a), t(prior.quiet_precursor_b)).to_event(1),
        "quiet_execution": dist.Beta(t(prior.quiet_execution_a), t(prior.quiet_execution_b)).to_event(1),
    }


class _FlatTarget:
    """The NUTS target: one flat unconstrained vector, closed-form priors.

    The density is the one the fit's Pyro sites define once each is mapped
    to the real line by ``biject_to`` of its support (LogNormal by the log,
    Beta by the logit, Dirichlet by stick-breaking), Jacobians included; a
    test checks it against that composition. Writing it out as a few array
    operations on one vector, instead of one torch distribution per site,
    cut the cost of a gradient evaluation, which NUTS makes tens of times
    per draw, from 5.1 to 1.4 ms on the 10k-event benchmark log (the
    distributions' argument checks, event reshapes and per-site transforms
    were most of it).

    Layout of the full vector: the LogNormal sites (log values), the Beta
    sites (logits), the Dirichlet site (stick-breaking coordinates, two per
    attack) when sampled, then the incidents' log means ``(incidents, 2)``.
    NUTS moves its free coordinates only. ``exact_prior`` marks attacks with
    no precursor or execution window in a fully labelled log: no likelihood
    term involves their scores and quiet probabilities, so their posterior
    is their prior, independent of the rest, and they are drawn from it
    exactly (:meth:`prior_draws`) instead of by NUTS, as the conjugate
    transitions are.
    """

    _LOGNORMAL = ("score_precursor", "score_execution", "spread")
    _BETA = ("benign_to_precursor", "execution_to_benign", "quiet_precursor", "quiet_execution")
    _PHASE_SITES = ("score_precursor", "score_execution", "quiet_precursor", "quiet_execution")

    def __init__(self, data: _Data, prior: FitPrior, sampled: Sequence[str], scale: float,
                 incidental: bool, exact_prior: np.ndarray | None = None) -> None:
        import torch

        def t(x):
            return torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)

        self.data, self.scale, self.incidental = data, float(scale), incidental
        n = data.attacks
        self.lognormal = [name for name in self._LOGNORMAL if name in sampled]
        self.beta = [name for name in self._BETA if name in sampled]
        self.dirichlet = "precursor_exit" in sampled
        if len(self.lognormal) != 3 or not set(_QUIET) <= set(self.beta):
            raise ValueError("the scores, the spread and the quiet probabilities are always sampled")
        self.slices: dict[str, slice] = {}
        offset = 0
        for name in self.lognormal + self.beta:
            self.slices[name] = slice(offset, offset + n)
            offset += n
        if self.dirichlet:
            self.slices["precursor_exit"] = slice(offset, offset + 2 * n)
            offset += 2 * n
        if incidental:
            self.slices["incident_log_mean"] = slice(offset, offset + 2 * data.incidents)
            offset += 2 * data.incidents
        self.full_size = offset
        fixed = torch.zeros(offset, dtype=torch.bool)
        if exact_prior is not None:
            absent = torch.as_tensor(np.flatnonzero(exact_prior), dtype=torch.long)
            for name in self._PHASE_SITES:
                fixed[self.slices[name].start + absent] = True
        self.fixed = torch.nonzero(fixed).reshape(-1)
        self.free = torch.nonzero(~fixed).reshape(-1)
        self.size = len(self.free)
        # Position of each full coordinate in the free vector (-1: fixed).
        at = torch.full((offset,), -1, dtype=torch.long)
        at[self.free] = torch.arange(self.size)

        def free_part(block: slice):
            index = torch.arange(block.start, block.stop)
            return index[~fixed[index]]

        # LogNormal(loc, scale) of x = e**u: the density of u is Normal(loc, scale).
        self.full_ln_loc = torch.cat([t(getattr(prior, f"{name}_loc")) for name in self.lognormal])
        self.full_ln_scale = torch.cat([t(getattr(prior, f"{name}_scale")) for name in self.lognormal])
        ln = free_part(slice(0, 3 * n))
        self.ln_at, self.ln_loc, self.ln_scale = at[ln], self.full_ln_loc[ln], self.full_ln_scale[ln]
        constant = -(self.ln_scale.log().sum() + 0.5 * math.log(2 * math.pi) * len(ln))
        # Beta(a, b) of x = sigmoid(u): a log sigmoid(u) + b log sigmoid(-u) - log B(a, b).
        self.full_beta_a = torch.cat([t(getattr(prior, f"{name}_a")) for name in self.beta])
        self.full_beta_b = torch.cat([t(getattr(prior, f"{name}_b")) for name in self.beta])
        beta = free_part(slice(3 * n, 3 * n + len(self.beta) * n))
        self.beta_at = at[beta]
        self.beta_a, self.beta_b = self.full_beta_a[beta - 3 * n], self.full_beta_b[beta - 3 * n]
        constant = constant - (torch.lgamma(self.beta_a) + torch.lgamma(self.beta_b)
                               - torch.lgamma(self.beta_a + self.beta_b)).sum()
        if self.dirichlet:
            import pyro.distributions as dist
            from torch.distributions import biject_to

            self.dirichlet_prior = dist.Dirichlet(t(prior.precursor_exit), validate_args=False)
            self.stick = biject_to(self.dirichlet_prior.support)
            self.dirichlet_at = at[free_part(self.slices["precursor_exit"])]
        # Incidents: Normal(log score of the incident's attack and phase, scale).
        if incidental:
            attack = data.incident_attacks
            self.incident_at = at[free_part(self.slices["incident_log_mean"])]
            # Where each incident mean's prior centre (its attack's log score in that phase) sits.
            self.incident_centre = at[torch.stack([attack, attack + n], -1).reshape(-1)]
            constant = constant - 2 * data.incidents * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))
        self.constant = float(constant)
        # Benign windows enter through their sufficient statistics, given each attack's spread.
        self.spread_of_attack = at[self.slices["spread"].start + torch.arange(n)]
        # Precursor and execution windows one by one: where their mean, spread and quiet probability sit.
        active = data.active
        self.s = active["scores"].to(torch.float64)
        attack_of, phase_of = active["attacks"].long(), active["phases"].long()
        self.spread_at = self.spread_of_attack[attack_of]
        if incidental:
            self.mean_at = at[self.slices["incident_log_mean"].start + 2 * active["incidents"] + phase_of - 1]
        else:
            self.mean_at = at[attack_of + (phase_of - 1) * n]
        self.quiet_at = at[self.slices["quiet_precursor"].start + attack_of + (phase_of - 1) * n]
        if len(self.s) and min(int(self.mean_at.min()), int(self.quiet_at.min())) < 0:
            raise ValueError("an attack with precursor or execution windows was marked exact_prior")
        self.cap = data.cap

    def prior_draws(self, num: int):
        """``(num, fixed coordinates)`` exact draws of the fixed coordinates from their prior (torch's generator)."""
        import torch

        u = torch.empty(num, len(self.fixed), dtype=torch.float64)
        ln = self.fixed < len(self.full_ln_loc)
        index = self.fixed[ln]
        u[:, ln] = self.full_ln_loc[index] + self.full_ln_scale[index] * torch.randn(num, len(index),
                                                                                      dtype=torch.float64)
        index = self.fixed[~ln] - len(self.full_ln_loc)
        if len(index):
            u[:, ~ln] = torch.logit(torch.distributions.Beta(self.full_beta_a[index], self.full_beta_b[index])
                                    .sample((num,)))
        return u

    def split(self, theta, fill=None) -> dict[str, Any]:
        """Constrained site values ``(..., attacks[, 3])`` from free vectors ``(..., size)``.

        ``fill`` ``(..., fixed coordinates)`` holds the fixed coordinates (see
        :meth:`prior_draws`); without it they come out as NaN.
        """
        import torch

        full = torch.full(theta.shape[:-1] + (self.full_size,), math.nan, dtype=theta.dtype)
        full[..., self.free] = theta
        if fill is not None:
            full[..., self.fixed] = fill.to(theta.dtype)
        out = {name: full[..., self.slices[name]].exp() for name in self.lognormal}
        out.update({name: torch.sigmoid(full[..., self.slices[name]]) for name in self.beta})
        if self.dirichlet:
            u = full[..., self.slices["precursor_exit"]]
            out["precursor_exit"] = self.stick(u.reshape(u.shape[:-1] + (self.data.attacks, 2)))
        if self.incidental:
            u = full[..., self.slices["incident_log_mean"]]
            out["incident_log_mean"] = u.reshape(u.shape[:-1] + (self.data.incidents, 2))
        return out

    def join(self, values: Mapping[str, Any]):
        """The free vector of one point given by site values (``incident_log_mean`` as it is)."""
        import torch

        parts = [values[name].log() for name in self.lognormal]
        parts += [torch.logit(values[name]) for name in self.beta]
        if self.dirichlet:
            parts.append(self.stick.inv(values["precursor_exit"]).reshape(-1))
        if self.incidental:
            parts.append(values["incident_log_mean"].reshape(-1))
        return torch.cat(parts)[self.free]

    def log_density(self, theta):
        """Log prior (Jacobians included) plus log-likelihood at one free vector ``theta``.

        The fixed coordinates' prior is left out: it is the whole of their
        posterior, which they are drawn from separately.
        """
        import torch.nn.functional as nnf

        density = self.constant - 0.5 * (((theta[self.ln_at] - self.ln_loc) / self.ln_scale) ** 2).sum()
        v = theta[self.beta_at]
        density = density + (self.beta_a * nnf.logsigmoid(v) + self.beta_b * nnf.logsigmoid(-v)).sum()
        if self.incidental:
            m = theta[self.incident_at]
            density = density - 0.5 * (((m - theta[self.incident_centre]) / self.scale) ** 2).sum()
        if self.dirichlet:
            w = theta[self.dirichlet_at].reshape(self.data.attacks, 2)
            row = self.stick(w)
            density = density + (self.dirichlet_prior.log_prob(row)
                                 + self.stick.log_abs_det_jacobian(w, row)).sum()
        return density + self._emission(theta)

    def _emission(self, theta):
        """The score part of the likelihood (:func:`_collapsed_emission`, written on the free vector)."""
        import torch.nn.functional as nnf

        emission = _benign_emission(self.data.stats, theta[self.spread_of_attack].exp(), self.cap)
        if not len(self.s):
            return emission
        logit = theta[self.quiet_at]
        # Quiet with probability sigmoid(logit): logsigmoid stays finite where 1 - sigmoid(logit) rounds to 0.
        return emission + _phase_window_log(self.s, theta[self.mean_at].exp(), theta[self.spread_at].exp(), self.cap,
                                            nnf.logsigmoid(logit), nnf.logsigmoid(-logit)).sum()


def _run_nuts(data: _Data, prior: FitPrior, *, num_samples: int, num_warmup: int, num_chains: int, seed: int,
              show: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS
    from torch.distributions import biject_to

    priors = _prior_distributions(prior)
    segments = torch.arange(len(data.segments)) if len(data.segments) else None
    # With every window labelled the posterior factorises: the transition
    # probabilities have their exact conjugate Beta / Dirichlet posterior
    # (drawn directly, independent draws) and NUTS samples only the scores.
    conjugate = segments is None
    sampled = [name for name in _SITES if not (conjugate and name in _TRANSITION_SITES)]
    scale = float(prior.incident_scale)
    incidental = bool(data.incidents and scale > 0)
    transforms = {name: biject_to(priors[name].support) for name in sampled}
    # In a fully labelled log an attack without precursor or execution windows
    # leaves its scores and quiet probabilities to their prior (drawn exactly).
    absent = (np.bincount(data.active["attacks"].numpy().astype(np.int64), minlength=data.attacks) == 0
              if conjugate else None)
    target = _FlatTarget(data, prior, sampled, scale, incidental, exact_prior=absent)

    def potential(unconstrained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # Labelled windows enter through their sufficient statistics and the
        # incidents' windows, so NUTS time does not grow with the log's length.
        theta = unconstrained["theta"]
        log_density = target.log_density(theta)
        if conjugate:
            return -log_density
        params = target.split(theta)
        if len(data.scores):
            log_t = _transition_log(params["benign_to_precursor"], params["precursor_exit"],
                                    params["execution_to_benign"])
            log_density = log_density + (data.stats["counts"] * log_t).sum()
        _, segment_ll = _log_likelihoods(data, params, segments=segments)
        return -(log_density + segment_ll.sum())

    chains: list[dict[str, np.ndarray]] = []
    diverging = np.zeros((num_chains, num_samples), bool)
    for chain in range(num_chains):
        # Chains one after another in this process: no worker processes, same answer everywhere.
        pyro.set_rng_seed(seed * 1000 + chain)
        # Start near the prior median, jittered per chain so that r_hat can see disagreement.
        start = {}
        for name in sampled:
            median = transforms[name].inv(_prior_median(priors[name]))
            start[name] = transforms[name](median + 0.5 * (transforms[name].inv(priors[name].sample()) - median))
        if incidental:
            centre = {name: _prior_median(priors[name]) for name in ("score_precursor", "score_execution")}
            start["incident_log_mean"] = (_incident_prior(data, centre, scale).mean
                                          + 0.5 * scale * torch.randn(data.incidents, 2, dtype=torch.float64))
        kernel = NUTS(potential_fn=potential, target_accept_prob=0.85, max_tree_depth=8)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                    initial_params={"theta": target.join(start)}, disable_progbar=not show)
        mcmc.run()
        values = target.split(mcmc.get_samples()["theta"], fill=target.prior_draws(num_samples))
        draws_of_chain = {name: values[name].detach().numpy() for name in sampled}
        if conjugate:
            draws_of_chain.update(_conjugate_transitions(data, prior, num_samples))
        chains.append(draws_of_chain)
        divergences = mcmc.diagnostics().get("divergences", {}).get("chain 0", [])
        diverging[chain, np.asarray(divergences, int)] = True
    draws = {name: np.stack([c[name] for c in chains]) for name in _SITES}
    return draws, {"diverging": diverging}


def _prior_median(distribution):
    """A central point of a site prior (the mean; the median of a LogNormal)."""
    import pyro.distributions as dist

    base = distribution.base_dist if isinstance(distribution, dist.Independent) else distribution
    if isinstance(base, dist.LogNormal):
        return base.loc.exp()
    return base.mean


class Posterior:
    """Posterior draws of the defender's parameters, with diagnostics and checks.

    Build with :func:`bayes_defense.fit` or :func:`bayes_defense.load_posterior`; pass to the defender as
    ``StreamingDefender(parameters=posterior.defender_parameters(24, seed=0))``.

    Attributes
    ----------
    draws : dict
        Defender parameter name -> array ``(chains, draws, attacks)``.
    method : str
        ``"svi"`` or ``"nuts"``.
    diagnostics : pandas.DataFrame
        ``az.summary`` of the draws (mean, sd, interval, r_hat, ess_bulk, ess_tail).
    diagnostics_ok : bool
        False when a diagnostic failed; ``problems`` says which.
    problems : list of str
    observed, replicated : numpy.ndarray
        Telemetry summaries of the data ``(attacks, phase group, statistic)``
        and of posterior predictive replicates ``(draws, ...)``.
    info : dict
        Windows, events, runs, window length, prior hyperparameters, seed.
    """

    def __init__(self, draws: Mapping[str, np.ndarray], *, method: str, sample_stats: Mapping[str, np.ndarray],
                 observed: np.ndarray, replicated: np.ndarray, info: Mapping[str, Any], level: float = 0.9,
                 problems: Sequence[str] = ()) -> None:
        self.draws = {name: np.asarray(draws[name], float) for name in PARAMETER_NAMES}
        self.method = method
        self.sample_stats = {k: np.asarray(v) for k, v in sample_stats.items()}
        self.observed = np.asarray(observed, float)
        self.replicated = np.asarray(replicated, float)
        self.info = dict(info)
        self.level = float(level)
        self.problems = list(problems)
        self._diagnostics = None

    def __repr__(self) -> str:
        chains, draws, attacks = self.draws["spread"].shape
        return (f"Posterior(method={self.method!r}, chains={chains}, draws={draws}, attacks={attacks}, "
                f"windows={self.info.get('windows')}, diagnostics_ok={self.diagnostics_ok})")

    @property
    def attacks(self) -> tuple[str, ...]:
        """Attack hypotheses, in the order of the last axis of every draw."""
        return tuple(self.info.get("attacks", _attacks()))

    @property
    def diagnostics_ok(self) -> bool:
        """True when every convergence check passed."""
        return not self.problems

    @property
    def num_draws(self) -> int:
        """Total draws over all chains."""
        shape = self.draws["spread"].shape
        return int(shape[0] * shape[1])

    def flat(self, name: str) -> np.ndarray:
        """Draws of one parameter as ``(chains * draws, attacks)``."""
        values = self.draws[name]
        return values.reshape(-1, values.shape[-1])

    def defender_parameters(self, draws: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
        """An ensemble for the streaming defender: each parameter as ``(attacks, draws)``.

        The keys and shapes are those of
        :func:`bayes_defense.stream.defender.default_parameters`; draws are
        taken at random from the posterior (without replacement while there
        are enough).

        Examples
        --------
        >>> from bayes_defense.stream.defender import default_parameters
        >>> post = fit_defender(simulate_windows(n_windows=100, seed=0), num_steps=20, num_samples=20,
        ...                     progress=False, check=False, ppc_draws=10)
        >>> params = post.defender_parameters(12, seed=1)
        >>> sorted(params) == sorted(default_parameters(12)), params["spread"].shape
        (True, (8, 12))
        """
        total = self.num_draws
        rng = np.random.default_rng([int(seed), 0xD7A])
        index = rng.choice(total, size=int(draws), replace=int(draws) > total)
        # Keep draws strictly inside (0, 1) and positive: a Beta draw can underflow to 0.
        out = {name: np.clip(self.flat(name)[index].T, 1e-12, None) for name in PARAMETER_NAMES}
        for name in PARAMETER_NAMES[3:]:
            out[name] = np.minimum(out[name], 1 - 1e-9)
        return {name: np.ascontiguousarray(value) for name, value in out.items()}

    def model_parameters(self, draws: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
        """Posterior draws of the cluster model's parameters that the logs identify.

        The defender's phase chain fixes, for each attack, the probability
        that a precursor phase goes on to execution rather than back to
        benign: ``p_execute = precursor_to_execution / (precursor_to_execution
        + precursor_to_benign)``. The result is ``{"<attack>.p_execute": array
        (draws,)}``, ready for ``bd.models.cluster(n, parameters=...)``,
        whose queries then average over these draws and report their spread
        in their intervals. (The fit prior puts this ratio's mean at 0.8, the
        catalogue's default, for attacks the logs never show.)

        Examples
        --------
        >>> import bayes_defense as bd
        >>> post = fit_defender(simulate_windows(n_windows=100, seed=0), num_steps=20, num_samples=20,
        ...                     progress=False, check=False, ppc_draws=10)
        >>> model = bd.models.cluster(4, parameters=post.model_parameters(draws=8))
        >>> p = bd.models.success_probability(model)["replay"]
        >>> bool(p.lower < p.upper)
        True
        """
        total = self.num_draws
        rng = np.random.default_rng([int(seed), 0x5C3])
        index = rng.choice(total, size=int(draws), replace=int(draws) > total)
        to_execution = self.flat("precursor_to_execution")[index]
        to_benign = self.flat("precursor_to_benign")[index]
        ratio = to_execution / (to_execution + to_benign)
        return {f"{attack}.p_execute": np.clip(ratio[:, a], 0.0, 1.0) for a, attack in enumerate(self.attacks)}

    def estimate(self, name: str, attack: str):
        """One parameter's posterior mean and equal-tailed credible interval at ``level``.

        Transition parameters come back as :class:`~bayes_defense.estimate.Probability`.

        Examples
        --------
        >>> post = fit_defender(simulate_windows(n_windows=100, seed=0), num_steps=20, num_samples=20,
        ...                     progress=False, check=False, ppc_draws=10)
        >>> e = post.estimate("benign_to_precursor", "replay")
        >>> 0.0 <= e.lower <= e.mean <= e.upper <= 1.0
        True
        """
        from bayes_defense.estimate import Estimate, Probability

        if name not in PARAMETER_NAMES:
            raise InvalidInputError(f"unknown parameter {name!r}; parameters are {', '.join(PARAMETER_NAMES)}")
        if attack not in self.attacks:
            raise InvalidInputError(f"unknown attack {attack!r}; attacks are {', '.join(self.attacks)}")
        values = self.flat(name)[:, self.attacks.index(attack)]
        tail = (1 - self.level) / 2
        low, high = np.quantile(values, [tail, 1 - tail])
        mean = float(values.mean())
        cls = Estimate if name in ("score_precursor", "score_execution", "spread") else Probability
        ess = float(self.diagnostics.loc[f"{name}[{attack}]", "ess_bulk"]) if self._has_row(name, attack) else float(len(values))
        return cls(mean, min(float(low), mean), max(float(high), mean), level=self.level, ess=ess,
                   backend=f"fit-{self.method}")

    def _has_row(self, name: str, attack: str) -> bool:
        return f"{name}[{attack}]" in self.diagnostics.index

    def interval(self, name: str, level: float | None = None) -> np.ndarray:
        """Equal-tailed credible intervals ``(attacks, 2)`` of one parameter."""
        level = self.level if level is None else float(level)
        tail = (1 - level) / 2
        return np.quantile(self.flat(name), [tail, 1 - tail], axis=0).T

    def site_draws(self) -> dict[str, np.ndarray]:
        """Draws of the fit's own sites, ``(samples, attacks[, 3])`` (for updating)."""
        out = {name: self.flat(name) for name in ("score_precursor", "score_execution", "spread",
                                                  "benign_to_precursor", "execution_to_benign") + _QUIET}
        pe, pb = self.flat("precursor_to_execution"), self.flat("precursor_to_benign")
        out["precursor_exit"] = np.stack([1 - pe - pb, pb, pe], -1)
        return out

    def to_inference_data(self):
        """The posterior as ArviZ data: posterior, sample_stats, observed_data, posterior_predictive.

        Examples
        --------
        >>> post = fit_defender(simulate_windows(n_windows=100, seed=0), num_steps=20, num_samples=20,
        ...                     progress=False, check=False, ppc_draws=10)
        >>> data = post.to_inference_data()
        >>> data.posterior["spread"].dims
        ('chain', 'draw', 'attack')
        """
        dims = {name: ["attack"] for name in PARAMETER_NAMES}
        dims["telemetry_summary"] = ["attack", "phase", "statistic"]
        coords = {"attack": list(self.attacks), "phase": list(_PHASE_GROUPS), "statistic": list(_STATISTICS)}
        groups: dict[str, dict[str, np.ndarray]] = {
            "posterior": dict(self.draws),
            "sample_stats": dict(self.sample_stats),
            "observed_data": {"telemetry_summary": self.observed},
            "posterior_predictive": {"telemetry_summary": self.replicated[None]},
        }
        attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": self.method,
                 "info": json.dumps(self.info), "level": self.level, "problems": json.dumps(self.problems)}
        return inference_data.from_groups(groups, dims=dims, coords=coords, attrs=attrs)

    @property
    def diagnostics(self):
        """``az.summary`` table: one row per parameter and attack."""
        if self._diagnostics is None:
            self._diagnostics = inference_data.summary(self.to_inference_data(),
                                                        var_names=list(PARAMETER_NAMES), level=self.level)
        return self._diagnostics

    def check(self) -> list[str]:
        """Run the convergence checks; return (and record) what failed.

        NUTS: split r_hat below 1.01, bulk and tail ESS at least 100 for every
        parameter, no divergent transitions. SVI: the loss no longer falling
        over the last tenth of the steps (its draws are independent, so r_hat
        and ESS are reported but not judged).
        """
        self.problems = convergence_problems(self.method, self.diagnostics, self.num_draws, self.sample_stats,
                                             self.info.get("loss_trend"))
        return self.problems

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``bayes-defense fit --json`` prints)."""
        return {
            "method": self.method,
            "draws": self.num_draws,
            "windows": self.info.get("windows"),
            "events": self.info.get("events"),
            "runs": self.info.get("runs"),
            "labelled": self.info.get("labelled"),
            **diagnostics_summary(self),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the posterior to a NetCDF-4 file (numbers and strings only; no pickle).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> post = fit_defender(simulate_windows(n_windows=100, seed=0), num_steps=20, num_samples=20,
        ...                     progress=False, check=False, ppc_draws=10)
        >>> path = post.save(pathlib.Path(tempfile.mkdtemp()) / "posterior.nc")
        >>> import bayes_defense as bd
        >>> bool(np.allclose(bd.load_posterior(path).draws["spread"], post.draws["spread"]))
        True
        """
        return save_posterior(self, path)

    def plot_ppc(self, path: str | os.PathLike[str] | None = None):
        """Posterior predictive check figure; see :func:`plot_ppc`."""
        return plot_ppc(self, path)


def fit_defender(incidents: Any, *, labels: Any = None, method: str = "svi",
                 prior: Posterior | FitPrior | None = None, num_samples: int = 1000, num_warmup: int = 500,
                 num_chains: int = 2, num_steps: int = 3000, batch_size: int = 4096, learning_rate: float = 0.02,
                 window: float = 1.0, level: float = 0.9, seed: int = 0, progress: bool | None = None,
                 check: bool = True, allow_unknown_kind: bool = False, ppc_draws: int = 100) -> Posterior:
    """Fit the defender's observation and transition model to logged incidents.

    ``bd.fit("scored", incidents, ...)`` and ``bd.fit(defender, ...)`` come
    here (:func:`bayes_defense.fitting.fit`).

    Parameters
    ----------
    incidents : path-like, (events, labels) pair, WindowFeatures, or a list of them
        Event logs (files or simulation directories; a directory's
        ``labels.json`` is used when present) or precomputed features.
    labels : path-like or list, optional
        Labels of a single incident log; logs without labels are fitted with
        the attack phase as a latent variable.
    method : {"svi", "nuts"}
        SVI (a multivariate normal guide, minibatches of ``batch_size``
        windows; for logs of any size) or NUTS (exact MCMC; small logs).
    prior : Posterior or FitPrior, optional
        Start from an earlier posterior (moment-matched, see
        :meth:`FitPrior.from_draws`) to learn from new incidents; default
        :meth:`FitPrior.default`.
    num_samples, num_warmup, num_chains : int
        Draws kept per chain, NUTS warm-up steps, NUTS chains (SVI: one chain of guide draws).
    num_steps, batch_size, learning_rate : int, int, float
        SVI steps, windows per minibatch, Adam step size.
    window : float
        Seconds per window (the defender's, 1 s by default).
    level : float
        Credible level of reported intervals.
    seed : int
        Seeds the inference.
    progress : bool, optional
        Progress bars (default: when standard error is a terminal).
    check : bool
        Run the convergence checks; failing ones raise a
        :class:`FitDiagnosticsWarning` and set ``diagnostics_ok`` False.
    allow_unknown_kind : bool
        Skip events of unknown kinds instead of refusing the log.
    ppc_draws : int
        Posterior draws replicated for the posterior predictive check.

    Returns
    -------
    Posterior

    Examples
    --------
    >>> truth = {"score_precursor": 3.0, "score_execution": 5.0, "spread": 1.2, "benign_to_precursor": 0.01,
    ...          "precursor_to_execution": 0.05, "precursor_to_benign": 0.01, "execution_to_benign": 0.05}
    >>> data = simulate_windows(truth, n_windows=1500, seed=3)
    >>> post = fit_defender(data, method="svi", num_steps=300, num_samples=200, progress=False, check=False)
    >>> low, high = post.interval("spread", 0.99)[0]
    >>> bool(low < 1.2 < high)
    True
    """
    import time

    check_method(method)
    check_sizes(num_samples=num_samples, num_chains=num_chains, num_steps=num_steps, batch_size=batch_size,
                num_warmup=num_warmup, ppc_draws=ppc_draws)
    if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
        raise InvalidInputError(f"window must be a positive number of seconds, got {window!r}")
    if incidents is None:
        raise InvalidInputError("no incidents given: pass an event log, a simulation directory, "
                                "(events, labels) pairs or WindowFeatures")
    show = sys.stderr.isatty() if progress is None else bool(progress)
    started = time.perf_counter()
    features = _as_features(incidents, labels, float(window), show, allow_unknown_kind)
    if len(features) == 0:
        raise InvalidInputError("the incidents hold no windows to fit; give longer logs")
    if features.scores.shape[1] != len(_attacks()):
        raise InvalidInputError(f"features must have one score column per attack ({len(_attacks())}), "
                                f"got {features.scores.shape[1]}")
    hyper = _hyperprior(prior)
    site_draws, sample_stats, trend = _infer(_Data(features), hyper, method, num_samples=num_samples,
                                             num_warmup=num_warmup, num_chains=num_chains, num_steps=num_steps,
                                             batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                             show=show)
    chains, draws_per_chain = site_draws["spread"].shape[:2]
    flat_sites = {name: value.reshape((chains * draws_per_chain,) + value.shape[2:])
                  for name, value in site_draws.items()}
    defender_draws = {name: value.reshape((chains, draws_per_chain) + value.shape[1:])
                      for name, value in _to_defender(flat_sites).items()}
    rng = np.random.default_rng([seed, 0x99C])
    chosen = rng.choice(chains * draws_per_chain, size=min(ppc_draws, chains * draws_per_chain), replace=False)
    replicated = _replicate({k: v.reshape(-1, v.shape[-1])[chosen] for k, v in defender_draws.items()}, features, seed,
                            float(hyper.incident_scale))
    info = {"attacks": list(_attacks()), "windows": len(features), "events": features.events, "runs": features.runs,
            "labelled": features.labelled, "window": features.window, "seed": seed,
            "prior": hyper.as_dict(), "seconds": round(time.perf_counter() - started, 3),
            "loss_trend": trend, "num_steps": num_steps if method == "svi" else None,
            "batch_size": batch_size if method == "svi" else None}
    posterior = Posterior(defender_draws, method=method, sample_stats=sample_stats,
                          observed=_summaries(features.scores, features.phases), replicated=replicated,
                          info=info, level=level)
    if check:
        problems = posterior.check()
        if problems:
            warnings.warn("fit diagnostics failed, do not trust this posterior as is: " + "; ".join(problems),
                          FitDiagnosticsWarning, stacklevel=3)
    return posterior


def _hyperprior(prior: Posterior | FitPrior | None) -> FitPrior:
    """The fit's prior: an earlier posterior moment-matched, a FitPrior as given, or the default."""
    if isinstance(prior, Posterior):
        # The incident scale is kept from the earlier fit's prior (it is not learned).
        earlier = prior.info.get("prior", {}) if isinstance(prior.info.get("prior"), dict) else {}
        return FitPrior.from_draws(prior.site_draws(), float(earlier.get("incident_scale", 0.5)))
    if isinstance(prior, FitPrior):
        return prior
    if prior is None:
        return FitPrior.default()
    raise InvalidInputError(f"prior must be a defender Posterior, a FitPrior or None, got {type(prior).__name__}")


def _infer(data: _Data, hyper: FitPrior, method: str, *, num_samples: int, num_warmup: int, num_chains: int,
           num_steps: int, batch_size: int, learning_rate: float, seed: int, show: bool):
    """Run SVI or NUTS in float64 on one thread; return ``(site draws, sample_stats, SVI loss trend)``."""
    import torch

    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    # The tensors are small (a minibatch of windows, 64 parameters): thread
    # start-up costs more than it saves, and several-fold on a busy machine.
    torch.set_num_threads(1)
    try:
        if method == "svi":
            site_draws, extra = _run_svi(data, hyper, num_steps=num_steps, batch_size=batch_size,
                                         learning_rate=learning_rate, num_samples=num_samples, seed=seed, show=show)
            return site_draws, {}, loss_trend(extra["losses"])
        site_draws, extra = _run_nuts(data, hyper, num_samples=num_samples, num_warmup=num_warmup,
                                      num_chains=num_chains, seed=seed, show=show)
        return site_draws, {"diverging": extra["diverging"]}, None
    finally:
        torch.set_default_dtype(old_dtype)
        torch.set_num_threads(old_threads)


def posterior_from_groups(path: Path, groups: Mapping[str, Any]) -> Posterior:
    """Rebuild a defender :class:`Posterior` from the groups of its NetCDF file (checked, never trusted).

    ``bd.load_posterior`` reads the file and calls this for files whose
    format is :data:`FORMAT_NAME`.
    """
    posterior = groups["posterior"]
    version = str(posterior.attrs.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise InvalidInputError(f"{path.name} has posterior format version {version!r}; this release reads "
                                f"{FORMAT_VERSION.split('.')[0]}.x; refit with this release")
    from bayes_defense.stream.defender import parameter_problem

    try:
        info = json.loads(str(posterior.attrs.get("info", "{}")))
        problems = json.loads(str(posterior.attrs.get("problems", "[]")))
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{path.name}: the posterior's metadata is not valid JSON; the file is damaged") from None
    if not isinstance(info, dict) or not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
        raise InvalidInputError(f"{path.name}: the posterior's metadata must be an object (info) and a list of strings "
                                f"(problems); the file is damaged or not ours")
    attacks = info.get("attacks", list(_attacks()))
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, str) for a in attacks) \
            or len(set(attacks)) != len(attacks):
        raise InvalidInputError(f"{path.name}: the posterior's attack list {str(attacks)[:80]} is not a list of "
                                f"distinct names; the file is damaged or not ours")
    try:
        level = float(posterior.attrs.get("level", 0.9))
    except (TypeError, ValueError):
        level = math.nan
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"{path.name}: the posterior's credible level {posterior.attrs.get('level')!r} is not "
                                f"in (0, 1)")
    draws = {}
    for name in PARAMETER_NAMES:
        if name in _QUIET and name not in posterior and version == "1.0" and "spread" in posterior:
            # Written before quiet windows were modelled: that model is the one with them at 0.
            draws[name] = np.zeros(np.shape(posterior["spread"].values))
            continue
        if name not in posterior:
            raise InvalidInputError(f"{path.name} lacks the posterior variable {name!r}; the file is damaged or not ours")
        values = np.asarray(posterior[name].values, dtype=float)
        if values.ndim != 3 or values.shape[-1] != len(attacks) or not np.isfinite(values).all():
            raise InvalidInputError(f"{path.name}: posterior variable {name!r} has shape {values.shape} (or non-finite "
                                    f"values); expected (chain, draw, {len(attacks)}) finite numbers")
        # Refused, not clipped: a negative spread or a probability of 7 means the file is not a fit.
        problem = parameter_problem(name, values)
        if problem:
            raise InvalidInputError(f"{path.name}: posterior variable {name!r} {problem}; the file is damaged or "
                                    f"not a fit")
        draws[name] = values
    shapes = {values.shape for values in draws.values()}
    if len(shapes) != 1:
        raise InvalidInputError(f"{path.name}: posterior variables differ in shape ({sorted(shapes)}); the file is damaged")
    stats = {name: np.asarray(values.values) for name, values in groups.get("sample_stats", {}).items()} \
        if "sample_stats" in groups else {}
    observed = groups["observed_data"]["telemetry_summary"].values if "observed_data" in groups else np.zeros(0)
    replicated = (groups["posterior_predictive"]["telemetry_summary"].values[0]
                  if "posterior_predictive" in groups else np.zeros(0))
    return Posterior(draws, method=str(posterior.attrs.get("method", "")), sample_stats=stats, observed=observed,
                     replicated=replicated, info=info, level=level,
                     problems=problems)


def plot_ppc(posterior: Posterior, path: str | os.PathLike[str] | None = None):
    """Posterior predictive check: observed telemetry summaries against replicated ones.

    One panel per summary statistic (share of windows with positive
    evidence, mean score, 90th percentile); per attack and phase, the
    replicated values' 90% interval as a bar and the observed value as a dot.
    A dot outside its bar flags a feature of the logs the model does not
    reproduce.

    Parameters
    ----------
    posterior : Posterior
    path : path-like, optional
        Where to save the figure (PNG, PDF or SVG by suffix).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> post = fit_defender(simulate_windows(n_windows=100, seed=0), num_steps=20, num_samples=20,
    ...                     progress=False, check=False, ppc_draws=10)
    >>> len(plot_ppc(post).axes)
    3
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    observed, replicated = posterior.observed, posterior.replicated
    if observed.size == 0 or replicated.size == 0:
        raise InvalidInputError("this posterior carries no posterior predictive draws to plot")
    attacks = posterior.attacks
    figure, axes = plt.subplots(1, len(_STATISTICS), figsize=(5 * len(_STATISTICS), 0.45 * len(attacks) * 3 + 1.5),
                                squeeze=False)
    colours = {"benign": "tab:green", "precursor": "tab:orange", "execution": "tab:red", "all": "tab:blue"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: a phase absent from the logs
        low = np.nanquantile(replicated, 0.05, axis=0)
        high = np.nanquantile(replicated, 0.95, axis=0)
    for s, statistic in enumerate(_STATISTICS):
        ax = axes[0, s]
        labels, position = [], 0
        for a, attack in enumerate(attacks):
            for g, group in enumerate(_PHASE_GROUPS):
                if not np.isfinite(observed[a, g, s]) or (group == "all" and posterior.info.get("labelled")):
                    continue
                ax.plot([low[a, g, s], high[a, g, s]], [position, position], color=colours[group], linewidth=4,
                        alpha=0.4, solid_capstyle="butt")
                ax.plot(observed[a, g, s], position, "o", color="black", markersize=3)
                labels.append(f"{attack} / {group}")
                position += 1
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(statistic.replace("_", " "))
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_xlabel("evidence score summary: bar = replicated 90% interval, dot = observed")
    figure.suptitle(f"posterior predictive check ({posterior.method}, {posterior.info.get('windows')} windows)")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return figure

