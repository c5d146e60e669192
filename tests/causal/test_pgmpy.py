"""pgmpy interop: BIF networks answered by our backends agree with pgmpy variable elimination.

The oracle for ``P(query | do(X = x), evidence)`` is graph surgery on the
pgmpy network (the intervened node loses its incoming edges and its CPD
becomes a point mass) followed by ``VariableElimination.query``. pgmpy's own
``CausalInference.query`` is not used: it is wrong when evidence lies outside
the adjustment set (pgmpy issue 3543).

The BIF fixtures in ``tests/data`` (see its README) were written once by
pgmpy's ``BIFWriter``; nothing here downloads.
"""

import math
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import bayes_defense as bd
from bayes_defense.causal.pgmpy_interop import (
    TabularModel,
    from_bif,
    from_pgmpy,
    to_pgmpy,
    write_bif,
)

DATA = Path(__file__).resolve().parents[1] / "data"

with warnings.catch_warnings():
    # pgmpy warns at import about its own deprecations (StructureScore); not ours to fix.
    warnings.simplefilter("ignore")
    from pgmpy.factors.discrete import TabularCPD
    from pgmpy.inference import VariableElimination
    from pgmpy.readwrite import BIFReader

# (network, do, evidence, query variable): evidence upstream of, downstream of, and
# beside the intervention, single and joint interventions.
CASES = [
    ("asia", {"smoke": "yes"}, {"dysp": "yes"}, "bronc"),
    ("asia", {"tub": "no"}, {"asia": "yes", "smoke": "yes"}, "xray"),
    ("asia", {"bronc": "no"}, {"xray": "yes", "dysp": "yes"}, "lung"),
    ("asia", {"either": "yes"}, {"dysp": "no"}, "smoke"),
    ("cancer", {"Smoker": "True"}, {"Xray": "positive"}, "Pollution"),
    ("cancer", {"Cancer": "True"}, {"Smoker": "False"}, "Dyspnoea"),
    ("cancer", {"Pollution": "high"}, {"Dyspnoea": "True", "Xray": "negative"}, "Smoker"),
    ("cluster", {"view_change": "yes"}, {"alert": "yes", "liveness": "lost"}, "byzantine_leader"),
    ("cluster", {"latency": "high"}, {"load": "low"}, "throughput"),
    ("cluster", {"byzantine_leader": "no"}, {"safety": "violated"}, "latency"),
    ("cluster", {"timeouts": "many", "partition": "yes"}, {"sig_failures": "high"}, "liveness"),
    ("cluster", {"equivocation": "yes"}, {"throughput": "low", "load": "high"}, "view_change"),
]
NETWORKS = ["asia", "cancer", "cluster"]


@pytest.fixture(scope="module")
def pgmpy_networks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {name: BIFReader(str(DATA / f"{name}.bif")).get_model() for name in NETWORKS}


@pytest.fixture(scope="module")
def models(pgmpy_networks):
    # pgmpy's BIF parser takes about a second per file; parse each fixture once.
    return {name: from_pgmpy(network) for name, network in pgmpy_networks.items()}


def test_from_bif_equals_from_pgmpy(models):
    model = from_bif(DATA / "asia.bif")
    reference = models["asia"]
    assert model.variables == reference.variables
    assert model.parents == reference.parents
    assert model.state_names == reference.state_names
    for name in model.variables:
        assert torch.equal(model.tables[name], reference.tables[name])


def surgery_oracle(network, do: dict, evidence: dict, query: str) -> dict:
    """``{state: P(query = state | do, evidence)}`` by graph surgery and variable elimination."""
    mutilated = network.copy()
    for variable, state in do.items():
        old = mutilated.get_cpds(variable)
        states = list(old.state_names[variable])
        mutilated.remove_cpds(old)
        mutilated.remove_edges_from([(parent, variable) for parent in list(mutilated.predecessors(variable))])
        point_mass = [[1.0 if s == state else 0.0] for s in states]
        mutilated.add_cpds(TabularCPD(variable, len(states), point_mass, state_names={variable: states}))
    mutilated.check_model()
    factor = VariableElimination(mutilated).query([query], evidence=evidence, show_progress=False)
    return {state: float(factor.get_value(**{query: state})) for state in factor.state_names[query]}


