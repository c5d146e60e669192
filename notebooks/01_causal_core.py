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
# # The causal core: interventions, counterfactuals, necessity and sufficiency
#
# A model is any Pyro callable without arguments; every endogenous variable is a
# `pyro.sample` site. The package supplies the exogenous noise itself (DESIGN.md
# section 2), so the same model answers observational, interventional and
# counterfactual questions. Set `BAYES_DEFENSE_NOTEBOOK_QUICK=1` for the small
# settings the test suite uses.

# %%
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist

import bayes_defense as bd

QUICK = os.environ.get("BAYES_DEFENSE_NOTEBOOK_QUICK") == "1"
PARTICLES = 4_000 if QUICK else 50_000
print("backends:", bd.backends())

# %% [markdown]
# ## A discrete model, answered exactly
#
# Rain makes the sprinkler less likely to be on; either wets the grass.


# %%
def sprinkler():
    rain = pyro.sample("rain", dist.Bernoulli(0.3))
    on = pyro.sample("sprinkler", dist.Bernoulli(0.5 - 0.4 * rain))
    pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain + 0.3 * on))


seen = bd.intervene(sprinkler, {}, "rain", evidence={"wet": 1.0})
forced = bd.intervene(sprinkler, {"sprinkler": 1.0}, "rain", evidence={"wet": 1.0})
print(f"P(rain | wet)                  = {seen}")
print(f"P(rain | do(sprinkler=1), wet) = {forced}")

# %% [markdown]
# Observing wet grass raises the belief in rain. Once the sprinkler is *forced*
# on, wet grass is partly explained by it, so the belief in rain is lower (the
# intervention cuts the arrow from rain to the sprinkler, but the evidence is
# still downstream of both).
#
# ## A counterfactual: abduction, action, prediction
#
# The grass was wet with the sprinkler on. Had it been off, would the grass have
# been wet? The exact backend enumerates the noise; likelihood weighting gives the
# same answer with a Monte Carlo interval.

# %%
exact = bd.counterfactual(sprinkler, {"wet": 1.0, "sprinkler": 1.0}, {"sprinkler": 0.0}, "wet")
sampled = bd.counterfactual(sprinkler, {"wet": 1.0, "sprinkler": 1.0}, {"sprinkler": 0.0}, "wet",
                            backend="importance", num_samples=PARTICLES, seed=0)
print("exact     ", exact)
print("importance", sampled)
assert sampled.lower <= exact.mean <= sampled.upper

# %% [markdown]
# ## Necessity and sufficiency
#
# Was the sprinkler a necessary cause of the wet grass, and would it have been
# sufficient? Under the monotone coupling the package uses for discrete sites,
# these are the Tian-Pearl probabilities of necessity and sufficiency.

# %%
necessity = bd.probability_of_necessity(sprinkler, {"sprinkler": 1.0}, {"sprinkler": 0.0}, {"wet": 1.0})
sufficiency = bd.probability_of_sufficiency(sprinkler, {"sprinkler": 1.0}, {"sprinkler": 0.0}, {"wet": 1.0})
print("PN", necessity)
print("PS", sufficiency)

# %% [markdown]
# ## A linear-Gaussian model, in closed form
#
# The Primer's homework example (Pearl, Glymour and Jewell 2016, section 4.2.3):
# had Joe's homework been 2 instead of 1, his score would have been 1.9.


# %%
def primer():
    x = pyro.sample("X", dist.Normal(0.0, 1.0))
    h = pyro.sample("H", dist.Normal(0.5 * x, 1.0))
    pyro.sample("Y", dist.Normal(0.7 * x + 0.4 * h, 1.0))


print(bd.counterfactual(primer, {"X": 0.5, "H": 1.0, "Y": 1.5}, {"H": 2.0}, "Y"))

# %% [markdown]
# The importance sampler's interval narrows as particles grow, around the closed
# form:

# %%
sizes = [250, 1000, 4000] if QUICK else [250, 1000, 4000, 16000, 64000]
answers = [bd.counterfactual(primer, {"X": 0.5, "H": 1.0, "Y": 1.5}, {"H": 2.0}, "Y",
                             backend="importance", num_samples=n, seed=1) for n in sizes]
figure, axis = plt.subplots(figsize=(5, 3))
axis.errorbar(sizes, [a.mean for a in answers],
              yerr=[[a.mean - a.lower for a in answers], [a.upper - a.mean for a in answers]], fmt="o")
axis.axhline(1.9, color="black", lw=0.8, label="closed form")
axis.set(xscale="log", xlabel="particles", ylabel="E[Y | do(H=2)] counterfactual")
axis.legend()
figure.tight_layout()
