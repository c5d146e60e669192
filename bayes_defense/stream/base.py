"""What every streaming defender shares: settings, alerts, beliefs, and how events are admitted.

A defender subclasses :class:`DefenderBase` and supplies what a window
means: ``_ingest(ts, node, kind, value, attrs)`` for each accepted event,
``_close_window()`` when the stream moves past a window (it updates
``self.belief`` and queues alerts in ``self._pending_alerts``), plus its own
``reset``, ``state_dict``, ``load_state_dict`` and ``_from_checkpoint``. The
base class decides which events are accepted, in one place for every
defender: malformed, non-finite, out-of-order, duplicated (attrs included),
unknown and too-far-ahead events are rejected with a reason and counted,
and never change the belief (DESIGN.md section 5).

The admission state a subclass's ``reset`` must create is listed in
:data:`ADMISSION_STATE`; :meth:`DefenderBase._reset_admission` creates it.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.stream.schema import KNOWN_KINDS, Event, attrs_depth_ok, finite_float

__all__ = ["ADMISSION_STATE", "Alert", "Belief", "DefenderBase", "SETTINGS", "check_settings"]

_KNOWN = frozenset(KNOWN_KINDS)
#: The attributes :meth:`DefenderBase._reset_admission` creates (part of every checkpoint).
ADMISSION_STATE = ("accepted", "rejected", "windows", "_current", "_last_ts", "_held", "_seen")

@dataclass(frozen=True)
class Alert:
    """One alert: an attack hypothesis crossed its threshold on its lower bound.

    Examples
    --------
    >>> Alert(12.0, "replay", ("r3",), 0.97, 0.91, 0.99, "precursor", "rate_limit").to_dict()["attack"]
    'replay'
    """

    ts: float
    attack: str
    nodes: tuple[str, ...]
    probability: float
    lower: float
    upper: float
    phase: str
    countermeasure: str

    def to_dict(self) -> dict[str, Any]:
        """Return the alert as the ``alerts.jsonl`` record."""
        return {"ts": self.ts, "attack": self.attack, "nodes": list(self.nodes),
                "probability": self.probability, "lower": self.lower, "upper": self.upper,
                "phase": self.phase, "countermeasure": self.countermeasure}


@dataclass(frozen=True)
class Belief:
    """The defender's belief after its latest window update.

    Arrays have one row per attack in :attr:`attacks` and columns (mean,
    lower, upper); :meth:`probability` wraps one in a
    :class:`bayes_defense.estimate.Probability`.

    Attributes
    ----------
    ts : float
        End of the last window folded in.
    precursor, execution, within_horizon, active : numpy.ndarray
        Probability of the precursor phase, of execution, that execution is
        under way or starts within the horizon, and of precursor or execution.
    suspects : dict
        Attack -> suspected nodes.
    alerts : tuple of Alert
        Alerts raised by the latest window update.
    countermeasures : Mapping
        Attack -> recommended countermeasure from :func:`bayes_defense.plan`
        given that attack, its suspects and its likelier phase (planned on
        first read of a key, then cached; see :mod:`bayes_defense.stream.recommend`).

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.tile([0.2, 0.1, 0.3], (2, 1))
    >>> belief = Belief(5.0, 0.9, rows, rows, rows, rows, attacks=("replay", "sybil"))
    >>> float(belief.probability("sybil", "active").mean), belief.most_likely
    (0.2, 'replay')
    """

    ts: float
    level: float
    precursor: np.ndarray
    execution: np.ndarray
    within_horizon: np.ndarray
    active: np.ndarray
    suspects: dict[str, tuple[str, ...]] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()
    countermeasures: Mapping[str, str] = field(default_factory=dict, compare=False)
    attacks: tuple = field(default_factory=lambda: _tracked())

    def probability(self, attack: str, what: str = "active"):
        """Return one :class:`~bayes_defense.estimate.Probability`.

        Parameters
        ----------
        attack : str
            One of :attr:`attacks`.
        what : {"precursor", "execution", "within_horizon", "active"}

        Examples
        --------
        >>> import numpy as np
        >>> rows = np.array([[0.5, 0.4, 0.7]])
        >>> Belief(1.0, 0.9, rows, rows, rows, rows, attacks=("sybil",)).probability("sybil").upper
        0.7
        """
        from bayes_defense.estimate import Probability

        if attack not in self.attacks:
            raise InvalidInputError(f"unknown attack {attack!r}; the defender tracks {', '.join(self.attacks)}")
        row = getattr(self, what)[self.attacks.index(attack)]
        return Probability(float(row[0]), float(row[1]), float(row[2]), level=self.level, backend="ensemble")

    @property
    def most_likely(self) -> str:
        """The attack with the highest mean probability of being active."""
        return self.attacks[int(np.argmax(self.active[:, 0]))]



def _non_finite(value: Any, *, allow_minus_inf: bool = False) -> str:
    """Describe the first NaN or infinity inside ``value`` (containers and objects), or return ''."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item != item or (item in (math.inf, -math.inf) and not (allow_minus_inf and item == -math.inf)):
                return f"a non-finite number ({item})"
        elif isinstance(item, np.ndarray):
            if item.dtype.kind == "f" and not np.all(np.isfinite(item)):
                return "an array with non-finite numbers"
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset, deque)):
            stack.extend(item)
        elif hasattr(item, "__dict__") or hasattr(type(item), "__slots__"):
            names = [n for c in type(item).__mro__ for n in getattr(c, "__slots__", ())]
            stack.extend(getattr(item, n) for n in names if hasattr(item, n))
            stack.extend(getattr(item, "__dict__", {}).values())
    return ""


