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
# # Your own system, from its causal graph
#
# `bd.models.from_graph` turns a networkx DAG into a Pyro SCM with one site per
# node and learnable mechanisms (linear-Gaussian here); `bd.fit(model, table)`
# learns them from a table with one column per node; the fitted model answers
# every query of the causal core, its intervals carrying the parameters'
# uncertainty.

# %%
import os

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd

import bayes_defense as bd

QUICK = os.environ.get("BAYES_DEFENSE_NOTEBOOK_QUICK") == "1"
ROWS = 200 if QUICK else 2000

graph = nx.DiGraph([("load", "queue"), ("queue", "latency"), ("load", "latency"), ("latency", "timeouts")])
model = bd.models.from_graph(graph, mechanisms="linear")
print("sites:", model.nodes)
print("parameters:", model.parameter_sites)

# %% [markdown]
# ## Data from a system whose mechanisms we know
#
# So that the fit can be checked: latency = 1 + 0.8 queue + 0.3 load + noise.

# %%
rng = np.random.default_rng(0)
load = rng.normal(0, 1, ROWS)
queue = 0.5 + 0.9 * load + rng.normal(0, 0.5, ROWS)
latency = 1.0 + 0.8 * queue + 0.3 * load + rng.normal(0, 0.3, ROWS)
timeouts = -0.5 + 1.2 * latency + rng.normal(0, 0.4, ROWS)
table = pd.DataFrame({"load": load, "queue": queue, "latency": latency, "timeouts": timeouts})
table.describe().round(2)

# %%
posterior = bd.fit(model, table, method="svi", num_samples=200 if QUICK else 1000, progress=False)
truth = {"intercept": 1.0, "queue": 0.8, "load": 0.3}
for index, name in enumerate(model.coefficient_names("latency")):
    print(f"latency <- {name:<10} {posterior.estimate('latency.coefficients', index)}   truth {truth.get(name)}")

# %% [markdown]
# ## Interventions on the fitted model
#
# What are the expected timeouts if we cap the queue at 0 (`do(queue = 0)`)?
# The truth is -0.5 + 1.2 (1 + 0.3 E[load]) = 0.7.

# %%
fitted = posterior.model()
capped = bd.intervene(fitted, {"queue": 0.0}, "timeouts", num_samples=2000 if QUICK else 20000, seed=0)
print("E[timeouts | do(queue=0)] =", capped)

levels = np.linspace(-1.0, 2.0, 4 if QUICK else 7)
answers = [bd.intervene(fitted, {"queue": float(q)}, "timeouts", num_samples=2000 if QUICK else 20000, seed=0)
           for q in levels]
figure, axis = plt.subplots(figsize=(5, 3))
axis.errorbar(levels, [a.mean for a in answers],
              yerr=[[a.mean - a.lower for a in answers], [a.upper - a.mean for a in answers]], fmt="o-",
              label="fitted model")
axis.plot(levels, -0.5 + 1.2 * (1.0 + 0.8 * levels), "k--", lw=0.8, label="true mechanism")
axis.set(xlabel="do(queue = q)", ylabel="E[timeouts]")
axis.legend()
figure.tight_layout()

# %% [markdown]
# ## Why were timeouts high?
#
# `bd.explain` on any SCM: for a continuous outcome it ranks the causes by how
# much of the outcome's distance from typical each one is responsible for.

# %%
evidence = {"load": 0.1, "queue": 2.5, "latency": 3.2, "timeouts": 3.4}
explanation = bd.explain(fitted, evidence, "timeouts")
for cause, estimate in explanation.ranking:
    print(f"{cause:<10} {estimate}")
print("top:", explanation.top)
