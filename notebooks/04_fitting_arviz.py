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
# # Fitting the defenders to logged incidents, checked with ArviZ
#
# `bd.fit("defender", runs)` fits the default defender's model, the model
# filter's signal model (`docs/learning.md`, `docs/fit.md`): from event logs
# with their labels (and the simulator's fault labels), through the same
# evidence code the defender runs. Its posterior is conjugate (counts of
# windows), so the fit is exact and has no sampler to diagnose; what judges it
# is the numeric posterior predictive check, one per summary statistic. The
# scored baseline's model (`bd.fit("scored", ...)`) is fitted by SVI or NUTS
# and carries ArviZ's sampler diagnostics; both are stored as NetCDF and both
# give ArviZ data. Posteriors fitted at several sites merge without sharing
# their logs: `bd.merge_posteriors` (exact for the signal model: its counts add).

# %%
import os
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np

import bayes_defense as bd
from bayes_defense.fitting import extract_features
from bayes_defense.sim import Simulation, random_scenario

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its refactor at import
    import arviz as az

QUICK = os.environ.get("BAYES_DEFENSE_NOTEBOOK_QUICK") == "1"
SEEDS = range(200, 201) if QUICK else range(200, 208)
DURATION = 240.0 if QUICK else 600.0


def run(seed):
    simulation = Simulation(random_scenario(seed, nodes=4, duration=DURATION, faults=["jitter", "slow"]))
    return list(simulation.events()), simulation.labels, simulation.faults


runs = [run(seed) for seed in SEEDS]
posterior = bd.fit("defender", runs, num_samples=200 if QUICK else 1000)
summary = posterior.summary()
print({key: summary[key] for key in ("windows", "labelled_windows", "faults", "ppc_statistics", "ppc_failed")})

# %% [markdown]
# ## The posterior predictive check
#
# For each summary statistic (each signal's benign on-fraction, each attack's
# on-fraction per signal and phase, each fitted fault's), the observed value
# (dot) against the central 99.9% of values replicated from the posterior
# (bar). A dot outside its bar fails the check, and `bayes-defense fit` then
# exits 1 naming the statistic.

# %%
checks = sorted(posterior.ppc, key=lambda c: c["p_value"])[:25]
figure, axis = plt.subplots(figsize=(7, 6))
rows = np.arange(len(checks))
axis.hlines(rows, [c["lower"] for c in checks], [c["upper"] for c in checks], lw=4, alpha=0.4, label="replicated")
axis.plot([c["observed"] for c in checks], rows, "k.", label="observed")
axis.set_yticks(rows, [c["statistic"] for c in checks], fontsize=7)
axis.set(xlabel="on-fraction", title="the 25 statistics with the smallest predictive p-values")
axis.legend(fontsize=8)
figure.tight_layout()

# %% [markdown]
# ## The draws as ArviZ data
#
# One chain of independent conjugate draws: the attack-effect parameters of
# one attack, their posterior densities with 90% intervals.

# %%
data = posterior.to_inference_data()
names = [n for n in data.posterior["parameter"].values if n.startswith("window.") and n.endswith(".equivocation")]
az.plot_posterior(data, var_names=["theta"], coords={"parameter": names[:4]}, hdi_prob=0.9)
plt.tight_layout()

# %% [markdown]
# ## Storage, and the defender that runs with the fit

# %%
path = os.path.join(tempfile.mkdtemp(), "posterior.nc")
posterior.save(path)
again = bd.load_posterior(path)
defender = bd.StreamingDefender(again, planner=None)
events, labels, _ = runs[0]
defender.observe_batch(events)
defender.flush()
print(f"{len(defender.alerts)} alert(s) on the first training run; labels: {[lab['attack'] for lab in labels]}")

# %% [markdown]
# ## The scored baseline's fit: SVI, with sampler diagnostics
#
# The scored defender's observation and transition model, fitted by SVI: a
# trace plot of the per-attack score spreads and the summary table (mean, sd,
# interval, r_hat, ESS).

# %%
SETTINGS = (dict(num_steps=100, num_samples=100, ppc_draws=10) if QUICK
            else dict(num_steps=3000, num_samples=1000, ppc_draws=100))
incidents = [extract_features(events, labels, progress=False) for events, labels, _ in runs]
scored = bd.fit("scored", incidents, method="svi", progress=False, check=not QUICK, **SETTINGS)
scored_data = scored.to_inference_data()
az.plot_trace(scored_data, var_names=["spread"], compact=True)
plt.tight_layout()
az.summary(scored_data, var_names=["score_precursor", "spread"]).head(8)
