# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The cluster model: attacks, countermeasures, plans and explanations
#
# `bd.models.cluster(n)` is the causal graph of an n-replica BFT cluster with the
# attack catalogue (`bd.models.ATTACKS`) and the countermeasures
# (`bd.models.COUNTERMEASURES`) built in; `docs/models.md` cites the source of
# each variable. Replica telemetry sites are named `r<k>.<signal>`.

# %%
import os

import matplotlib.pyplot as plt

import bayes_defense as bd

QUICK = os.environ.get("BAYES_DEFENSE_NOTEBOOK_QUICK") == "1"
NODES = 4 if QUICK else 7
model = bd.models.cluster(NODES)
print(f"{NODES} replicas, f = {(NODES - 1) // 3}; attacks: {', '.join(bd.models.ATTACKS)}")
print(f"countermeasures: {', '.join(bd.models.COUNTERMEASURES)}")

# %% [markdown]
# ## What the telemetry says about each attack
#
# The primary's pre-prepares are late and a backup asks for an instance change.
# Each attack's probability of succeeding, with and without leader rotation,
# from the model's exact engine:

# %%
seen = {"r0.preprepare_delay": 1, "r3.ic_request": 1}
baseline = bd.models.success_probability(model, seen)
rotated = bd.models.success_probability(model, seen, countermeasures=["leader_rotation"])
for attack in bd.models.ATTACKS:
    print(f"{attack:<18} {baseline[attack]}  ->  {rotated[attack]}")

# %%
attacks = list(bd.models.ATTACKS)
figure, axis = plt.subplots(figsize=(7, 3))
for shift, (label, table) in enumerate((("no countermeasure", baseline), ("leader_rotation", rotated))):
    means = [table[a].mean for a in attacks]
    errors = [[table[a].mean - table[a].lower for a in attacks], [table[a].upper - table[a].mean for a in attacks]]
    axis.errorbar([k + 0.2 * shift for k in range(len(attacks))], means, yerr=errors, fmt="o", label=label)
axis.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
axis.set_ylabel("P(attack succeeds | telemetry)")
axis.legend()
figure.tight_layout()

# %% [markdown]
# ## A plan
#
# `bd.plan` ranks countermeasures by expected loss: the risk that an attack
# succeeds plus the countermeasure's weighted cost to legitimate users, each
# with its interval. It also gives the Pareto front of risk against cost and a
# robust choice.

# %%
plan = bd.plan(model, seen)
print(plan)
print("best:", plan.best.countermeasures, "robust:", plan.robust.countermeasures)
for option in plan.pareto:
    print(f"pareto  {'+'.join(option.countermeasures) or 'nothing':<30} risk {option.risk:.3f}  cost {option.cost:.3f}")

# %%
figure, axis = plt.subplots(figsize=(5, 3.5))
axis.scatter([o.cost for o in plan.ranked], [o.risk for o in plan.ranked], s=12, color="grey", label="options")
front = sorted(plan.pareto, key=lambda o: o.cost)
axis.plot([o.cost for o in front], [o.risk for o in front], "o-", label="Pareto front")
axis.set(xlabel="cost to legitimate users", ylabel="attack risk")
axis.legend()
figure.tight_layout()

# %% [markdown]
# ## An explanation
#
# Latency is high. Which causes of the model, attacks and benign faults alike,
# most probably happened and were necessary for it?

# %%
explanation = bd.explain(model, seen, {"latency_high": 1})
print(explanation)
print("top attack:", explanation.top_attack)
