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
# # Fitting the defender to logged incidents, checked with ArviZ
#
# `bd.fit("defender", incidents)` learns the defender's observation and
# transition model from event logs (with labels here), by SVI or NUTS. The
# result carries ArviZ diagnostics, a posterior predictive check, and is stored
# as NetCDF (`docs/fit.md`). Posteriors fitted at several sites can be merged
# without sharing their logs: `bd.merge_posteriors` (its docstring states the
# method; pass draws of the fit's prior so its share is divided out).

# %%
import os
import tempfile
import warnings

import matplotlib.pyplot as plt

import bayes_defense as bd
from bayes_defense.fitting import extract_features
from bayes_defense.sim import Simulation, random_scenario

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its refactor at import
    import arviz as az

QUICK = os.environ.get("BAYES_DEFENSE_NOTEBOOK_QUICK") == "1"
SEEDS = range(200, 201) if QUICK else range(200, 208)
SETTINGS = (dict(num_steps=100, num_samples=100, ppc_draws=10) if QUICK
            else dict(num_steps=3000, num_samples=1000, ppc_draws=100))


def incident(seed):
    simulation = Simulation(random_scenario(seed, nodes=4, duration=240.0 if QUICK else 600.0))
    return extract_features(list(simulation.events()), simulation.labels, progress=False)


incidents = [incident(seed) for seed in SEEDS]
posterior = bd.fit("defender", incidents, method="svi", progress=False, check=not QUICK, **SETTINGS)
print(posterior)

# %% [markdown]
# ## Trace and posterior summaries
#
# The draws as ArviZ data: a trace plot of the per-attack score means and
# spreads, and the summary table (mean, sd, interval, r_hat, ESS).

# %%
data = posterior.to_inference_data()
az.plot_trace(data, var_names=["score_precursor", "spread"], compact=True)
plt.tight_layout()

# %%
az.summary(data, var_names=["score_precursor", "score_execution", "spread"]).head(12)

# %% [markdown]
# ## Posterior predictive check
#
# Observed telemetry summaries (dots) against the 90% interval of replicated
# ones (bars), per attack and phase. A dot outside its bar is a feature of the
# logs the model does not reproduce.

# %%
figure = posterior.plot_ppc()

# %% [markdown]
# ## Storage, and the defender that runs with the fit

# %%
path = os.path.join(tempfile.mkdtemp(), "posterior.nc")
posterior.save(path)
again = bd.load_posterior(path)
defender = bd.StreamingDefender(again.defender_parameters(24, seed=0), planner=None)
print("reloaded:", again)
