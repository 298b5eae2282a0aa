"""Freeze options: the exact frozen parameter sets the reference recorded, per case and option."""

from __future__ import annotations

import pytest

import tf_cartoon
from tf_cartoon.training import freeze
from tf_cartoon.io import reference_keys as rk
from tests.reference_cases import DEFAULT_DIR, Case, case_names, reference_dir


def _options():
    for name in case_names():
        for opt, spec in Case(name).meta.get("freeze", {}).get("captured_for_this_architecture", {}).items():
            yield pytest.param(name, opt, spec, id=f"{name}-{opt}")


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            ck = tf_cartoon.load(Case(name).source_pt, models=("g", "d"))
            cache[name] = (ck.g, ck.d)
        return cache[name]

    return get


def _frozen(table, trainable):
    """Reference names of the parameters NOT in ``trainable``, in parameter order."""
    ids = {id(v) for v in trainable}
    var_of = {key: var for key, var, _ in table}
    return [k for k in rk.parameter_keys(table) if id(var_of[k]) not in ids]


@pytest.mark.parametrize("name,option,spec", list(_options()))
def test_frozen_sets_match_reference(name, option, spec, models):
    g, d = models(name)
    args = spec.get("args", {})
    checked = False
    if "G_frozen" in spec and g is not None:
        g_frozen = _frozen(rk.generator_table(g), freeze.generator_trainable(g, args.get("freezeG", -1)))
        assert g_frozen == spec["G_frozen"]
        checked = True
    if "D_frozen" in spec and d is not None:
        d_frozen = _frozen(rk.discriminator_table(d), freeze.discriminator_trainable(d, args.get("freezeD", -1)))
        assert d_frozen == spec["D_frozen"]
        checked = True
    if not checked:
        pytest.skip(f"{name}/{option}: no frozen list for a network the checkpoint holds")


def test_there_are_freeze_cases():
    # The committed fixtures record freeze lists; another case folder may hold none.
    if not list(_options()) and reference_dir() != DEFAULT_DIR:
        pytest.skip(f"no freeze option captured in any case of {reference_dir()}")
    assert list(_options()), "no freeze option captured in any reference case"
