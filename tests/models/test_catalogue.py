"""The catalogue is data: it imports without torch, and the streaming defender derives its lists from it."""

import subprocess
import sys

import bayes_defense as bd
from bayes_defense.models.catalogue import (
    ATTACK_NAMES,
    ATTACKS,
    ATTACKS_FROM_A_REPLICA,
    MATCHED_COUNTERMEASURES,
)


def _loads_torch(statement: str) -> bool:
    code = f"import sys\n{statement}\nprint('torch' in sys.modules, 'pyro' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return result.stdout.split() != ["False", "False"]


def test_catalogue_and_tables_import_without_torch():
    assert not _loads_torch("import bayes_defense.models.catalogue")
    assert not _loads_torch("from bayes_defense.models import tables, parameters\n"
                            "tables.parameter_tables(tables.default_values())")
    assert not _loads_torch("import bayes_defense.models as m\nm.ATTACKS, m.COUNTERMEASURES, m.PARAMETERS")
    # The Pyro program does load it, on first use.
    assert _loads_torch("import bayes_defense.models as m\nm.cluster(4)")


def test_defender_lists_come_from_the_catalogue():
    from bayes_defense.stream.defender import ATTACK_HYPOTHESES, COUNTERMEASURE_FOR
    from bayes_defense.stream.recommend import ATTACKER_SUSPECTS

    assert ATTACK_HYPOTHESES == ATTACK_NAMES == tuple(ATTACKS)
    assert COUNTERMEASURE_FOR == {name: attack.matched for name, attack in ATTACKS.items()} == dict(MATCHED_COUNTERMEASURES)
    assert ATTACKER_SUSPECTS == ATTACKS_FROM_A_REPLICA
    assert ATTACKS_FROM_A_REPLICA == {name for name, attack in ATTACKS.items() if attack.footing != "admission_open"
                                      and attack.footing != "eclipse_footing"}


def test_cluster_stays_callable_whichever_the_package_attribute_holds():
    import bayes_defense.models.cluster  # noqa: F401 - binds the submodule to bd.models.cluster

    assert bd.models.cluster(4).n_nodes == 4
    assert isinstance(bd.models.cluster(4), bd.models.ClusterModel)