def case_id(case):
    network, do, evidence, query = case
    return f"{network}-do({','.join(do)})-{query}|{','.join(evidence)}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_exact_matches_pgmpy_surgery(case, models, pgmpy_networks):
    network, do, evidence, query = case
    model = models[network]
    oracle = surgery_oracle(pgmpy_networks[network], do, evidence, query)
    for state, expected in oracle.items():
        estimate = bd.intervene(model, model.encode(do), model.encode({query: state}),
                                evidence=model.encode(evidence), backend="exact")
        assert estimate.is_exact
        assert abs(estimate.mean - expected) <= 1e-9, (state, estimate.mean, expected)


@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
def test_importance_within_five_standard_errors(case, models, pgmpy_networks):
    network, do, evidence, query = case
    model = models[network]
    oracle = surgery_oracle(pgmpy_networks[network], do, evidence, query)
    for seed, (state, expected) in enumerate(oracle.items()):
        estimate = bd.intervene(model, model.encode(do), model.encode({query: state}),
                                evidence=model.encode(evidence), backend="importance",
                                num_samples=10_000, seed=seed)
        standard_error = math.sqrt(expected * (1 - expected) / estimate.ess)
        assert abs(estimate.mean - expected) <= 5 * standard_error + 1e-12, (state, estimate, expected)


@pytest.mark.parametrize("name", NETWORKS)
def test_bif_round_trip_gives_same_answers(name, models, tmp_path):
    model = models[name]
    again = from_bif(write_bif(model, tmp_path / f"{name}.bif"))
    assert again.variables == model.variables
    # Parents come back in the model's execution order, not the file's: compare as sets.
    assert {k: set(v) for k, v in again.parents.items()} == {k: set(v) for k, v in model.parents.items()}
    for case in [c for c in CASES if c[0] == name][:2]:
        _, do, evidence, query = case
        # Positions, not names: the written states are the positions 0..K-1.
        encoded = (model.encode(do), model.encode(evidence))
        first = bd.intervene(model, encoded[0], query, evidence=encoded[1], backend="exact")
        second = bd.intervene(again, encoded[0], query, evidence=encoded[1], backend="exact")
        assert abs(first.mean - second.mean) <= 1e-12
        first = bd.counterfactual(model, encoded[1], encoded[0], query, backend="exact")
        second = bd.counterfactual(again, encoded[1], encoded[0], query, backend="exact")
        assert abs(first.mean - second.mean) <= 1e-12


def mixed_model():
    """Bernoulli, three-state Categorical and Binomial sites: supports equal positions."""
    attack = pyro.sample("attack", dist.Bernoulli(0.3))
    load = pyro.sample("load", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])))
    slow_probs = torch.stack([0.1 + 0.5 * attack + 0.1 * load, 0.9 - 0.5 * attack - 0.1 * load], -1)
    slow = pyro.sample("slow", dist.Categorical(slow_probs))
    pyro.sample("alarms", dist.Binomial(2, 0.05 + 0.4 * attack + 0.3 * (slow == 0).float()))


def test_pyro_model_round_trip(tmp_path):
    path = write_bif(mixed_model, tmp_path / "mixed.bif")
    model = from_bif(path)
    assert model.variables == ["attack", "load", "slow", "alarms"]
    assert model.parents["alarms"] == ("attack", "slow")
    assert model.state_names["alarms"] == ["0", "1", "2"]
    questions = [
        ({"attack": 1}, {"alarms": 2}, "load"),
        ({"slow": 0}, {"load": 2}, "alarms"),
        ({"load": 0}, {"alarms": 0, "slow": 1}, "attack"),
    ]
    for do, evidence, query in questions:
        original = bd.intervene(mixed_model, do, query, evidence=evidence, backend="exact")
        copy = bd.intervene(model, do, query, evidence=evidence, backend="exact")
        assert abs(original.mean - copy.mean) <= 1e-9
        original = bd.counterfactual(mixed_model, evidence, do, query, backend="exact")
        copy = bd.counterfactual(model, evidence, do, query, backend="exact")
        assert abs(original.mean - copy.mean) <= 1e-9


def test_to_pgmpy_matches_tables_and_edges(models, pgmpy_networks):
    network = to_pgmpy(models["cancer"])
    assert sorted(network.edges()) == sorted(pgmpy_networks["cancer"].edges())
    # P(Cancer = True | Pollution = high, Smoker = False) = 0.02; state 0 is "True", 1 is "high".
    cpd = network.get_cpds("Cancer")
    value = cpd.get_value(Cancer=0, **{"Pollution": 1, "Smoker": 1})
    assert value == pytest.approx(0.02, abs=1e-12)
    assert from_pgmpy(network).tables["Cancer"].shape == (2, 2, 2)


