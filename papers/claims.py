"""Measure every headline claim of the seed and write papers/claims.md.

Each row: the claim, what was measured (median over repeats for times, pooled
rates with 90% Wilson intervals for detection), the command, and a verdict.
The timing claims are measured on ``bd.models.cluster(n)`` through the public
API with ``backend="auto"`` (the cluster model's exact engine); the detection
claims on fresh simulator scenarios run through ``bayes-defense sweep``
(:mod:`bayes_defense.sweep`, a Dask LocalCluster); the overhead claim compares
the defender's CPU time with the protocol's cryptographic work in the same
simulated run.

Verdicts, stated once: a time claim "about T" holds when the median is at
most T, holds "within 2x" when at most 2T, and fails otherwise; a rate claim
holds when its whole 90% interval is on the claimed side, fails when the whole
interval is on the other side, and is undecided otherwise.

Usage::

    python papers/claims.py [--nodes 4 7] [--repeats 50] [--scenarios 40] [--duration 600]
                            [--workers 2] [--out papers/claims.md]

Smallest run (used by the tests)::

    python papers/claims.py --nodes 4 --repeats 3 --scenarios 2 --duration 240 --out /tmp/claims.md
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _stats import wilson  # papers/ is on sys.path when a script here runs

#: Seeds of the detection scenarios: never used for tuning (0-159) or by evaluate_defender.py (30000+, 35000+).
FIRST_SEED = 50_000
#: Bytes of a protocol message authenticated per send, for the protocol-work proxy (a PBFT PREPARE with
#: its digest and view/sequence numbers is a few hundred bytes).
MESSAGE_BYTES = 512

TIME_CLAIMS = [
    # (key, the seed's wording, claimed seconds)
    ("intervention", "interventions in about 0.5 ms", 0.5e-3),
    ("counterfactual", "counterfactuals in about 5 ms", 5e-3),
    ("planning", "planning in about 30 ms", 30e-3),
    ("explanation", "explanations in about 2 ms", 2e-3),
    ("attack_simulation", "attack simulation in about 50 ms", 50e-3),
    ("precondition", "precondition checks in about 0.2 ms", 0.2e-3),
    ("countermeasure", "countermeasure selection in about 2 ms", 2e-3),
    ("event", "event analysis under 10 ms", 10e-3),
]

WHAT = {
    "intervention": "`bd.intervene(model, do(leader_rotation), 'slow_leader.success', evidence)`",
    "counterfactual": "`bd.counterfactual(model, incident, {'equivocation.precursor': 0}, {'safety_violated': 1})`",
    "planning": "`bd.plan(model, evidence)` (all countermeasures ranked, Pareto front, 3-step plan)",
    "explanation": "`bd.explain(model, evidence, {'latency_high': 1})`",
    "attack_simulation": "`bd.models.simulate_attack(model, incident, attack='equivocation')` (two counterfactuals; "
                         "the seed's attack simulation is the counterfactual one of DESIGN.md section 3, not the "
                         "discrete-event simulator `bd.sim`)",
    "precondition": "`bd.intervene(model, {}, 'equivocation.precondition', evidence)` (one attack)",
    "countermeasure": "the defender's per-alert choice `stream.recommend.recommend(attack, role, phase, n)`, "
                      "uncached (it plans with `bd.plan`)",
    "event": "`StreamingDefender.observe(event)` per event on a simulated stream (CPU time p50; p99 in brackets)",
}


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of one call (this process, torch on one thread), after a warm-up call.

    CPU time rather than wall time: the claims are about the work a query
    takes, and on a shared machine wall time also counts the time other
    processes hold the core. ``WALL`` keeps the wall-clock medians beside them.
    """
    function()  # warm-up: tables compiled, caches filled
    cpu, wall = [], []
    for _ in range(repeats):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        function()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    WALL.append(statistics.median(wall))
    return statistics.median(cpu)


#: Wall-clock medians of the calls measured by _median_seconds, in call order.
WALL: list[float] = []


