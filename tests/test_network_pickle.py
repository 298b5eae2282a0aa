"""tf_cartoon.io.network_pickle: NVlabs network pickles read as data, nothing they carry ever runs."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.pickle_writers import (Call, EasyDict, Global, _convert, _dump, _torch_tensor, write_ada_pickle,
                                  write_tf_pickle)
from tf_cartoon.io import network_pickle as npk
from tf_cartoon.io import torch_pickle
from tf_cartoon.io.errors import CheckpointFormatError, UnsafePickleError
from tf_cartoon.io.network_pickle import PersistentObject, TFNetwork

NVLABS = Path(__file__).resolve().parent / "fixtures" / "nvlabs"


def assert_same(got, want, where="obj"):
    """Structural equality with exact numpy dtypes/values and our dataclasses."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, where
        assert got.dtype.isnative and got.flags.c_contiguous, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, np.generic):
        assert type(got) is type(want) and got == want, (where, got, want)
    elif isinstance(want, PersistentObject):
        assert type(got) is PersistentObject, where
        assert (got.class_name, got.module_src, got.version) == (want.class_name, want.module_src, want.version)
        assert_same(got.state, want.state, f"{where}<{want.class_name}>")
    elif isinstance(want, TFNetwork):
        assert type(got) is TFNetwork, where
        for field in ("name", "build_module_src", "build_func_name", "version"):
            assert getattr(got, field) == getattr(want, field), (where, field)
        for field in ("static_kwargs", "components", "variables", "extra"):
            assert_same(getattr(got, field), getattr(want, field), f"{where}.{field}")
    elif isinstance(want, dict):
        want_type = dict if isinstance(want, EasyDict) else type(want)
        assert type(got) is want_type, (where, type(got), want_type)
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, (where, got, want)


def _random_array(rng, dtype):
    shape = tuple(int(n) for n in rng.integers(0, 4, size=rng.integers(0, 4)))
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) > 0.5)
    if np.dtype(dtype).kind in "iu":
        return np.asarray(rng.integers(0, 100, size=shape)).astype(dtype)
    return np.asarray(rng.standard_normal(shape)).astype(dtype)


def _module(rng, name, depth, src):
    dtypes = [np.float32, np.float16, np.float64, np.int64, np.int32, np.uint8, np.bool_]
    params = collections.OrderedDict(
        (f"p{i}", _random_array(rng, dtypes[rng.integers(0, 3)])) for i in range(rng.integers(0, 3)))
    params["unset"] = None
    buffers = collections.OrderedDict(
        (f"b{i}", _random_array(rng, dtypes[rng.integers(0, len(dtypes))])) for i in range(rng.integers(0, 3)))
    children = collections.OrderedDict(
        (f"{name}{i}", _module(rng, f"{name}{i}_", depth - 1, src)) for i in range(2 if depth else 0))
    state = {
        "training": bool(rng.integers(0, 2)), "_parameters": params, "_buffers": buffers,
        "_non_persistent_buffers_set": {"scratch"} if depth else set(),
        "_forward_hooks": collections.OrderedDict(), "_is_full_backward_hook": None,
        "_modules": children, "act_gain": np.float64(np.sqrt(2)), "lr": np.float32(0.01),
        "_init_args": (), "_init_kwargs": {"w_dim": int(rng.integers(1, 512)), "arch": "skip",
                                           "kw": {"num_layers": 3}, "betas": (0.0, 0.99)},
    }
    return PersistentObject(f"Layer{depth}", src, state, 6)


def _ada_tree(seed, src="pass\n"):
    rng = np.random.default_rng(seed)
    g = _module(rng, "g", 2, src)
    return {"G": g, "D": _module(rng, "d", 1, src), "G_ema": _module(rng, "e", 2, src),
            "augment_pipe": None, "training_set_kwargs": EasyDict(path="x.zip", resolution=64),
            "alias": g}


