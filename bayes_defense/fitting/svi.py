"""The SVI runner every fitted model uses: a multivariate normal guide, ClippedAdam, a progress bar."""

from __future__ import annotations

import numpy as np

__all__ = ["svi_multivariate_normal"]


def svi_multivariate_normal(model, init_loc_fn, *, num_steps: int, learning_rate: float, show: bool, desc: str):
    """Fit an ``AutoMultivariateNormal`` guide to ``model`` by SVI; return ``(guide, losses)``.

    ClippedAdam with the step size decaying tenfold over the run; a tqdm bar
    (``desc``) when ``show``.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro.infer.autoguide import init_to_median
    >>> def model():
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with pyro.plate("rows", 50):
    ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=torch.full((50,), 3.0))
    >>> pyro.set_rng_seed(0); pyro.clear_param_store()
    >>> guide, losses = svi_multivariate_normal(model, init_to_median, num_steps=500, learning_rate=0.05,
    ...                                         show=False, desc="SVI")
    >>> round(float(guide.median()["mu"]), 1)
    3.0
    """
    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal

    guide = AutoMultivariateNormal(model, init_loc_fn=init_loc_fn, init_scale=0.05)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": learning_rate, "lrd": 0.1 ** (1 / max(num_steps, 1))}),
              Trace_ELBO())
    losses = np.empty(num_steps)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=num_steps, desc=desc, unit="step", leave=False)
    try:
        for step in range(num_steps):
            losses[step] = svi.step()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return guide, losses