def measure_times(nodes: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of each timed claim on ``bd.models.cluster(nodes)``."""
    import bayes_defense as bd
    from bayes_defense.models.queries import countermeasure_do
    from bayes_defense.sim import AttackSpec, Scenario, run_to_events
    from bayes_defense.stream import recommend as recommend_module
    from bayes_defense.stream.defender import StreamingDefender

    import torch

    torch.set_num_threads(1)  # so that process time is one core's work
    model = bd.models.cluster(nodes)
    seen = {"r0.preprepare_delay": 1, "r3.ic_request": 1}
    incident = {"r0.conflicting": 1, "r0.sig_fail": 1, "safety_violated": 1}
    rotate = countermeasure_do(model, ["leader_rotation"])
    out = {
        "intervention": _median_seconds(lambda: bd.intervene(model, rotate, "slow_leader.success", evidence=seen),
                                        repeats),
        "counterfactual": _median_seconds(lambda: bd.counterfactual(model, incident, {"equivocation.precursor": 0.0},
                                                                    {"safety_violated": 1.0}), repeats),
        "planning": _median_seconds(lambda: bd.plan(model, seen), max(3, repeats // 5)),
        "explanation": _median_seconds(lambda: bd.explain(model, seen, {"latency_high": 1}), max(3, repeats // 5)),
        "attack_simulation": _median_seconds(lambda: bd.models.simulate_attack(model, incident, attack="equivocation"),
                                             repeats),
        "precondition": _median_seconds(lambda: bd.intervene(model, {}, "equivocation.precondition", evidence=seen),
                                        repeats),
    }

    def choose() -> None:
        recommend_module.recommend.cache_clear()  # measure the planning behind it, not the cache
        recommend_module.recommend("slow_leader", "primary", "precursor", nodes)

    out["countermeasure"] = _median_seconds(choose, max(3, repeats // 5))
    for key, wall in zip(list(out), WALL[-len(out):], strict=True):
        out[f"{key}_wall"] = wall
    attack = AttackSpec("replay", start=84.0, precursor=36.0, duration=24.0)
    events = list(run_to_events(Scenario(nodes=nodes, duration=120.0, seed=1, attacks=[attack])))
    defender = StreamingDefender(planner=None)
    latencies = []
    for event in events:
        started = time.process_time()
        defender.observe(event)
        latencies.append(time.process_time() - started)
    latencies.sort()
    out["event"] = latencies[len(latencies) // 2]
    out["event_p99"] = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    out["event_max"] = latencies[-1]
    return {"nodes": nodes, **out}


def measure_detection(scenarios: int, duration: float, workers: int, out: Path) -> dict[str, object]:
    """Run the defender over fresh scenarios with the sweep; pool the rates of DESIGN.md section 6."""
    from bayes_defense.stream.metrics import combine_reports
    from bayes_defense.sweep import parse_sweep, run_sweep

    spec = parse_sweep({"seeds": {"first": FIRST_SEED, "count": scenarios}, "detectors": ["defender"],
                        "scenarios": {"n7": {"nodes": 7, "duration": duration}}})
    result = run_sweep(spec, out, workers=workers)
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} sweep task(s) failed: {result.failed[:2]}")
    rows = result.table.to_dict("records")
    pooled = combine_reports(rows)
    leads = [t for row in rows for t in row["lead_times"]]
    in_window = sum(1 for t in leads if 30 <= t <= 300)
    return {"pooled": pooled, "detection": wilson(pooled["detected"], pooled["attacks"]),
            "false_positive": wilson(pooled["benign_windows_alerted"], pooled["benign_windows"]),
            "lead_window": wilson(in_window, len(leads)), "leads": leads, "scenarios": scenarios,
            "duration": duration}


def measure_overhead(duration: float) -> dict[str, float]:
    """Defender CPU seconds against a proxy of the protocol's CPU work, on one 7-replica run."""
    from bayes_defense.sim import Simulation, random_scenario
    from bayes_defense.stream.defender import StreamingDefender

    simulation = Simulation(random_scenario(FIRST_SEED, nodes=7, duration=duration))
    events = list(simulation.events())
    defender = StreamingDefender(planner=None)
    started = time.process_time()
    defender.observe_batch(events)
    defender.flush()
    defender_cpu = time.process_time() - started
    key, payload = b"k" * 32, b"m" * MESSAGE_BYTES
    count = 20_000
    started = time.process_time()
    for _ in range(count):
        hmac.digest(key, payload, hashlib.sha256)
    mac_seconds = (time.process_time() - started) / count
    messages = simulation.messages
    # Every message is authenticated once by its sender and checked once by its receiver: two MACs.
    protocol_cpu = 2 * messages * mac_seconds
    return {"duration": duration, "events": len(events), "messages": messages, "defender_cpu": defender_cpu,
            "mac_seconds": mac_seconds, "protocol_cpu": protocol_cpu,
            "defender_core_share": defender_cpu / duration, "ratio": defender_cpu / protocol_cpu}


def _time_verdict(measured: float, claimed: float) -> str:
    if measured <= claimed:
        return "holds"
    if measured <= 2 * claimed:
        return "holds within 2x"
    return f"fails ({measured / claimed:.1f}x the claim)"


def _rate_verdict(interval: tuple[float, float, float], bound: float, above: bool) -> str:
    _, low, high = interval
    if math.isnan(low):
        return "undecided (nothing to count)"
    if (low > bound) if above else (high < bound):
        return "holds"
    if (high <= bound) if above else (low >= bound):
        return "fails"
    return "undecided at this sample size (the interval straddles the bound)"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.3g} us"


