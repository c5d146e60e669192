"""Textbook models shared by the causal tests, with their closed-form answers."""

import pyro
import pyro.distributions as dist
import torch

# Pearl, Glymour and Jewell (2016), Causal Inference in Statistics: A Primer, section 4.2.3.
PRIMER_A, PRIMER_B, PRIMER_C = 0.5, 0.7, 0.4


def primer():
    x = pyro.sample("X", dist.Normal(0.0, 1.0))
    h = pyro.sample("H", dist.Normal(PRIMER_A * x, 1.0))
    pyro.sample("Y", dist.Normal(PRIMER_B * x + PRIMER_C * h, 1.0))


def sprinkler():
    rain = pyro.sample("rain", dist.Bernoulli(0.3))
    sprinkler_on = pyro.sample("sprinkler", dist.Bernoulli(0.5 - 0.4 * rain))
    wet = pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain + 0.3 * sprinkler_on))
    pyro.sample("slippery", dist.Bernoulli(0.1 + 0.8 * wet))


SPRINKLER_TABLES = {
    "rain": lambda v: 0.3,
    "sprinkler": lambda v: 0.5 - 0.4 * v["rain"],
    "wet": lambda v: 0.05 + 0.6 * v["rain"] + 0.3 * v["sprinkler"],
    "slippery": lambda v: 0.1 + 0.8 * v["wet"],
}


def firing_squad(p_order=0.7, p_b_fires=1.0):
    """Pearl (2009), section 9.2: court order -> captain -> riflemen A, B -> death."""

    def model():
        order = pyro.sample("order", dist.Bernoulli(p_order))
        a = pyro.sample("A", dist.Bernoulli(order))
        b = pyro.sample("B", dist.Bernoulli(p_b_fires * order))
        pyro.sample("dead", dist.Bernoulli(1 - (1 - a) * (1 - b)))

    return model


# Confounded binary model, monotone in X: C -> X, C -> Y, X -> Y.
P_C = 0.4


def p_x(c):
    return 0.2 + 0.5 * c


def p_y(x, c):
    return 0.1 + 0.3 * c + 0.4 * x


def confounded():
    c = pyro.sample("C", dist.Bernoulli(P_C))
    x = pyro.sample("X", dist.Bernoulli(p_x(c)))
    pyro.sample("Y", dist.Bernoulli(p_y(x, c)))


def linear_chain(n=50, seed=3):
    """X_0 = U_0, X_i = a_i X_{i-1} + sigma_i U_i; returns (model, a, sigma)."""
    generator = torch.Generator().manual_seed(seed)
    a = 0.6 + 0.5 * torch.rand(n, generator=generator, dtype=torch.float64)
    sigma = 0.5 + torch.rand(n, generator=generator, dtype=torch.float64)
    a_list, s_list = a.tolist(), sigma.tolist()

    def model():
        x = pyro.sample("x0", dist.Normal(0.0, s_list[0]))
        for i in range(1, n):
            x = pyro.sample(f"x{i}", dist.Normal(a_list[i] * x, s_list[i]))

    return model, a, sigma


def brute_force_intervene(tables, order, do, evidence, query):
    """P(query | do, evidence) by enumerating every binary assignment (independent oracle)."""
    import itertools

    numerator = denominator = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=len(order)):
        values = dict(zip(order, bits, strict=False))
        weight = 1.0
        for name in order:
            if name in do:
                weight *= 1.0 if values[name] == do[name] else 0.0
            else:
                p = tables[name](values)
                weight *= p if values[name] == 1.0 else 1.0 - p
        if any(values[k] != v for k, v in evidence.items()):
            continue
        denominator += weight
        numerator += weight * query(values)
    return numerator / denominator
