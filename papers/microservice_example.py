# %% [markdown]
# # Why is checkout slow? A microservice graph, fitted and explained
#
# A worked example for users' own systems (notebook-ready: a jupytext percent
# script; run it with `python papers/microservice_example.py`, `--quick` for a
# smaller run). We
#
# 1. write the call graph of a small web shop as a networkx DAG (an edge runs
#    from a dependency to its caller: a slow database slows the services that
#    call it);
# 2. simulate normal operation (latencies in ms) from mechanisms we choose
#    here, with numpy, and an incident with a known root cause;
# 3. build the SCM with `bd.models.from_graph`, fit it to the normal rows with
#    `bd.fit`, and
# 4. ask `bd.explain` why checkout latency is high, and `bd.plan` which
#    remedy to apply.

# %%
from __future__ import annotations

import argparse

import networkx as nx
import numpy as np
import pandas as pd

import bayes_defense as bd

CALLS = [("db", "inventory"), ("db", "orders"), ("cache", "inventory"), ("inventory", "catalog"),
         ("orders", "checkout"), ("payments", "checkout"), ("catalog", "frontend"), ("checkout", "frontend")]


def simulate(rows: int, rng, slow: dict | None = None) -> pd.DataFrame:
    """Latencies: each service's own time plus a share of its dependencies'; ``slow`` adds ms at a service."""
    slow = slow or {}
    own = {"db": 20, "cache": 2, "payments": 80, "inventory": 10, "orders": 15, "catalog": 5, "checkout": 25,
           "frontend": 8}
    spread = {name: 0.1 * base + 1.0 for name, base in own.items()}
    graph = nx.DiGraph(CALLS)
    values: dict = {}
    for node in nx.topological_sort(graph):
        calls = sum(values[p] for p in graph.predecessors(node))
        values[node] = own[node] + 0.9 * calls + spread[node] * rng.normal(size=rows) + slow.get(node, 0.0)
    return pd.DataFrame(values)


def main(quick: bool = False):
    rng = np.random.default_rng(0)
    normal = simulate(300 if quick else 2000, rng)
    incident = simulate(1, rng, slow={"db": 40.0}).iloc[0].to_dict()    # the database got slow

    # %% [markdown]
    # The SCM: one site per service, linear mechanisms with priors; `scales=` puts the priors on the
    # latencies' own scale.

    # %%
    scm = bd.models.from_graph(nx.DiGraph(CALLS), mechanisms="linear", scales=normal)
    posterior = bd.fit(scm, normal, progress=False)
    print("fit:", posterior.method, f"{posterior.info['seconds']:.1f} s,", "diagnostics ok:",
          posterior.diagnostics_ok)
    slope = posterior.estimate("checkout.coefficients", scm.coefficient_names("checkout").index("orders"))
    print(f"checkout per ms of orders: {slope} (truth 0.9)")

    # %% [markdown]
    # Why is checkout slow? Each upstream service is scored by the share of checkout's deviation
    # from typical that its own noise accounts for; the interval spans 20 posterior draws.

    # %%
    model = posterior.model(draws=20)
    why = bd.explain(model, incident, "checkout")
    print(why)
    print("root cause:", why.top)

    # %% [markdown]
    # Which remedy? Each action is an intervention; the risk is the expected checkout latency had
    # the action been taken in this incident (the same exogenous state).

    # %%
    typical_db = float(normal["db"].median())
    actions = {"fail over the database": {"db": typical_db},
               "scale out orders": {"orders": float(normal["orders"].median())},
               "restart payments": {"payments": float(normal["payments"].median())}}
    remedy = bd.plan(model, incident, actions, risk="checkout",
                     cost={"fail over the database": 5.0, "scale out orders": 2.0, "restart payments": 1.0})
    for option in remedy.ranked:
        print(f"{' + '.join(option.countermeasures) or '(nothing)':<24} expected checkout "
              f"{option.risk:7.1f} ms [{option.risk_lower:.1f}, {option.risk_upper:.1f}], loss {option.loss:.1f}")
    return why, remedy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fit and explain a small microservice SCM")
    parser.add_argument("--quick", action="store_true", help="fewer normal rows")
    main(parser.parse_args().quick)