def _real(value: Any) -> bool:
    # A number of the wrong size (inf, NaN, 10**400) rather than no number at all.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _attrs_key(attrs: dict) -> Any:
    """A hashable key of ``attrs`` for the duplicate check, or None when they nest too deep."""
    try:
        return frozenset(attrs.items())
    except TypeError:  # nested lists or objects
        if not attrs_depth_ok(attrs):
            return None
        return _freeze(attrs)


def _freeze(value: Any) -> Any:
    # Depth is bounded by MAX_ATTRS_DEPTH (checked before), so this recursion is too.
    if isinstance(value, dict):
        return frozenset((key, _freeze(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value



#: Every defender's settings: name -> (type, low, high, low inclusive, high inclusive, meaning);
#: one table for the constructors and for load_state_dict.
SETTINGS: dict[str, tuple[type, float, float, bool, bool, str]] = {
    "window": (float, 0.0, math.inf, False, False, "seconds per window"),
    "horizon": (float, 0.0, math.inf, False, False, "seconds ahead"),
    "threshold": (float, 0.0, 1.0, False, True, "a probability"),
    "rearm": (float, 0.0, 1.0, True, True, "a probability"),
    "level": (float, 0.0, 1.0, False, False, "a credible level"),
    "baseline_rate": (float, 0.0, 1.0, False, True, "a weight"),
    "duplicate_memory": (int, 0, 10**7, True, True, "a number of events"),
    "rearm_windows": (int, 0, 10**9, True, True, "a number of windows"),
    "confirm_windows": (int, 1, 10**4, True, True, "a number of windows"),
    "max_clock_skew": (float, 0.0, math.inf, False, True, "seconds"),
    "clock_confirm": (int, 1, 10**4, True, True, "a number of events"),
}


def check_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a defender's settings (:data:`SETTINGS`); return them converted to floats and ints.

    Examples
    --------
    >>> settings = dict(window=1, horizon=60, threshold=0.8, rearm=0.3, level=0.9, baseline_rate=0.02,
    ...                 duplicate_memory=4096, rearm_windows=60, confirm_windows=1, max_clock_skew=300,
    ...                 clock_confirm=3)
    >>> check_settings(settings)["window"]
    1.0
    >>> check_settings({**settings, "threshold": 1.5})
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: threshold must be a probability in (0.0, 1.0]; got '1.5'
    """
    out: dict[str, Any] = {}
    for name, (kind, low, high, low_in, high_in, meaning) in SETTINGS.items():
        value = values[name]
        number = None if isinstance(value, bool) else (
            finite_float(value) if not (kind is float and value == math.inf and high == math.inf and high_in)
            else math.inf)
        if kind is int and number is not None and number != int(number):
            number = None
        ok = number is not None and (number > low or (low_in and number == low)) and (
            number < high or (high_in and number == high))
        if not ok:
            bounds = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise InvalidInputError(f"{name} must be {meaning} in {bounds}{' (a whole number)' if kind is int else ''}; "
                                    f"got {str(value)[:40]!r}")
        out[name] = int(number) if kind is int else float(number)
    return out



def upgrade_state(state: Mapping[str, Any], confirm_windows: int) -> Mapping[str, Any]:
    """A defender state written before ``confirm_windows`` was a setting, in today's keys; others as given.

    Such a state has neither ``confirm_windows`` nor ``_confirm``: its
    defender confirmed alerts over ``confirm_windows`` windows (the value it
    had then, given here) and counted them in ``_quiet`` while armed. Its
    resumed run raises the alerts the uninterrupted one would.

    Examples
    --------
    >>> old = {"_armed": [True, False], "_quiet": [1, 7]}
    >>> new = upgrade_state(old, 2)
    >>> new["confirm_windows"], new["_confirm"], new["_quiet"]
    (2, [1, 0], [0, 7])
    """
    if not isinstance(state, Mapping) or "confirm_windows" in state or "_confirm" in state:
        return state
    armed, quiet = state.get("_armed"), state.get("_quiet")
    if not isinstance(armed, list) or not isinstance(quiet, list) or len(armed) != len(quiet):
        return state   # malformed: the defender's own check says what is wrong
    upgraded = dict(state)
    upgraded["confirm_windows"] = confirm_windows
    upgraded["_confirm"] = [q if a is True else 0 for a, q in zip(armed, quiet, strict=True)]
    upgraded["_quiet"] = [0 if a is True else q for a, q in zip(armed, quiet, strict=True)]
    return upgraded


def check_episode_counts(state: Mapping[str, Any], count: int) -> None:
    """Refuse a state whose ``_armed`` flags and ``_confirm``/``_quiet`` counts are not one per hypothesis.

    Examples
    --------
    >>> check_episode_counts({"_armed": [True], "_confirm": [0], "_quiet": [-1]}, 1)
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: _armed, _confirm and _quiet must hold 1 flags and counts
    """
    if (len(state["_armed"]) != count or any(type(x) is not bool for x in state["_armed"])
            or any(len(state[key]) != count or any(type(x) is not int or x < 0 for x in state[key])
                   for key in ("_confirm", "_quiet"))):
        raise InvalidInputError(f"_armed, _confirm and _quiet must hold {count} flags and counts")


def _tracked() -> tuple:
    from bayes_defense.models.registry import tracked_attacks

    return tracked_attacks()


class DefenderBase:
    """Event admission shared by the streaming defenders (module docstring).

    Subclasses set :attr:`_known_kinds` (the kinds they accept; default the
    schema-1.0 kinds) and implement ``_ingest`` and ``_close_window``.

    Examples
    --------
    >>> class Counter(DefenderBase):
    ...     def __init__(self):
    ...         self.window, self.duplicate_memory, self.max_clock_skew, self.clock_confirm = 1.0, 100, 300.0, 1
    ...         self._reset_admission()
    ...         self.belief, self.kinds, self._pending_alerts = None, [], []
    ...     def _ingest(self, ts, node, kind, value, attrs):
    ...         self.kinds.append(kind)
    ...     def _close_window(self):
    ...         self.windows += 1
    >>> d = Counter()
    >>> _ = d.observe_batch([Event(t, "r0", "peer_churn", 0.0, {}) for t in (1.0, 2.0, 2.0, 0.5)])
    >>> d.accepted, d.rejected, d.windows
    (2, {'duplicate': 1, 'out_of_order': 1}, 1)
    """

    _known_kinds: frozenset = _KNOWN

    def _reset_admission(self) -> None:
        """Create the admission state (:data:`ADMISSION_STATE`): nothing seen yet."""
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.windows = 0
        self._current = -1  # index of the open window
        self._last_ts = -math.inf
        self._held: list[tuple[float, str, str, float | None, dict]] = []  # events ahead of the clock, held
        self._seen: set = set()  # keys of the open window's events, for duplicates

    def _episode(self, index: int, mean: float, over: bool) -> bool:
        """Whether hypothesis ``index`` alerts now: one alert per episode (DESIGN.md section 5).

        An armed hypothesis alerts when it has been ``over`` (its lower bound
        over the threshold) for ``confirm_windows`` windows in a row, and is
        disarmed; a disarmed one re-arms after ``rearm_windows`` windows in a
        row with its mean below ``rearm``. Subclasses keep ``_armed``,
        ``_confirm`` (the windows in a row over the threshold while armed) and
        ``_quiet`` (the quiet windows in a row while disarmed), one entry per
        hypothesis.
        """
        if self._armed[index]:
            self._confirm[index] = self._confirm[index] + 1 if over else 0
            if self._confirm[index] >= self.confirm_windows:
                self._armed[index] = False
                self._confirm[index] = 0
                return True
            return False
        self._quiet[index] = self._quiet[index] + 1 if mean < self.rearm else 0
        if self._quiet[index] >= self.rearm_windows:
            self._armed[index] = True
            self._quiet[index] = 0
        return False

    def _publish(self, raised: list) -> None:
        """Attach the alerts a window raised to the belief and queue them for :meth:`pop_alerts`."""
        if raised:
            self.belief = replace(self.belief, alerts=tuple(raised))
            self.alerts.extend(raised)
            self._pending_alerts.extend(raised)

    def _reject(self, reason: str) -> Belief:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return self.belief

    def observe(self, event: Any) -> Belief:
        """Fold one event in and return the current belief.

        Malformed, non-finite, out-of-order (earlier than the open window),
        duplicated (attrs included), unknown and too-far-ahead events are
        rejected: counted in :attr:`rejected` by reason, and the belief is
        returned unchanged. Never raises on bad input.

        Examples
        --------
        >>> from bayes_defense.stream.scored import ScoredDefender
        >>> d = ScoredDefender(planner=None)
        >>> for ts in (1.0, 1.5, 2.0, 1e15, 2.5, 2.5):  # one far-future event, one duplicate
        ...     _ = d.observe(Event(ts, "r0", "peer_churn", 0.0, {}))
        >>> d.accepted, d.rejected
        (4, {'clock_skew': 1, 'duplicate': 1})
        """
        parsed = self._parse(event)
        if type(parsed) is str:
            return self._reject(parsed)
        return self._admit(parsed)

    @staticmethod
    def _parse(event: Any) -> tuple[float, str, str, float | None, dict] | str:
        """Return the event's checked fields, or the reason to reject it."""
        if not isinstance(event, tuple):
            if not isinstance(event, Mapping):
                return "malformed"
            try:
                event = Event.from_dict(event, allow_unknown_kind=True)
            except ValueError as error:
                return "non_finite" if getattr(error, "reason", "") in ("bad_ts", "bad_value") and _real(
                    event.get("ts")) and _real(event.get("value", 0.0)) else "malformed"
            except RecursionError:  # pragma: no cover - attrs_depth_ok is iterative
                return "malformed"
        try:
            ts, node, kind, value, attrs = event
        except (TypeError, ValueError):
            return "malformed"
        seconds = finite_float(ts)
        if seconds is None:
            return "non_finite" if _real(ts) else "malformed"
        if value is not None:
            number = finite_float(value)
            if number is None:
                return "non_finite" if _real(value) else "malformed"
            value = number
        if not isinstance(node, str) or not node or not isinstance(kind, str) or not isinstance(attrs, dict):
            return "malformed"
        if kind not in _KNOWN:
            return "unknown_kind"
        return seconds, node, kind, value, attrs

    def _admit(self, event: tuple[float, str, str, float | None, dict]) -> Belief:
        """Accept an event within the clock skew; hold one further ahead until others confirm it."""
        ts = event[0]
        held = self._held
        ahead = ts > self._last_ts + self.max_clock_skew
        if not held and not ahead:
            return self._accept(event)
        if not ahead:
            # The stream goes on from the old clock: what was held was a lone jump.
            self._drop_held()
            return self._accept(event)
        if held and abs(ts - held[0][0]) > self.max_clock_skew:
            # The held events and this one disagree with each other as well.
            self._drop_held()
            held = self._held
        held.append(event)
        if len(held) >= self.clock_confirm:
            self._held = []
            for confirmed in held:
                self._accept(confirmed)
        return self.belief

    def _drop_held(self) -> None:
        for _ in self._held:
            self._reject("clock_skew")
        self._held = []

    def _accept(self, event: tuple[float, str, str, float | None, dict]) -> Belief:
        ts, node, kind, value, attrs = event
        attrs_key = _attrs_key(attrs)
        if attrs_key is None:
            return self._reject("malformed")
        position = ts / self.window
        if position - position != 0.0:  # a finite ts that overflows in window units
            return self._reject("non_finite")
        index = math.ceil(position - 1e-9)
        if index < self._current:
            return self._reject("out_of_order")
        if index > self._current:
            if self._current >= 0:
                self._close_window()
            self._current = index
            self._seen = set()
        key = (ts, node, kind, value, attrs_key)
        seen = self._seen
        if key in seen:
            return self._reject("duplicate")
        if len(seen) < self.duplicate_memory:
            seen.add(key)
        self.accepted += 1
        if ts > self._last_ts:
            self._last_ts = ts
        self._ingest(ts, node, kind, value, attrs)
        return self.belief

    def observe_batch(self, events: Iterable[Any]) -> Belief:
        """Fold in many events; return the belief after the last one.

        Examples
        --------
        >>> from bayes_defense.stream.scored import ScoredDefender
        >>> d = ScoredDefender(planner=None)
        >>> _ = d.observe_batch([Event(float(t), "r0", "peer_churn", 0.0, {}) for t in (1, 2, 3)])
        >>> d.accepted, d.windows
        (3, 2)
        """
        # The loop below is observe() inlined for well-formed Event tuples of
        # floats and strings (the common case), to save a call and the
        # generic checks per event; anything else goes through observe().
        observe = self.observe
        ingest = self._ingest
        known = self._known_kinds
        window = self.window
        memory = self.duplicate_memory
        skew = self.max_clock_skew
        event_type = Event
        float_type = float
        accepted = 0
        limit = self._last_ts + skew
        try:
            for event in events:
                if type(event) is not event_type:
                    self.accepted += accepted
                    accepted = 0
                    observe(event)
                    limit = self._last_ts + skew
                    continue
                ts, node, kind, value, attrs = event
                if (type(ts) is not float_type or type(node) is not str or not node or type(attrs) is not dict
                        or (value is not None and type(value) is not float_type) or ts - ts != 0.0
                        or (value is not None and value - value != 0.0) or kind not in known
                        or ts > limit or self._held):
                    self.accepted += accepted
                    accepted = 0
                    observe(event)
                    limit = self._last_ts + skew
                    continue
                try:
                    attrs_key = frozenset(attrs.items())
                except TypeError:  # nested attrs: the careful path
                    self.accepted += accepted
                    accepted = 0
                    observe(event)
                    limit = self._last_ts + skew
                    continue
                position = ts / window
                if position - position != 0.0:  # a finite ts that overflows in window units
                    self.accepted += accepted
                    accepted = 0
                    observe(event)
                    limit = self._last_ts + skew
                    continue
                index = math.ceil(position - 1e-9)
                current = self._current
                if index != current:
                    if index < current:
                        self._reject("out_of_order")
                        continue
                    if current >= 0:
                        self._close_window()
                    self._current = index
                    self._seen = set()
                key = (ts, node, kind, value, attrs_key)
                seen = self._seen
                if key in seen:
                    self._reject("duplicate")
                    continue
                if len(seen) < memory:
                    seen.add(key)
                accepted += 1
                if ts > self._last_ts:
                    self._last_ts = ts
                    limit = ts + skew
                ingest(ts, node, kind, value, attrs)
        finally:
            self.accepted += accepted
        return self.belief

    def observe_columns(self, columns: Any) -> Belief:
        """Fold in a block of events given as :class:`~bayes_defense.stream.columnar.Columns`; return the belief.

        The same counts, beliefs, alerts and state as :meth:`observe_batch`
        on the block's events, with admission computed on arrays for a
        checked block (:mod:`bayes_defense.stream.columnar`).

        Examples
        --------
        >>> from bayes_defense.stream.columnar import Columns
        >>> from bayes_defense.stream.scored import ScoredDefender
        >>> d = ScoredDefender(planner=None)
        >>> _ = d.observe_columns(Columns.from_rows([(float(t), "r0", "peer_churn", 0.0, {}) for t in (1, 2, 3)]))
        >>> d.accepted, d.windows
        (3, 2)
        """
        from bayes_defense.stream.columnar import observe_columns

        return observe_columns(self, columns)

    def _columnar(self) -> bool:
        """Whether :meth:`observe_columns` may admit on arrays: this defender keeps the base admission.

        A subclass that changes how events are admitted (``observe``,
        ``observe_batch`` or ``_parse``) must say whether the array rules
        still hold for rows of known kinds by overriding this.
        """
        cls = type(self)
        return (cls.observe is DefenderBase.observe and cls.observe_batch is DefenderBase.observe_batch
                and cls._parse is DefenderBase._parse)

    def _ingest_columns(self, ts: list, node: list, kind: list, value: list, attrs: list) -> None:
        """Fold in accepted rows of the open window, in order (default: :meth:`_ingest` per row).

        A subclass may fold them in at once, with the end state that ``_ingest`` on each gives. The
        counts (``accepted``, ``rejected``) are those of the whole window when this is called.
        """
        ingest = self._ingest
        for row in zip(ts, node, kind, value, attrs, strict=True):
            ingest(*row)

    def flush(self) -> Belief:
        """Close the open window (at the end of a stream) and return the belief.

        Events still held ahead of the clock (see ``max_clock_skew``) are
        decided first: accepted when the stream had no clock yet (a stream
        shorter than ``clock_confirm`` events), rejected as ``"clock_skew"``
        otherwise.
        """
        if self._held:
            if self._last_ts == -math.inf:
                held, self._held = self._held, []
                for event in held:
                    self._accept(event)
            else:
                self._drop_held()
        if self._current >= 0:
            self._close_window()
            self._current += 1
        return self.belief

    def pop_alerts(self) -> list[Alert]:
        """Return the alerts raised since the last call, oldest first.

        Examples
        --------
        >>> from bayes_defense.stream.scored import ScoredDefender
        >>> ScoredDefender(planner=None).pop_alerts()
        []
        """
        alerts, self._pending_alerts = self._pending_alerts, []
        return alerts

