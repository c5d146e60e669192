"""The compiled per-window likelihood of :mod:`bayes_defense.stream.evidence`.

The model is written down in :func:`bayes_defense.stream.evidence.window_log_likelihood`;
this module holds only its loops, compiled by numba (cached on disk), so
that an edit to the evidence module does not force a recompilation.

Replicas whose signal rows are the same give the same terms, so the
kernel works on the distinct rows and their counts (and on the distinct
pairs of row and attacker prior for the posteriors): a window costs what
its distinct rows cost, not what its replicas do. The sum over the
replicas other than the attacker's is a sum over the others (prefix and
suffix sums), not the total minus the attacker's term, which loses every
digit when one replica carries almost all of the total.
"""

import math

import numpy as np
from numba import njit

__all__ = ["likelihood", "predict", "normalise", "log_sum"]

@njit(cache=True, nogil=True)
def log_sum(values, counts, size):
    """``log sum_i counts[i] * exp(values[i])`` over the first ``size`` entries, shifted by their peak."""
    peak = -np.inf
    for i in range(size):
        peak = max(peak, values[i])
    if not math.isfinite(peak):
        peak = 0.0
    acc = 0.0
    for i in range(size):
        acc += counts[i] * math.exp(values[i] - peak)
    return peak + (math.log(acc) if acc > 0.0 else -np.inf)


@njit(cache=True, nogil=True)
def _same_row(on, off, q, r):
    for s in range(on.shape[1]):
        if on[q, s] != on[r, s] or off[q, s] != off[r, s]:
            return False
    return True


@njit(cache=True, nogil=True)
def _classes(x, log_weights):
    """Indicators of each row, the classes of the replica rows and the attacker slots.

    A row's signal is on where ``x > 0.5``, off where ``1 - x > 0.5`` (neither
    where ``x`` is nan or exactly 0.5). Replicas with equal indicators share a
    row class (their terms are equal); those that also have equal attacker
    priors share a slot (their posterior terms are equal). The unattributed
    row is the last row class and the last slot, counted once.

    Returns ``(on, off, row_of, rows_used, row_count, slot_of, slot_row, slot_first, slot_count)``.
    """
    rows, signals = x.shape
    replicas = rows - 1
    attacks = log_weights.shape[0]
    on = np.zeros((rows, signals), np.bool_)
    off = np.zeros((rows, signals), np.bool_)
    for j in range(rows):
        for s in range(signals):
            v = x[j, s]
            if v == v:
                on[j, s] = v > 0.5
                off[j, s] = (1.0 - v) > 0.5
    row_of = np.empty(replicas, np.int64)
    row_first = np.empty(rows, np.int64)
    row_count = np.zeros(rows)
    slot_of = np.empty(replicas, np.int64)
    slot_row = np.empty(rows, np.int64)
    slot_first = np.empty(rows, np.int64)
    slot_count = np.zeros(rows)
    used = 0
    slots = 0
    for r in range(replicas):
        found = -1
        for c in range(used):
            if _same_row(on, off, row_first[c], r):
                found = c
                break
        if found < 0:
            found = used
            row_first[used] = r
            used += 1
        row_of[r] = found
        row_count[found] += 1.0
        slot = -1
        for c in range(slots):
            if slot_row[c] != found:
                continue
            q = slot_first[c]
            same = True
            for a in range(attacks):
                if log_weights[a, q] != log_weights[a, r]:
                    same = False
                    break
            if same:
                slot = c
                break
        if slot < 0:
            slot = slots
            slot_row[slots] = found
            slot_first[slots] = r
            slots += 1
        slot_of[r] = slot
        slot_count[slot] += 1.0
    row_first[used] = replicas
    row_count[used] = 1.0
    slot_row[slots] = used
    slot_first[slots] = replicas
    slot_count[slots] = 1.0
    return (on, off, row_of, row_first[:used + 1], row_count[:used + 1], slot_of, slot_row[:slots + 1],
            slot_first[:slots + 1], slot_count[:slots + 1])


@njit(cache=True, nogil=True)
def _add(row, source):
    for m in range(row.shape[0]):
        row[m] += source[m]


@njit(cache=True, nogil=True)
def _terms(stacked, on, off, row_first):
    """Per row class, the sum over its row's signals of the stacked table: ``(classes, width)``.

    Rows are added in the table's order (signals on, then signals off), as
    a row-wise sum of the selected rows of ``stacked`` adds them; the
    unattributed row (the last class) needs only the last of each cell's four roles.
    """
    signals = on.shape[1]
    width = stacked.shape[1]
    classes = row_first.shape[0]
    terms = np.zeros((classes, width))
    for c in range(classes):
        q = row_first[c]
        for half in range(2):
            flags = on if half == 0 else off
            for s in range(signals):
                if not flags[q, s]:
                    continue
                if c < classes - 1:
                    _add(terms[c], stacked[half * signals + s])
                else:
                    for m in range(3, width, 4):
                        terms[c, m] += stacked[half * signals + s, m]
    return terms


