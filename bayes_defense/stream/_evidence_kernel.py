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

__all__ = ["likelihood", "predict", "normalise", "log_sum", "chain_step", "bands", "follow_positions",
           "predict_positions", "update_positions"]

_LOG2 = math.log(2.0)


@njit(cache=True, nogil=True)
def log_add(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` by the branches of numpy's ``logaddexp``."""
    if a == b:
        return a + _LOG2
    tmp = a - b
    if tmp > 0:
        return a + math.log1p(math.exp(-tmp))
    if tmp <= 0:
        return b + math.log1p(math.exp(tmp))
    return tmp


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
def _classes(x, log_weights, fault_position):
    """Indicators of each row, the classes of the replica rows and the attacker slots.

    A row's signal is on where ``x > 0.5``, off where ``1 - x > 0.5`` (neither
    where ``x`` is nan or exactly 0.5). Replicas with equal indicators share a
    row class (their terms are equal); those that also have equal attacker
    priors and equal fault position priors (``fault_position[:, :, r]``, when
    given) share a slot (their posterior terms are equal). The unattributed
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
            if same and fault_position.size:
                for d in range(fault_position.shape[0]):
                    for g in range(fault_position.shape[1]):
                        if fault_position[d, g, q] != fault_position[d, g, r]:
                            same = False
                            break
                    if not same:
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


# The fast path works in linear space on ratios ``exp(role term - term of neither role)``; it is
# taken while every ratio of the window lies within these bounds (then no product or sum of them
# can overflow), and a sum is read in linear space only while it stays above _SMALLEST (then the
# terms that underflowed weigh less than 1e-58 of it). Otherwise the sums are taken in log space.
_RATIO_BOUND = 1e100
_SMALLEST = 1e-250


@njit(cache=True, nogil=True)
def _row_terms(log00, ratio, flags_on, flags_off, q, sum00, product):
    """One replica row's log term of neither role and its products of role ratios, in place; in bounds?"""
    signals = flags_on.shape[1]
    sum00[:] = 0.0
    product[:] = 1.0
    for half in range(2):
        flags = flags_on if half == 0 else flags_off
        for s in range(signals):
            if flags[q, s]:
                _add(sum00, log00[half * signals + s])
                source = ratio[half * signals + s]
                for m in range(product.shape[0]):
                    product[m] *= source[m]
    for m in range(product.shape[0]):
        v = product[m]
        if not (v >= 1.0 / _RATIO_BOUND and v <= _RATIO_BOUND):
            return False
    return True


@njit(cache=True, nogil=True)
def _linear_terms(log00, log11, ratio, on, off, row_first, keys, stamp, clock, store00, store_product, store_safe):
    """Each replica row class's terms (:func:`_row_terms`), kept between windows in a small store.

    The store (``keys`` the indicator rows, ``stamp`` their last use, 0 for
    empty) holds the terms of the rows seen most recently: a window's rows
    mostly repeat earlier windows'. Returns ``(sum00, product, entry,
    outside, safe)``: class ``c``'s terms are row ``entry[c]`` of ``sum00``
    and ``product``; ``outside`` is the unattributed row's log term of both
    roles; ``safe`` whether every ratio product lies within the bounds.
    """
    signals = on.shape[1]
    classes = row_first.shape[0] - 1
    capacity = stamp.shape[0]
    entry = np.empty(classes, np.int64)
    safe = True
    outside = np.zeros(log11.shape[1])
    q = row_first[classes]
    for half in range(2):
        flags = on if half == 0 else off
        for s in range(signals):
            if flags[q, s]:
                _add(outside, log11[half * signals + s])
    if 2 * classes > capacity:
        # More distinct rows than the store is meant for: terms of this window only.
        sum00 = np.empty((classes, log00.shape[1]))
        product = np.empty((classes, ratio.shape[1]))
        for c in range(classes):
            entry[c] = c
            if not _row_terms(log00, ratio, on, off, row_first[c], sum00[c], product[c]):
                safe = False
        return sum00, product, entry, outside, safe
    clock[0] += 1
    now = clock[0]
    for c in range(classes):
        q = row_first[c]
        found = -1
        for e in range(capacity):
            if stamp[e] == 0:
                continue
            same = True
            for s in range(signals):
                if keys[e, s] != on[q, s] or keys[e, signals + s] != off[q, s]:
                    same = False
                    break
            if same:
                found = e
                break
        if found < 0:
            # The least recently used entry (never one this window uses: at most half are).
            found = 0
            for e in range(capacity):
                if stamp[e] < stamp[found]:
                    found = e
            for s in range(signals):
                keys[found, s] = on[q, s]
                keys[found, signals + s] = off[q, s]
            store_safe[found] = _row_terms(log00, ratio, on, off, q, store00[found], store_product[found])
        stamp[found] = now
        entry[c] = found
        if not store_safe[found]:
            safe = False
    return store00, store_product, entry, outside, safe


@njit(cache=True, nogil=True)
def _position_log(terms, row_count, classes, slot_row, slot_count, log_phi, slots, o, spread, suffix, position, g):
    """``position[g, :]``, the log weight of each attacker slot and of "outside", from log terms.

    ``log_phi[c]`` is the log prior of the fault at one replica of slot ``c``.
    """
    base = 0.0
    for c in range(classes):
        base += row_count[c] * terms[c, o]
    base += terms[classes, o + 3]
    if slots == 1:
        position[g, 0] = base
        return
    peak = -np.inf
    for c in range(slots - 1):
        row = slot_row[c]
        peak = max(peak, (terms[row, o + 1] - terms[row, o]) + log_phi[c])
    total = 0.0
    for c in range(slots - 1):
        row = slot_row[c]
        spread[c] = math.exp(((terms[row, o + 1] - terms[row, o]) + log_phi[c]) - peak)
        total += slot_count[c] * spread[c]
    # The fault at another replica than the attacker's: the slots before and after the
    # attacker's, and the other members of its own (no subtraction from the total).
    after = 0.0
    for c in range(slots - 2, -1, -1):
        suffix[c] = after
        after += slot_count[c] * spread[c]
    before = 0.0
    for c in range(slots - 1):
        row = slot_row[c]
        rest = (before + suffix[c]) + (slot_count[c] - 1.0) * spread[c]
        before += slot_count[c] * spread[c]
        # log(rest * exp(u) + exp(v)) with one exp and one log: shift by the larger exponent.
        u = (terms[row, o + 2] - terms[row, o]) + peak
        v = (terms[row, o + 3] - terms[row, o]) + log_phi[c]
        if rest > 0.0 and u >= v:
            inside = u + math.log(rest + math.exp(v - u))
        elif rest > 0.0:
            inside = v + math.log1p(rest * math.exp(u - v))
        else:
            inside = v
        position[g, c] = inside + base
    position[g, slots - 1] = (peak + math.log(total)) + base


@njit(cache=True, nogil=True)
def _position_linear(sum00, product, entry, outside, row_count, classes, slot_row, slot_count, phi, slots, cell,
                     suffix, base, linear, g):
    """``linear[g, :]`` (each slot's weight over ``exp(base[g])``) and ``base[g]``, from ratios.

    ``phi[c]`` is the prior of the fault at one replica of slot ``c``.
    """
    total_base = 0.0
    for c in range(classes):
        total_base += row_count[c] * sum00[entry[c], cell]
    base[g] = total_base + outside[cell]
    if slots == 1:
        linear[g, 0] = 1.0
        return
    j = cell * 3
    after = 0.0
    for c in range(slots - 2, -1, -1):
        suffix[c] = after
        after += slot_count[c] * (phi[c] * product[entry[slot_row[c]], j])
    before = 0.0
    for c in range(slots - 1):
        e = entry[slot_row[c]]
        w = phi[c] * product[e, j]
        rest = (before + suffix[c]) + (slot_count[c] - 1.0) * w
        before += slot_count[c] * w
        linear[g, c] = product[e, j + 1] * rest + phi[c] * product[e, j + 2]
    linear[g, slots - 1] = after


@njit(cache=True, nogil=True)
def _copy_block(source, exact, d, a, k, log_weights, weight_norm, total_ll, by_position, by_fault, with_attacker):
    """Block ``(d, a, k)`` from the earlier block ``source`` with the same columns.

    ``exact``: the same attacker prior too, so every result is the source's.
    Otherwise the attacker's role changes no column: the likelihood and the
    fault posterior are the source's, and the attacker's posterior is its
    prior, ``log_weights[a]`` less its normaliser ``weight_norm[a]`` (the
    window's terms do not depend on where it is).
    """
    attacks, stages = total_ll.shape[1], total_ll.shape[2]
    sd, sa, sk = source // (attacks * stages), (source // stages) % attacks, source % stages
    total_ll[d, a, k] = total_ll[sd, sa, sk]
    if not with_attacker:
        return
    for g in range(by_fault.shape[3]):
        by_fault[d, a, k, g] = by_fault[sd, sa, sk, g]
    if exact:
        for r in range(by_position.shape[3]):
            by_position[d, a, k, r] = by_position[sd, sa, sk, r]
        return
    for r in range(log_weights.shape[1]):
        by_position[d, a, k, r] = log_weights[a, r] - weight_norm[a]


@njit(cache=True)
def likelihood(stacked, log00, log11, ratio, store, source, mode, x, log_weights, fault_prior, fault_position, total_ll,
               by_position, by_fault, with_attacker):
    """Fill ``total_ll`` ``(D, A, K)`` and, with ``with_attacker``, the two log posteriors.

    ``stacked`` is :attr:`~bayes_defense.stream.evidence.SignalTables.stacked`
    ``(2 S, cells * 4)`` with ``cells = D * A * K * G``; ``log00`` and
    ``log11`` its columns of neither role and of both ``(2 S, cells)``;
    ``ratio`` ``(2 S, cells * 3)`` the exponentials of its other three
    roles' columns minus ``log00``; ``store`` the tuple ``(keys, stamp,
    clock, sum00, product, safe)`` of :func:`_linear_terms` (it changes, so
    the kernel holds the GIL); ``source`` and ``mode`` per block of draw,
    attack and stage: a block of ``mode`` 1 or 2 is copied from block
    ``source``, an earlier one with the same columns
    (:func:`bayes_defense.stream.evidence._repeated_blocks`). ``x`` is the window's values
    ``(R + 1, S)``, ``log_weights`` the attacker's log prior per attack
    ``(A, R + 1)``, ``fault_prior`` ``(D, G)``, ``fault_position`` the log
    prior of each fault's replica ``(D, G, R)`` (each row normalised; empty:
    uniform, ``-log R``); ``by_position``
    ``(D, A, K, R + 1)`` and ``by_fault`` ``(D, A, K, G)`` are written only
    when ``with_attacker``.
    """
    replicas = x.shape[0] - 1
    draws, attacks, stages = total_ll.shape
    faults = fault_prior.shape[1]
    on, off, row_of, row_first, row_count, slot_of, slot_row, slot_first, slot_count = _classes(x, log_weights,
                                                                                                fault_position)
    classes = row_first.shape[0] - 1      # replica row classes; the unattributed row is ``classes``
    slots = slot_first.shape[0]           # attacker slots, the outside one last
    keys, stamp, clock, store00, store_product, store_safe = store
    sum00, product, entry, outside, linear_path = _linear_terms(log00, log11, ratio, on, off, row_first, keys, stamp,
                                                                clock, store00, store_product, store_safe)
    followed = fault_position.size > 0
    if followed and linear_path:
        # The linear path's bounds hold while every position prior is at least 1e-100 (the
        # weights' floor that the underflow argument below relies on).
        for d in range(draws):
            for g in range(faults):
                for c in range(slots - 1):
                    if fault_position[d, g, slot_first[c]] < -230.0:
                        linear_path = False
    if linear_path:
        terms = np.empty((0, 0))
    else:
        terms = np.zeros((classes + 1, stacked.shape[1]))
        for c in range(classes + 1):
            for half in range(2):
                flags = on if half == 0 else off
                for s in range(x.shape[1]):
                    if flags[row_first[c], s]:
                        _add(terms[c], stacked[half * x.shape[1] + s])
    log_replicas = math.log(replicas) if replicas > 0 else 0.0
    log_phi = np.empty(slots)
    attacker_prior = np.empty((attacks, slots))
    for a in range(attacks):
        for c in range(slots):
            attacker_prior[a, c] = math.exp(log_weights[a, slot_first[c]])
    ones = np.ones(max(faults, slots))
    position = np.empty((faults, slots))
    linear = np.empty((faults, slots))
    base = np.empty(faults)
    scale = np.empty(faults)
    spread = np.empty(slots)
    suffix = np.empty(slots)
    joint = np.empty((slots, faults))
    temp = np.empty(max(faults, slots))
    by_slot = np.empty(slots)
    weight = np.empty(slots)
    linear_weight = np.empty(slots)
    # The fault position priors of the linear path, per draw, fault and slot (they do not depend
    # on the attack or the stage).
    phi_all = np.empty((draws, faults, slots))
    if linear_path:
        for d in range(draws):
            for g in range(faults):
                for c in range(slots - 1):
                    phi_all[d, g, c] = math.exp(fault_position[d, g, slot_first[c]]) if followed else 1.0 / replicas
    # Each attack's log normaliser of its attacker prior, for the blocks copied without it (mode 2).
    weight_norm = np.empty(attacks)
    ones_weights = np.ones(log_weights.shape[1])
    for a in range(attacks):
        weight_norm[a] = log_sum(log_weights[a], ones_weights, log_weights.shape[1])
    for block in range(draws * attacks * stages):
        d = block // (attacks * stages)
        a = (block // stages) % attacks
        k = block % stages
        if mode[block] != 0:
            _copy_block(source[block], mode[block] == 1, d, a, k, log_weights, weight_norm, total_ll, by_position,
                        by_fault, with_attacker)
            continue
        for c in range(slots):
            weight[c] = log_weights[a, slot_first[c]]
            linear_weight[c] = attacker_prior[a, c]
        fast = linear_path
        peak = -np.inf
        if fast:
            for g in range(faults):
                _position_linear(sum00, product, entry, outside, row_count, classes, slot_row, slot_count,
                                 phi_all[d, g], slots, block * faults + g, suffix, base, linear, g)
                peak = max(peak, base[g] + fault_prior[d, g])
            fast = math.isfinite(peak)
        if fast:
            for g in range(faults):
                scale[g] = math.exp((base[g] + fault_prior[d, g]) - peak)
            block_sum = 0.0
            for c in range(slots):
                acc = 0.0
                for g in range(faults):
                    acc += scale[g] * linear[g, c]
                acc *= linear_weight[c]
                block_sum += slot_count[c] * acc
                if weight[c] == -np.inf:
                    by_slot[c] = -np.inf
                elif acc >= _SMALLEST:
                    by_slot[c] = peak + math.log(acc)
                else:
                    for g in range(faults):
                        temp[g] = ((base[g] + math.log(linear[g, c])) + fault_prior[d, g]) + weight[c]
                    by_slot[c] = log_sum(temp, ones, faults)
            ll = peak + math.log(block_sum) if block_sum >= _SMALLEST else log_sum(by_slot, slot_count, slots)
        else:
            for g in range(faults):
                if linear_path:
                    for c in range(slots):
                        position[g, c] = base[g] + math.log(linear[g, c])
                else:
                    for c in range(slots - 1):
                        log_phi[c] = fault_position[d, g, slot_first[c]] if followed else -log_replicas
                    _position_log(terms, row_count, classes, slot_row, slot_count, log_phi, slots,
                                  (block * faults + g) * 4, spread, suffix, position, g)
            for c in range(slots):
                for g in range(faults):
                    joint[c, g] = (position[g, c] + fault_prior[d, g]) + weight[c]
                by_slot[c] = log_sum(joint[c], ones, faults)
            ll = log_sum(by_slot, slot_count, slots)
        total_ll[d, a, k] = ll
        if not with_attacker:
            continue
        for r in range(replicas):
            by_position[d, a, k, r] = by_slot[slot_of[r]] - ll
        by_position[d, a, k, replicas] = by_slot[slots - 1] - ll
        for g in range(faults):
            if fast:
                # exp(base + prior) factors out of the sum over the slots, and what is left cannot
                # underflow: each slot's weight is at least 1e-200 / R (ratios and position priors
                # of at least 1e-100), each prior 0 or normal.
                acc = 0.0
                for c in range(slots):
                    acc += slot_count[c] * (linear[g, c] * linear_weight[c])
                log_acc = math.log(acc) if acc > 0.0 else -np.inf
                by_fault[d, a, k, g] = ((base[g] + fault_prior[d, g]) + log_acc) - ll
            else:
                for c in range(slots):
                    temp[c] = joint[c, g]
                by_fault[d, a, k, g] = log_sum(temp, slot_count, slots) - ll


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


@njit(cache=True, nogil=True)
def chain_step(log_alpha, log_transition, log_likelihood, out):
    """One forward step of every attack's phase chain, for every draw: ``out`` ``(A, D, K)``.

    ``log_alpha`` ``(A, D, K)`` is last window's log posterior,
    ``log_transition`` ``(A, D, K, K)`` the chains' log transition matrices,
    ``log_likelihood`` ``(D, A, K)`` the window's
    (:func:`bayes_defense.stream.evidence.window_log_likelihood`). The
    emission is each chain's evidence against its alternative, one attack at
    a time: for attack ``a`` in stage ``k >= 1`` the window's likelihood
    ``L_a(k)``; for ``a`` benign, that of whatever else is going on (no
    attack, or another attack ``b`` in its stage, weighted by ``b``'s
    predicted stage probabilities), so that a window an attack already under
    way explains is no evidence for a second one. The posterior is
    normalised, floored at -700 and normalised again.
    """
    attacks, draws, stages = log_alpha.shape
    predicted = np.empty((attacks, draws, stages))
    per_attack = np.empty((attacks, draws))
    active = np.empty((attacks, draws))
    for a in range(attacks):
        for d in range(draws):
            for j in range(stages):
                peak = -np.inf
                for i in range(stages):
                    peak = max(peak, log_alpha[a, d, i] + log_transition[a, d, i, j])
                if not peak > -np.inf:
                    peak = 0.0    # an unreachable stage (no pattern) stays at -inf
                acc = 0.0
                for i in range(stages):
                    acc += math.exp((log_alpha[a, d, i] + log_transition[a, d, i, j]) - peak)
                predicted[a, d, j] = peak + (math.log(acc) if acc > 0.0 else -np.inf)
            # log sum over the attack's stages k >= 1 of P(k) L(k), and its P(active).
            combined = -np.inf
            share = 0.0
            for k in range(1, stages):
                p = math.exp(predicted[a, d, k])
                share += p
                term = math.log(max(p, 1e-300)) + log_likelihood[d, a, k]
                combined = term if k == 1 else log_add(combined, term)
            per_attack[a, d] = combined
            active[a, d] = share
    for d in range(draws):
        total = per_attack[0, d]
        busy = active[0, d]
        for a in range(1, attacks):
            total = log_add(total, per_attack[a, d])
            busy += active[a, d]
        for a in range(attacks):
            # The others' share: a's own term removed in log space, floored (it can be the whole sum).
            rest = total + math.log(max(1.0 - math.exp(per_attack[a, d] - total), 1e-300))
            none = min(max(1.0 - (busy - active[a, d]), 1e-12), 1.0)
            background = log_add(math.log(none) + log_likelihood[d, a, 0], rest)
            peak = -np.inf
            for k in range(stages):
                emission = 0.0 if k == 0 else log_likelihood[d, a, k] - background
                out[a, d, k] = predicted[a, d, k] + emission
                peak = max(peak, out[a, d, k])
            acc = 0.0
            for k in range(stages):
                out[a, d, k] -= peak
                acc += math.exp(out[a, d, k])
            norm = math.log(acc)
            acc = 0.0
            for k in range(stages):
                out[a, d, k] = max(out[a, d, k] - norm, -700.0)
                acc += math.exp(out[a, d, k])
            norm = math.log(acc)
            for k in range(stages):
                out[a, d, k] -= norm


@njit(cache=True, nogil=True)
def bands(log_alpha, onset, success, level, out):
    """The belief's four tables from the chains' log posterior: ``out`` ``(4, A, 3)``.

    Per attack, across draws: P(precursor) (the stages between benign and
    execution), P(execution) (the last stage), P(success within
    the horizon) ``= clip(sum_k P(k) onset[k] * success)`` and P(active)
    ``= P(precursor) + P(execution)``, each as its mean and the ``level``
    band (the order statistics at ``floor(tail (D - 1))`` and
    ``ceil((1 - tail) (D - 1))``), ordered lower <= mean <= upper, in [0, 1].
    ``onset`` is ``(A, D, K)``, ``success`` ``(A, D)``.
    """
    attacks, draws, stages = log_alpha.shape
    tail = (1.0 - level) / 2.0
    low_index = int(math.floor(tail * (draws - 1)))
    high_index = int(math.ceil((1.0 - tail) * (draws - 1)))
    values = np.empty(draws)
    for a in range(attacks):
        for table in range(4):
            mean = 0.0
            for d in range(draws):
                # The stages between benign and execution (an ordered pattern's first, then the
                # precursor) are the precursor under way.
                precursor = 0.0
                for k in range(1, stages - 1):
                    precursor += math.exp(log_alpha[a, d, k])
                execution = math.exp(log_alpha[a, d, stages - 1])
                if table == 0:
                    v = precursor
                elif table == 1:
                    v = execution
                elif table == 2:
                    starts = 0.0
                    for k in range(stages):
                        starts += math.exp(log_alpha[a, d, k]) * onset[a, d, k]
                    v = min(max(starts * success[a, d], 0.0), 1.0)
                else:
                    v = precursor + execution
                v = min(max(v, 0.0), 1.0)
                values[d] = v
                mean += v
            mean = min(max(mean / draws, 0.0), 1.0)
            values.sort()
            out[table, a, 0] = mean
            out[table, a, 1] = min(max(min(values[low_index], mean), 0.0), 1.0)
            out[table, a, 2] = min(max(max(values[high_index], mean), 0.0), 1.0)


@njit(cache=True, nogil=True)
def follow_positions(log_alpha, log_transition, log_position, persistent, log_w, by_position, log_likelihood):
    """The attacker's replica followed from window to window, in place, for the ``persistent`` attacks.

    For each such attack ``a = persistent[p]`` the chain's state is (stage,
    replica): ``log_position`` ``(A, D, K, >= R)`` holds last window's log
    P(replica | stage); a starting attack takes its replica from ``log_w``
    ``(P, R)`` (the precondition's prior), an attack under way keeps it. The
    window's likelihood given the replica is ``by_position`` ``(D, A, K, R + 1)``
    (the log posterior of :func:`likelihood`) plus the stage's likelihood
    minus the prior, the stage's likelihood where that is not finite. Writes
    the new log P(replica | stage), floored at -700 (``-log R`` where the
    stage is impossible), and replaces the attack stages (``k >= 1``) of
    ``log_likelihood`` ``(D, A, K)`` with the likelihood mixed over the replica.
    """
    count = persistent.shape[0]
    replicas = log_w.shape[1]
    draws = log_alpha.shape[1]
    stages = log_alpha.shape[2]
    uniform = -math.log(replicas)
    raw = np.empty((stages, replicas))
    previous = np.empty((stages, replicas))
    scaled = np.empty((stages, replicas))
    peak = np.empty(stages)
    shift = np.empty(stages)
    joint = np.empty((stages, replicas))
    column = np.empty(max(stages, replicas))
    ones = np.ones(max(stages, replicas))
    for p in range(count):
        a = persistent[p]
        for d in range(draws):
            for k in range(stages):
                total = log_likelihood[d, a, k]
                top = -np.inf
                for r in range(replicas):
                    v = (by_position[d, a, k, r] + total) - log_w[p, r]
                    raw[k, r] = v if math.isfinite(v) else total
                    previous[k, r] = log_w[p, r] if k == 0 else log_position[a, d, k, r]
                    top = max(top, previous[k, r])
                # Each stage's row of positions over its peak, in linear space (in (0, 1]).
                peak[k] = top
                for r in range(replicas):
                    scaled[k, r] = math.exp(previous[k, r] - top) if math.isfinite(top) else 0.0
            for j in range(stages):
                # joint[j, r] = log sum_i exp(alpha_i + T_ij + previous[i, r]): the stage terms over
                # their largest, times the scaled rows. The largest stage's term is its row's peak at
                # its own peak replica, so a sum is only small where every term is; those are taken
                # in log space.
                top = -np.inf
                for i in range(stages):
                    shift[i] = (log_alpha[a, d, i] + log_transition[a, d, i, j]) + peak[i]
                    top = max(top, shift[i])
                if not math.isfinite(top):
                    for r in range(replicas):
                        joint[j, r] = -np.inf
                    continue
                for i in range(stages):
                    shift[i] = math.exp(shift[i] - top)
                for r in range(replicas):
                    acc = 0.0
                    for i in range(stages):
                        acc += shift[i] * scaled[i, r]
                    if acc >= _SMALLEST:
                        joint[j, r] = top + math.log(acc)
                    else:
                        for i in range(stages):
                            column[i] = (log_alpha[a, d, i] + log_transition[a, d, i, j]) + previous[i, r]
                        joint[j, r] = log_sum(column, ones, stages)
            for k in range(stages):
                stage = log_sum(joint[k], ones, replicas)
                for r in range(replicas):
                    predicted = joint[k, r] - stage if math.isfinite(stage) else uniform
                    column[r] = predicted + raw[k, r]
                mixed = log_sum(column, ones, replicas)
                for r in range(replicas):
                    normalised = column[r] - mixed if math.isfinite(mixed) else uniform
                    log_position[a, d, k, r] = max(normalised, -700.0)
                if k >= 1:
                    log_likelihood[d, a, k] = mixed


@njit(cache=True, nogil=True)
def predict_positions(log_faults, log_transition, last, prior, position):
    """One step of the (fault, replica) chain: ``prior`` ``(D, G)`` and ``position`` ``(D, G, R)``, in place.

    ``prior[d, g] = log sum_h P(h) T[h, g]``; a fault under way keeps its
    replica (``last`` ``(D, G, R)``, ``log P(replica | fault)`` after the last
    window), one that starts (from another state) draws it uniformly, so
    ``P(replica | g) = (P(g) T[g, g] last + sum_{h != g} P(h) T[h, g] / R) / prior``,
    floored at -700; row 0 ("no fault") is uniform.
    """
    draws, states = log_faults.shape
    replicas = last.shape[2]
    uniform = -math.log(replicas)
    ones = np.ones(max(states, replicas))
    column = np.empty(states)
    row = np.empty(replicas)
    for d in range(draws):
        for g in range(states):
            for h in range(states):
                column[h] = log_faults[d, h] + log_transition[d, h, g]
            prior[d, g] = log_sum(column, ones, states)
            if g == 0:
                for j in range(replicas):
                    position[d, 0, j] = uniform
                continue
            stay = column[g]
            column[g] = -np.inf
            entering = log_sum(column, ones, states) + uniform
            for j in range(replicas):
                v = stay + last[d, g, j]
                row[j] = entering if v == -np.inf else log_add(v, entering)
            norm = log_sum(row, ones, replicas)
            for j in range(replicas):
                position[d, g, j] = max(row[j] - norm, -700.0)


@njit(cache=True, nogil=True)
def update_positions(position, ratio_on, ratio_off, x, out):
    """The fault chain's ``log P(replica | fault, window)`` under no attack, ``out`` ``(D, G, R)``.

    ``position`` ``(D, G, R)`` is the prediction; ``ratio_on`` and
    ``ratio_off`` ``(D, G, S)`` the log ratio of a replica row's term with
    the fault there to that without, for a signal on and off; ``x`` the
    window's values ``(R + 1, S)`` (a signal is on where ``x > 0.5``, off
    where ``1 - x > 0.5``, as in :func:`_classes`). Normalised over the
    replicas and floored at -700.
    """
    draws, faults, replicas = position.shape
    signals = x.shape[1]
    on = np.zeros((replicas, signals), np.bool_)
    off = np.zeros((replicas, signals), np.bool_)
    for r in range(replicas):
        for s in range(signals):
            on[r, s] = x[r, s] > 0.5
            off[r, s] = (1.0 - x[r, s]) > 0.5
    ones = np.ones(replicas)
    joint = np.empty(replicas)
    for d in range(draws):
        for g in range(faults):
            for r in range(replicas):
                acc = 0.0
                for s in range(signals):
                    if on[r, s]:
                        acc += ratio_on[d, g, s]
                    elif off[r, s]:
                        acc += ratio_off[d, g, s]
                joint[r] = position[d, g, r] + acc
            total = log_sum(joint, ones, replicas)
            for r in range(replicas):
                out[d, g, r] = max(joint[r] - total, -700.0)