def _rate(interval: tuple[float, float, float], digits: int = 3) -> str:
    p, low, high = interval
    return "n/a" if math.isnan(p) else f"{p:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def write_markdown(path: Path, times: list[dict], detection: dict, overhead: dict, command: str) -> str:
    lines = ["# The seed's claims, measured", "",
             f"Generated by `{command}` on {platform.machine()} / Python {platform.python_version()} "
             f"({time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores when "
             "written: a shared machine inflates the times); every number below comes from that run. Verdict rules: a time "
             "claim \"about T\" holds when the median is at most T, \"within 2x\" when at most 2T, and fails "
             "otherwise; a rate claim holds when its whole 90% interval (Wilson) lies on the claimed side.",
             "", "## Times (median CPU time per call over repeats, after one warm-up call, torch on one thread; "
             "wall-clock medians in brackets)", ""]
    header = "| claim | what we measured | " + " | ".join(f"n = {t['nodes']}" for t in times) + " | verdict |"
    lines += [header, "|" + "---|" * (3 + len(times))]
    for key, wording, claimed in TIME_CLAIMS:
        cells = []
        for t in times:
            cell = _ms(t[key])
            if key == "event":
                cell += f" (p99 {_ms(t['event_p99'])})"
            else:
                cell += f" ({_ms(t[key + '_wall'])} wall)"
            cells.append(cell)
        verdict = "; ".join(f"n = {t['nodes']}: {_time_verdict(t[key], claimed)}" for t in times)
        lines.append(f"| {wording} | {WHAT[key]} | " + " | ".join(cells) + f" | {verdict} |")
    pooled = detection["pooled"]
    lines += ["", f"## Detection ({detection['scenarios']} fresh scenarios, seeds {FIRST_SEED} and up, 7 replicas, "
              f"{detection['duration']:.0f} s, the simulator's default intensities, run by `bayes-defense sweep`)", "",
              "| claim | what we measured | value [90% interval] | verdict |", "|---|---|---|---|",
              f"| false-positive rate under 1% | benign 10 s windows with an alert / benign windows "
              f"({pooled['benign_windows_alerted']} / {pooled['benign_windows']}) | {_rate(detection['false_positive'], 4)} "
              f"| {_rate_verdict(detection['false_positive'], 0.01, above=False)} |",
              f"| detection over 99% | attacks with an alert naming them in [precursor start, end] "
              f"({pooled['detected']} / {pooled['attacks']}) | {_rate(detection['detection'])} "
              f"| {_rate_verdict(detection['detection'], 0.99, above=True)} |"]
    leads = detection["leads"]
    lead_text = (f"median {statistics.median(leads):.0f} s, range {min(leads):.0f} to {max(leads):.0f} s"
                 if leads else "no detected attack")
    lines.append(f"| warnings 30-300 s ahead | lead time = execution start - first alert, over detected attacks; share "
                 f"in [30, 300] s ({lead_text}) | {_rate(detection['lead_window'])} | "
                 f"{_rate_verdict(detection['lead_window'], 0.5, above=True).replace('holds', 'holds for most attacks')}"
                 " (the claim gives no share; read as: most warnings fall in the window) |")
    lines += ["", "## Overhead: \"under 10% overhead instead of the 67% of 3f+1 replication\"", "",
              "| quantity | value |", "|---|---|",
              f"| simulated run | 7 replicas, {overhead['duration']:.0f} s, {overhead['events']:,} telemetry events, "
              f"{overhead['messages']:,} protocol messages |",
              f"| defender CPU (process time, one core) | {overhead['defender_cpu']:.2f} s, "
              f"{100 * overhead['defender_core_share']:.2f}% of one core over the run |",
              f"| protocol work proxy: two HMAC-SHA256 of {MESSAGE_BYTES} bytes per message | "
              f"{_ms(overhead['mac_seconds'])} per MAC, {overhead['protocol_cpu']:.2f} s in all |",
              f"| defender CPU / protocol proxy | {overhead['ratio']:.2f} |", "",
              f"Verdict on \"under 10% overhead\": against the authentication-only proxy the defender costs "
              f"{100 * overhead['ratio']:.0f}% of the protocol's work, so the claim "
              f"{'holds even against this lower bound of protocol work' if overhead['ratio'] < 0.1 else 'is not confirmed: the proxy is a lower bound of protocol work, and the defender exceeds 10% of it'}; "
              f"as a share of one core over the run it is {100 * overhead['defender_core_share']:.2f}%.", "",
              "What can honestly be claimed: the defender's cost is the CPU share above, on one monitoring process, "
              "against the protocol work proxy in the same run. The proxy counts only message authentication, "
              "not execution, ordering, storage or the network, so the ratio overstates the defender's relative cost "
              "for a real deployment; it is no measure of a production replica's CPU. The comparison with \"the "
              "67% of 3f+1 replication\" is ill-posed: 2f/(3f+1) tends to 67% as the share of replicas beyond f+1, a "
              "count of machines that BFT safety needs (n >= 3f+1 against f Byzantine replicas), not a CPU "
              "overhead. A monitor does not remove that requirement, so \"instead of\" does not hold; the defender "
              "adds its CPU share on top of a 3f+1 cluster.", ""]
    text = "\n".join(lines)
    from bayes_defense.ioutil import atomic_write

    with atomic_write(path) as handle:
        handle.write(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 7], help="cluster sizes for the timings")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per query")
    parser.add_argument("--scenarios", type=int, default=40, help="fresh scenarios for the detection claims")
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds per scenario")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes of the sweep")
    parser.add_argument("--sweep-dir", help="sweep directory (reused: finished tasks are skipped); default temporary")
    parser.add_argument("--out", default="papers/claims.md")
    args = parser.parse_args(argv)
    times = [measure_times(n, args.repeats) for n in args.nodes]
    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else Path(tempfile.mkdtemp(prefix="claims-sweep-"))
    detection = measure_detection(args.scenarios, args.duration, args.workers, sweep_dir)
    overhead = measure_overhead(args.duration)
    flags = (f"--nodes {' '.join(map(str, args.nodes))} --repeats {args.repeats} --scenarios {args.scenarios} "
             f"--duration {args.duration:g} --workers {args.workers}")
    print(write_markdown(Path(args.out), times, detection, overhead, f"python papers/claims.py {flags}"))


if __name__ == "__main__":
    main()