@njit(cache=True, nogil=True)
def likelihood(stacked, x, log_weights, fault_prior, total_ll, by_position, by_fault, with_attacker):
    """Fill ``total_ll`` ``(D, A, K)`` and, with ``with_attacker``, the two log posteriors.

    ``stacked`` is :attr:`~bayes_defense.stream.evidence.SignalTables.stacked`
    ``(2 S, D * A * K * G * 4)``, ``x`` the window's values ``(R + 1, S)``,
    ``log_weights`` the attacker's log prior per attack ``(A, R + 1)``,
    ``fault_prior`` ``(D, G)``; ``by_position`` ``(D, A, K, R + 1)`` and
    ``by_fault`` ``(D, A, K, G)`` are written only when ``with_attacker``.
    """
    replicas = x.shape[0] - 1
    draws, attacks, stages = total_ll.shape
    faults = fault_prior.shape[1]
    on, off, row_of, row_first, row_count, slot_of, slot_row, slot_first, slot_count = _classes(x, log_weights)
    terms = _terms(stacked, on, off, row_first)
    classes = row_first.shape[0] - 1      # replica row classes; the unattributed row is ``classes``
    slots = slot_first.shape[0]           # attacker slots, the outside one last
    log_replicas = math.log(replicas) if replicas > 0 else 0.0
    ones = np.ones(max(faults, slots))
    position = np.empty((faults, classes + 1))
    spread = np.empty(classes + 1)
    suffix = np.empty(classes + 1)
    joint = np.empty((slots, faults))
    column = np.empty(slots)
    by_slot = np.empty(slots)
    weight = np.empty(slots)
    for block in range(draws * attacks * stages):
        d = block // (attacks * stages)
        a = (block // stages) % attacks
        k = block % stages
        for g in range(faults):
            o = (block * faults + g) * 4
            base = 0.0
            for c in range(classes):
                base += row_count[c] * terms[c, o]
            base += terms[classes, o + 3]
            if replicas == 0:
                position[g, 0] = base
                continue
            peak = -np.inf
            for c in range(classes):
                peak = max(peak, terms[c, o + 1] - terms[c, o])
            total = 0.0
            for c in range(classes):
                spread[c] = math.exp((terms[c, o + 1] - terms[c, o]) - peak)
                total += row_count[c] * spread[c]
            # The fault at another replica than the attacker's: the classes before and after the
            # attacker's, and the other members of its own (no subtraction from the total).
            after = 0.0
            for c in range(classes - 1, -1, -1):
                suffix[c] = after
                after += row_count[c] * spread[c]
            before = 0.0
            for c in range(classes):
                rest = (before + suffix[c]) + (row_count[c] - 1.0) * spread[c]
                before += row_count[c] * spread[c]
                # log(rest * exp(u) + exp(v)) with one exp and one log: shift by the larger exponent.
                u = (terms[c, o + 2] - terms[c, o]) + peak
                v = terms[c, o + 3] - terms[c, o]
                if rest > 0.0 and u >= v:
                    inside = u + math.log(rest + math.exp(v - u))
                elif rest > 0.0:
                    inside = v + math.log1p(rest * math.exp(u - v))
                else:
                    inside = v
                position[g, c] = (inside - log_replicas) + base
            position[g, classes] = ((peak + math.log(total)) - log_replicas) + base
        for c in range(slots):
            weight[c] = log_weights[a, slot_first[c]]
            row = slot_row[c]
            for g in range(faults):
                joint[c, g] = (position[g, row] + fault_prior[d, g]) + weight[c]
            by_slot[c] = log_sum(joint[c], ones, faults)
        ll = log_sum(by_slot, slot_count, slots)
        total_ll[d, a, k] = ll
        if not with_attacker:
            continue
        for r in range(replicas):
            by_position[d, a, k, r] = by_slot[slot_of[r]] - ll
        by_position[d, a, k, replicas] = by_slot[slots - 1] - ll
        for g in range(faults):
            for c in range(slots):
                column[c] = joint[c, g]
            by_fault[d, a, k, g] = log_sum(column, slot_count, slots) - ll


@njit(cache=True, nogil=True)
def predict(log_faults, log_transition, out):
    """``out[d, j] = log sum_i exp(log_faults[d, i] + log_transition[d, i, j])`` (one fault-chain step)."""
    draws, states = log_faults.shape
    ones = np.ones(states)
    column = np.empty(states)
    for d in range(draws):
        for j in range(states):
            for i in range(states):
                column[i] = log_faults[d, i] + log_transition[d, i, j]
            out[d, j] = log_sum(column, ones, states)


@njit(cache=True, nogil=True)
def normalise(posterior, floor, out):
    """``out[d] = max(posterior[d] - log sum exp posterior[d], floor)`` per draw."""
    draws, states = posterior.shape
    ones = np.ones(states)
    for d in range(draws):
        norm = log_sum(posterior[d], ones, states)
        for j in range(states):
            out[d, j] = max(posterior[d, j] - norm, floor)