def test_counterfactual_on_bif_importance_agrees_with_exact(models):
    model = models["cluster"]
    evidence = model.encode({"alert": "yes", "safety": "violated"})
    do = model.encode({"byzantine_leader": "no"})
    query = model.encode({"view_change": "yes"})
    exact = bd.counterfactual(model, evidence, do, query, backend="exact")
    sampled = bd.counterfactual(model, evidence, do, query, backend="importance", num_samples=20_000, seed=1)
    standard_error = math.sqrt(exact.mean * (1 - exact.mean) / sampled.ess)
    assert abs(sampled.mean - exact.mean) <= 5 * standard_error


def test_errors_are_actionable(models):
    model = models["asia"]
    with pytest.raises(bd.InvalidInputError, match="states are"):
        model.encode({"smoke": "sometimes"})
    with pytest.raises(bd.InvalidInputError, match="variables are"):
        model.encode({"weather": "yes"})
    with pytest.raises(bd.InvalidInputError, match="pgmpy DiscreteBayesianNetwork"):
        from_pgmpy(object())

    def continuous():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(bd.UnsupportedModelError):
        to_pgmpy(continuous)
    assert isinstance(model, TabularModel)


def test_from_bif_reads_gzipped_files(tmp_path):
    import gzip

    packed = tmp_path / "asia.bif.gz"
    with gzip.open(packed, "wt") as file:
        file.write((DATA / "asia.bif").read_text())
    model = from_bif(packed)
    reference = from_bif(DATA / "asia.bif")
    assert model.variables == reference.variables
    for name in model.variables:
        assert torch.equal(model.tables[name], reference.tables[name])
    # A plain file misnamed .gz and a gzipped file misnamed .bif are clear errors.
    misnamed = tmp_path / "plain.bif.gz"
    misnamed.write_text((DATA / "asia.bif").read_text())
    with pytest.raises(bd.InvalidInputError, match="cannot read"):
        from_bif(misnamed)
    hidden = tmp_path / "packed.bif"
    hidden.write_bytes(packed.read_bytes())
    with pytest.raises(bd.InvalidInputError, match=r"must end in \.gz"):
        from_bif(hidden)


TWO_NODE_BIF = """network tiny {{
}}
variable rain {{
    type discrete [ 2 ] {{ no, yes }};
}}
variable wet {{
    type discrete [ 3 ] {{ dry, damp, soaked }};
}}
probability ( rain ) {{
    table 0.8, 0.2 ;
}}
probability ( wet | rain ) {{
    ( no ) 0.7, 0.2, 0.1;
    ( yes ) {row};
}}
"""


def test_rows_near_one_are_renormalised_and_recorded(tmp_path):
    path = tmp_path / "near.bif"
    path.write_text(TWO_NODE_BIF.format(row="0.1, 0.3, 0.6000005"))
    model = from_bif(path)
    assert model.row_sum_errors.keys() == {"wet"}
    assert model.row_sum_errors["wet"] == pytest.approx(5e-7, rel=1e-6)
    sums = model.tables["wet"].sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0, atol=1e-15)
    # The exact answer uses the normalised row, as the model's sampling does.
    estimate = bd.intervene(model, model.encode({"rain": "yes"}), model.encode({"wet": "soaked"}), backend="exact")
    assert estimate.mean == pytest.approx(0.6000005 / 1.0000005, abs=1e-15)
    assert from_bif(DATA / "asia.bif").row_sum_errors == {}


def test_rows_far_from_one_are_refused(tmp_path):
    path = tmp_path / "far.bif"
    path.write_text(TWO_NODE_BIF.format(row="0.1, 0.3, 0.5"))
    with pytest.raises(bd.InvalidInputError, match=r"'wet' has a row at rain=yes summing to 0\.9.*tolerance"):
        from_bif(path)
    # A larger tolerance accepts (and renormalises) it.
    model = from_bif(path, tolerance=0.2)
    assert model.row_sum_errors["wet"] == pytest.approx(0.1, abs=1e-12)
    assert float(model.tables["wet"][1, 2]) == pytest.approx(0.5 / 0.9, abs=1e-15)
