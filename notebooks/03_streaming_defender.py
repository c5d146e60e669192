# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The streaming defender on a simulated run
#
# The simulator (`bd.sim`) writes the telemetry of a PBFT-style cluster under
# attack, with ground-truth labels; it never imports the models, so its data is
# independent of the defender judged on it. The defender (`bd.StreamingDefender`,
# the model filter: the cluster model's attacks, signals and benign faults
# filtered online, with the shipped default posterior) reads the events in
# time order and keeps, for every attack of the catalogue, the probability of
# its precursor and execution phases with credible bounds. Each alert carries
# its explanation: the attacks and benign faults that could cause what it saw.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import bayes_defense as bd
from bayes_defense.sim import Simulation, random_scenario
from bayes_defense.stream.metrics import evaluate_alerts

QUICK = os.environ.get("BAYES_DEFENSE_NOTEBOOK_QUICK") == "1"
scenario = random_scenario(4, nodes=4 if QUICK else 7, duration=240.0 if QUICK else 600.0,
                           attacks=["slow_leader"], faults=["jitter"])
simulation = Simulation(scenario)
events = list(simulation.events())
print(f"{len(events):,} events over {scenario.duration:.0f} s; labels:")
for label in simulation.labels:
    print(" ", label)

# %% [markdown]
# Feed the events second by second and record the belief after each second.

# %%
defender = bd.StreamingDefender(planner=None)
attack = simulation.labels[0]["attack"]
times, active, lower, upper = [], [], [], []
start = 0
for second in range(1, int(scenario.duration) + 1):
    stop = start
    while stop < len(events) and events[stop].ts < second:
        stop += 1
    belief = defender.observe_batch(events[start:stop])
    start = stop
    p = belief.probability(attack, "active")
    times.append(second)
    active.append(p.mean)
    lower.append(p.lower)
    upper.append(p.upper)
defender.flush()
alerts = list(defender.alerts)
print(f"{len(alerts)} alert(s):")
for alert in alerts:
    record = alert.to_dict()
    causes = ", ".join(f"{c['cause']} {c['probability']:.2f}" for c in record["explanation"][:3])
    print(f"  {record['ts']:.0f} s {record['attack']} ({record['phase']}), nodes {record['nodes']}, "
          f"countermeasure {record['countermeasure']}; explanation: {causes}")

# %%
label = simulation.labels[0]
figure, axis = plt.subplots(figsize=(8, 3))
axis.fill_between(times, lower, upper, alpha=0.3, label="credible band")
axis.plot(times, active, lw=1, label=f"P({attack} active)")
axis.axvspan(label["precursor_start"], label["execution_start"], color="orange", alpha=0.15, label="precursor")
axis.axvspan(label["execution_start"], label["end"], color="red", alpha=0.15, label="execution")
for alert in alerts:
    axis.axvline(alert.ts, color="black", lw=0.8, ls="--")
axis.set(xlabel="seconds", ylabel="probability", ylim=(0, 1))
axis.legend(loc="upper left", fontsize=8)
figure.tight_layout()

# %% [markdown]
# The metrics of DESIGN.md section 6 on this run (a single run: the rates are
# 0 or 1, see `papers/` for the rates over many scenarios):

# %%
report = evaluate_alerts(simulation.labels, alerts, scenario.duration)
print({key: report[key] for key in ("detection_rate", "false_positive_rate", "lead_time_median_s", "alerts")})
assert np.all(np.array(lower) <= np.array(upper))