def _tf_tree(seed, src="pass\n"):
    rng = np.random.default_rng(seed)

    def net(name, comps):
        variables = collections.OrderedDict(
            (f"{name}/v{i}", _random_array(rng, [np.float32, np.float64, np.int32, np.bool_][i % 4]))
            for i in range(int(rng.integers(1, 5))))
        kwargs = {"resolution": 64, "nested": EasyDict(fmap_base=8192, mbstd=(4, 1)), "label": None}
        return TFNetwork(name, kwargs, comps, variables, src, f"training.networks_stylegan2.{name}", 4, {})

    mapping, synthesis = net("G_mapping", {}), net("G_synthesis", {})
    g = net("G", {"mapping": mapping, "synthesis": synthesis})
    gs = net("Gs", {"mapping": net("G_mapping", {}), "synthesis": net("G_synthesis", {})})
    return (g, net("D", {}), gs)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_ada_round_trip(tmp_path, protocol, core):
    for seed in range(3):
        tree = _ada_tree(seed)
        path = tmp_path / f"ada{seed}.pkl"
        write_ada_pickle(path, tree, protocol=protocol, core=core)
        assert npk.sniff(path) == "pickle"
        got = npk.load(path)
        assert_same(got, tree)
        assert got["alias"] is got["G"]  # shared objects stay shared


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tf_round_trip(tmp_path, protocol):
    for seed in range(3):
        tree = _tf_tree(seed)
        path = tmp_path / f"tf{seed}.pkl"
        write_tf_pickle(path, tree, protocol=protocol)
        got = npk.load(path)
        assert type(got) is tuple and len(got) == 3
        assert_same(got, tree)
        assert type(got[0].variables) is collections.OrderedDict


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_written_by_numpy(tmp_path, protocol):
    # Python's own pickler over real numpy objects (numpy's __reduce__ layouts).
    rng = np.random.default_rng(0)
    tree = {"f32": rng.standard_normal((3, 4)).astype(np.float32), "f16": np.arange(5, dtype=np.float16),
            "big": np.arange(6, dtype=">i4").reshape(2, 3), "fortran": np.asfortranarray(np.eye(3)),
            "mask": np.array([True, False]), "empty": np.zeros((0, 2)), "c64": np.array([1 + 2j], np.complex64),
            "scalar": np.float64(np.sqrt(2)), "int": np.int64(-3), "zero_d": np.array(7.5)}
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    got = npk.load(path)
    for key, want in tree.items():
        if isinstance(want, np.ndarray):
            want = np.array(want, dtype=want.dtype.newbyteorder("="), order="C")
        assert_same(got[key], want, key)


def _planted(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('embedded code ran')\nimport os\nos.system('touch {marker}')\n"


def test_embedded_sources_never_run(tmp_path):
    marker = tmp_path / "ran"
    ada, tf = tmp_path / "ada.pkl", tmp_path / "tf.pkl"
    write_ada_pickle(ada, _ada_tree(1, src=_planted(marker)))
    write_tf_pickle(tf, _tf_tree(1, src=_planted(marker)))
    got_ada, got_tf = npk.load(ada), npk.load(tf)
    assert got_ada["G"].module_src == _planted(marker)
    assert got_tf[2].build_module_src == _planted(marker)
    assert not marker.exists()


def _evil_trees(marker: Path) -> dict[str, tuple[object, str]]:
    cmd = f"touch {marker}"
    good = _ada_tree(2)
    nested = dict(good)
    nested["G"] = PersistentObject("Generator", "", {"_modules": {"x": Call(Global("os", "system"), (cmd,))}}, 6)
    return {
        "os.system": (Call(Global("os", "system"), (cmd,)), "os.system"),
        "builtins.eval": (Call(Global("builtins", "eval"), (f"__import__('os').system({cmd!r})",)), "builtins.eval"),
        "persistence.other": (Call(Global("torch_utils.persistence", "persistent_class"), (1,)),
                              "torch_utils.persistence.persistent_class"),
        "network.other": (Call(Global("dnnlib.tflib.network", "Other"), (), newobj=True),
                          "dnnlib.tflib.network.Other"),
        "tflib.import": (Call(Global("dnnlib.tflib.network", "import_handler"), (cmd,)),
                         "dnnlib.tflib.network.import_handler"),
        "nested": (nested, "os.system"),
    }


@pytest.mark.parametrize("case", list(_evil_trees(Path("/x"))))
def test_globals_outside_the_list_refused(tmp_path, case):
    marker = tmp_path / "pwned"
    tree, name = _evil_trees(marker)[case]
    path = tmp_path / "evil.pkl"
    _dump(path, _convert(tree, array=_torch_tensor, core="numpy.core"), 4)
    with pytest.raises(UnsafePickleError) as err:
        npk.load(path)
    msg = str(err.value)
    assert f"'{name}'" in msg and str(path) in msg and "nothing from the file was executed" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_python_pickled_callables_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G": Evil()}, protocol=4))
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        npk.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("value, match", [
    (np.array([1, "a", None], dtype=object), "numpy dtype"),
    (np.array(["ab", "c"]), "numpy dtype"),
    (np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]), "numpy dtype"),
])
def test_non_numeric_arrays_refused(tmp_path, value, match):
    path = tmp_path / "arr.pkl"
    path.write_bytes(pickle.dumps({"a": value}, protocol=4))
    with pytest.raises(UnsafePickleError, match=match):
        npk.load(path)


