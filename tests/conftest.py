"""Shared fixtures: every test starts from a fixed seed and a clean Pyro state."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_clean():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()
