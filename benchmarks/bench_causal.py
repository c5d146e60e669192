"""asv benchmarks of the causal queries: backends x model families x sizes.

For every backend, ``time_`` and ``peakmem_`` of one interventional and one
counterfactual query on the generated SCMs of :mod:`benchmarks.common` (5, 20
and 50 nodes), and ``track_`` of the absolute error against the exact or
closed-form answer. A combination a backend cannot answer (``exact`` on a
continuous model, ``analytic`` on a binary one, ``svi``/``nuts`` with discrete
latents) raises ``NotImplementedError`` in ``setup``, which asv reports as
skipped. ``ChiRhoCounterfactual`` runs ChiRho's multi-world equivalent where
chirho is installed.

Run ``python -m benchmarks.bench_causal`` for the median timings of the
performance targets without asv.
"""

from __future__ import annotations

from benchmarks import common

_WARM: set = set()


class _Query:
    """Shared body: subclasses set ``kind``."""

    kind = ""
    params = [list(common.BACKENDS), list(common.FAMILIES), list(common.SIZES)]
    param_names = ["backend", "family", "nodes"]
    timeout = 300
    # NUTS and SVI take seconds per query; a few repeats are enough.
    repeat = (1, 5, 20.0)
    number = 1

    def setup(self, backend, family, nodes):
        self.scm = common.get_scm(family, nodes)
        if not common.supported(self.scm, self.kind, backend):
            raise NotImplementedError(f"{backend} cannot answer the {family} {self.kind} query")
        key = (self.kind, backend, family, nodes)
        if key not in _WARM and backend not in ("svi", "nuts"):
            # Compile tables and trace the model once, outside the timed region.
            common.ask(self.scm, self.kind, backend)
            _WARM.add(key)

    def time_query(self, backend, family, nodes):
        common.ask(self.scm, self.kind, backend)

    def peakmem_query(self, backend, family, nodes):
        common.ask(self.scm, self.kind, backend)

    def track_abs_error(self, backend, family, nodes):
        estimate = common.ask(self.scm, self.kind, backend, seed=1)
        return abs(estimate.mean - common.oracle(family, nodes, self.kind))

    track_abs_error.unit = "absolute error"


class Interventional(_Query):
    """P(query | do(x01), evidence on the last node), or its mean."""

    kind = "interventional"


class Counterfactual(_Query):
    """The query in the world where x01 had been otherwise, given factual evidence."""

    kind = "counterfactual"


class ChiRhoCounterfactual:
    """ChiRho's MultiWorldCounterfactual with likelihood weighting, 10k particles."""

    params = [list(common.FAMILIES), list(common.SIZES)]
    param_names = ["family", "nodes"]
    timeout = 300
    repeat = (1, 5, 20.0)
    number = 1

    def setup(self, family, nodes):
        if not common.chirho_available():
            raise NotImplementedError("chirho is not installed")
        self.scm = common.get_scm(family, nodes)
        common.chirho_counterfactual(self.scm, num_particles=100)

    def time_query(self, family, nodes):
        common.chirho_counterfactual(self.scm)

    def peakmem_query(self, family, nodes):
        common.chirho_counterfactual(self.scm)

    def track_abs_error(self, family, nodes):
        estimate = common.chirho_counterfactual(self.scm, seed=1)
        return abs(estimate.mean - common.oracle(family, nodes, "counterfactual"))

    track_abs_error.unit = "absolute error"

    def track_ess(self, family, nodes):
        return common.chirho_counterfactual(self.scm, seed=1).ess

    track_ess.unit = "effective samples"


class ImportanceESS:
    """Effective sample size of our likelihood weighting, 10k particles (compare ChiRho's)."""

    params = [["interventional", "counterfactual"], list(common.FAMILIES), list(common.SIZES)]
    param_names = ["kind", "family", "nodes"]

    def setup(self, kind, family, nodes):
        self.scm = common.get_scm(family, nodes)

    def track_ess(self, kind, family, nodes):
        return common.ask(self.scm, kind, "importance", seed=1).ess

    track_ess.unit = "effective samples"


def main() -> None:
    """Print medians of the performance targets (timeit, after a warm-up call)."""
    import statistics
    import timeit

    targets = [
        ("importance interventional, 10k particles, 50 nodes", "interventional", "importance", "binary", 50, 5.0),
        ("importance interventional, 10k particles, 50 nodes", "interventional", "importance",
         "linear_gaussian", 50, 5.0),
        ("exact counterfactual, 20-node binary", "counterfactual", "exact", "binary", 20, 10.0),
        ("importance counterfactual, 10k particles, 50 nodes", "counterfactual", "importance", "binary", 50, 20.0),
        ("importance counterfactual, 10k particles, 50 nodes", "counterfactual", "importance",
         "linear_gaussian", 50, 20.0),
    ]
    for label, kind, backend, family, nodes, limit in targets:
        scm = common.get_scm(family, nodes)
        common.ask(scm, kind, backend)
        runs = timeit.repeat(lambda s=scm, k=kind, b=backend: common.ask(s, k, b), number=1, repeat=21)
        median = statistics.median(runs) * 1e3
        line = f"{label} [{family}]: median {median:.2f} ms (target {limit:g} ms)"
        if kind == "counterfactual" and common.chirho_available():
            common.chirho_counterfactual(scm, num_particles=100)
            chirho_runs = timeit.repeat(lambda s=scm: common.chirho_counterfactual(s), number=1, repeat=5)
            chirho_median = statistics.median(chirho_runs) * 1e3
            ours, theirs = common.ask(scm, kind, "importance", seed=1), common.chirho_counterfactual(scm, seed=1)
            line += (f"; ChiRho 10k particles {chirho_median:.1f} ms ({chirho_median / median:.1f}x), "
                     f"ESS ours {ours.ess:.0f} vs ChiRho {theirs.ess:.0f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