def test_malformed_content(tmp_path):
    path = tmp_path / "bad.pkl"
    # _reconstruct without its BUILD leaves an unfinished stand-in
    _dump(path, [Call(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"))], 4)
    with pytest.raises(CheckpointFormatError, match="unfinished"):
        npk.load(path)
    # array bytes that do not fit shape * itemsize
    dtype = Call(Global("numpy", "dtype"), ("f4", False, True), state=(3, "<", None, None, None, -1, -1, 0))
    _dump(path, Call(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                     state=(1, (3,), dtype, False, b"\0" * 8)), 4)
    with pytest.raises(CheckpointFormatError, match="needs 12 bytes, the file has 8"):
        npk.load(path)
    # a Network state of an unknown version
    _dump(path, Call(Global("dnnlib.tflib.network", "Network"), (), newobj=True, state={"version": 9}), 4)
    with pytest.raises(CheckpointFormatError, match="version 9"):
        npk.load(path)


def test_truncated_pickles(tmp_path):
    full = tmp_path / "full.pkl"
    write_ada_pickle(full, {"G": _module(np.random.default_rng(5), "g", 1, "pass\n")})
    data = full.read_bytes()
    cut = tmp_path / "cut.pkl"
    for n in list(range(1, 64)) + list(range(64, len(data), 37)):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointFormatError) as err:
            npk.load(cut)
        assert str(cut) in str(err.value), n


def test_sniff_and_dispatch(tmp_path):
    zip_pt, legacy_pt = Path(__file__).parent / "fixtures" / "torch" / "small_zip.pt", \
        Path(__file__).parent / "fixtures" / "torch" / "small_legacy.pt"
    assert npk.sniff(zip_pt) == "torch_zip" and npk.sniff(legacy_pt) == "torch_legacy"
    with pytest.raises(CheckpointFormatError, match="torch_pickle.load"):
        npk.load(legacy_pt)
    text = tmp_path / "x.txt"
    text.write_text("hello")
    assert npk.sniff(text) is None
    with pytest.raises(CheckpointFormatError, match="not a pickle"):
        npk.load(text)
    assert torch_pickle.sniff(NVLABS / "ada64.pkl") == "pickle"


ADA_MARKER = Path("/tmp/tfc_ada_ran")  # what the planted first line of every module_src writes


def test_nvlabs_ada_snapshot():
    assert not ADA_MARKER.exists(), "marker present before the test: cannot check it"
    obj = npk.load(NVLABS / "ada64.pkl")
    assert list(obj) == ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"]
    assert obj["augment_pipe"] is None and obj["training_set_kwargs"] is None
    g, d, g_ema = obj["G"], obj["D"], obj["G_ema"]
    assert (g.class_name, d.class_name, g_ema.class_name) == ("Generator", "Discriminator", "Generator")
    assert g_ema.version == 6 and g_ema.state["z_dim"] == 96 and g_ema.state["img_resolution"] == 64
    assert g_ema.module_src.splitlines()[0] == f"open('{ADA_MARKER}', 'w').write('embedded code ran')"

    mapping = g_ema.state["_modules"]["mapping"]
    assert mapping.class_name == "MappingNetwork"
    assert list(mapping.state["_modules"]) == ["fc0", "fc1", "fc2"]
    w_avg = mapping.state["_buffers"]["w_avg"]
    assert isinstance(w_avg, np.ndarray) and w_avg.shape == (96,) and w_avg.dtype == np.float32
    fc0 = mapping.state["_modules"]["fc0"]
    assert fc0.class_name == "FullyConnectedLayer"
    assert fc0.state["_parameters"]["weight"].shape == (96, 96)
    assert type(fc0.state["weight_gain"]) is np.float64

    tensors = npk.module_tensors(g_ema)
    assert tensors["mapping.fc0.weight"] is fc0.state["_parameters"]["weight"]
    assert tensors["mapping.w_avg"] is w_avg
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in tensors.values())
    # G_ema is a copy of G
    g_tensors = npk.module_tensors(g)
    assert list(g_tensors) == list(tensors)
    for key in tensors:
        np.testing.assert_array_equal(g_tensors[key], tensors[key], err_msg=key)
    assert "b64.conv1.weight" in npk.module_tensors(d)
    assert not ADA_MARKER.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tensors_pickled_by_torch(tmp_path, protocol):
    # torch's own plain-pickle layout of tensors (what an ADA module's _parameters hold).
    torch = pytest.importorskip("torch")
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    obj = {"t": base, "view": base[1:, 2:], "p": torch.nn.Parameter(torch.randn(2)),
           "h": torch.ones(2, dtype=torch.float16), "bf": torch.tensor([1.5], dtype=torch.bfloat16),
           "i": torch.arange(3), "od": collections.OrderedDict(a=torch.zeros(1))}
    path = tmp_path / "torch.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = npk.load(path)
    for key in ("t", "view", "p", "h", "i"):
        assert_same(out[key], np.ascontiguousarray(obj[key].detach().numpy()), key)
    assert_same(out["bf"], np.array([1.5], np.float32))
    assert_same(out["od"], collections.OrderedDict(a=np.zeros(1, np.float32)))
    path.write_bytes(pickle.dumps({"m": torch.nn.Linear(2, 2)}, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.linear.Linear"):
        npk.load(path)
