"""NVlabs network pickles (stylegan2-ada-pytorch, TensorFlow stylegan2) -> our networks.

Expected values come from an independent path: tests/nvlabs_reference.py runs NVlabs' definitions in numpy
on NVlabs' own parameter names (and, for the committed fixture, from NVlabs' own code). The pickles are
written by tests/pickle_writers.py in NVlabs' layouts, each carrying source text that would leave a marker
file behind if anything ran it.
"""

from __future__ import annotations

import collections
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import tf_cartoon
from tf_cartoon.io.errors import UnsupportedNetworkError
from tf_cartoon.io.network_pickle import PersistentObject, TFNetwork

from tests import nvlabs_reference as R
from tests.pickle_writers import EasyDict, write_ada_pickle, write_tf_pickle

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "nvlabs")
ARCH = dict(size=16, channel_base=64, channel_max=8)  # channels 4: 8, 8: 8, 16: 4


def planted(marker) -> str:
    """Module source whose execution would create ``marker``."""
    return f"open({str(marker)!r}, 'w').write('ran')\nclass Generator: pass\n"


def to_persistent(tree, src) -> PersistentObject:
    state = dict(tree["attrs"])
    state["_parameters"] = collections.OrderedDict(tree["params"])
    state["_buffers"] = collections.OrderedDict(tree["buffers"])
    state["_modules"] = collections.OrderedDict((k, to_persistent(v, src)) for k, v in tree["children"].items())
    state["_non_persistent_buffers_set"] = set()
    state["training"] = False
    return PersistentObject(class_name=tree["class_name"], module_src=src, state=state, version=6)


def from_persistent(obj) -> dict:
    """A PersistentObject tree (as read) -> the reference's tree format (to run the numpy reference)."""
    st = obj.state
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in st.items() if not k.startswith("_")}
    return R.module(obj.class_name, attrs, {k: v for k, v in st["_parameters"].items() if v is not None},
                    {k: v for k, v in st["_buffers"].items() if v is not None},
                    {k: from_persistent(v) for k, v in st["_modules"].items() if v is not None})


def ada_snapshot(seed=0, conv_clamp=None, z_dim=12, w_dim=10, marker="x"):
    rng = np.random.default_rng(seed)
    g = R.make_generator(rng, z_dim=z_dim, w_dim=w_dim, n_mapping=3, conv_clamp=conv_clamp, **ARCH)
    g_ema = R.make_generator(rng, z_dim=z_dim, w_dim=w_dim, n_mapping=3, conv_clamp=conv_clamp, **ARCH)
    d = R.make_discriminator(rng, conv_clamp=conv_clamp, **ARCH)
    return g, g_ema, d


def write_ada(path, g, g_ema, d, marker, **extra):
    src = planted(marker)
    snap = {"G": to_persistent(g, src), "D": to_persistent(d, src), "G_ema": to_persistent(g_ema, src),
            "augment_pipe": None, "training_set_kwargs": EasyDict(resolution=16, use_labels=False), **extra}
    write_ada_pickle(path, snap)
    return path


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def assert_close(got, want, what):
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= 1e-4 * max(1.0, np.abs(want).max()), f"{what}: max error {err:.3g}"


def check_networks(ckpt, g_ema, d, g=None, z_dim=12, seed=5):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal([4, z_dim]).astype(np.float32)
    net = ckpt.g_ema
    assert_close(nchw(net(z, randomize_noise=False)), R.generate(g_ema, z), "g_ema image")
    mean = net.mean_latent(16)  # the stored w_avg, whatever n says
    assert_close(mean.numpy()[0], g_ema["children"]["mapping"]["buffers"]["w_avg"], "truncation centre")
    assert_close(nchw(net(z, truncation=0.7, truncation_latent=mean, randomize_noise=False)),
                 R.generate(g_ema, z, psi=0.7), "g_ema image, psi 0.7")
    if g is not None:
        assert_close(nchw(ckpt.g(z, randomize_noise=False)), R.generate(g, z), "g image")
    img = rng.standard_normal([4, 3, 16, 16]).astype(np.float32)
    assert_close(ckpt.d(img.transpose(0, 2, 3, 1)), R.discriminate(d, img), "discriminator logits")


@pytest.mark.parametrize("conv_clamp", [None, 0.6])
def test_ada_pickle_computes_what_nvlabs_defines(tmp_path, conv_clamp):
    """G_ema, G and D of a persistence pickle, z_dim != w_dim, clamping that fires (0.6) or none."""
    marker = tmp_path / "ran.txt"
    g, g_ema, d = ada_snapshot(conv_clamp=conv_clamp)
    path = write_ada(tmp_path / "net.pkl", g, g_ema, d, marker)
    before = path.read_bytes()
    ckpt = tf_cartoon.load(str(path))
    assert ckpt.config["generator"]["z_dim"] == 12 and ckpt.config["generator"]["style_dim"] == 10
    assert ckpt.config["generator"].get("conv_clamp") == conv_clamp
    assert ckpt.config["generator"]["channels"] == {"4": 8, "8": 8, "16": 4}
    check_networks(ckpt, g_ema, d, g)
    if conv_clamp is not None:  # the clamp matters: without it the images differ
        unclamped = copy.deepcopy(ckpt.config["generator"])
        unclamped.pop("conv_clamp")
        from tf_cartoon.io import store

        free = store.build_generator(unclamped)
        for a, b in zip(free.variables, ckpt.g_ema.variables):
            a.assign(b)
        z = np.random.default_rng(5).standard_normal([4, 12]).astype(np.float32)
        assert np.abs(free(z, randomize_noise=False) - ckpt.g_ema(z, randomize_noise=False)).max() > 1e-2
    assert not marker.exists() and path.read_bytes() == before


def test_tf_pickle_computes_what_nvlabs_defines(tmp_path):
    """(G, D, Gs) of dnnlib.tflib networks, in TensorFlow layouts, map onto the same networks."""
    marker = tmp_path / "ran.txt"
    g, g_ema, d = ada_snapshot()
    src = planted(marker)

    def gen(tree, name):
        v = R.tf_variables(g=tree)
        kwargs = {"num_channels": 3, "resolution": 16, "label_size": 0, "latent_size": 12, "dlatent_size": 10,
                  "mapping_layers": 3, "fmap_base": 32, "fmap_max": 8, "architecture": "skip"}
        comps = {"mapping": TFNetwork(name="G_mapping", static_kwargs=kwargs, variables=v["mapping"],
                                      build_module_src=src, build_func_name="training.networks_stylegan2.G_mapping",
                                      version=4),
                 "synthesis": TFNetwork(name="G_synthesis", static_kwargs=kwargs, variables=v["synthesis"],
                                        build_module_src=src,
                                        build_func_name="training.networks_stylegan2.G_synthesis_stylegan2",
                                        version=4)}
        return TFNetwork(name=name, static_kwargs=kwargs, components=comps, variables=v["G"], build_module_src=src,
                         build_func_name="training.networks_stylegan2.G_main", version=4)

    dnet = TFNetwork(name="D", static_kwargs={"num_channels": 3, "resolution": 16, "label_size": 0,
                                              "architecture": "resnet", "mbstd_group_size": 4},
                     variables=R.tf_variables(d=d)["D"], build_module_src=src,
                     build_func_name="training.networks_stylegan2.D_stylegan2", version=4)
    path = tmp_path / "tf.pkl"
    write_tf_pickle(path, (gen(g, "G"), dnet, gen(g_ema, "Gs")))
    ckpt = tf_cartoon.load(str(path))
    check_networks(ckpt, g_ema, d, g)
    assert not marker.exists()


def test_nvlabs_own_pickle_matches_nvlabs_outputs():
    """ada64.pkl, written by NVlabs' own code, against the outputs NVlabs' code computed (fp32, 1e-4); the
    numpy reference agrees too, which vouches for the reference the other tests use."""
    ckpt = tf_cartoon.load(os.path.join(FIXTURE, "ada64.pkl"))
    with np.load(os.path.join(FIXTURE, "ada64_expected.npz")) as f:
        z, w_want, img_want = f["z"], f["w"], f["img"]
    g = ckpt.g_ema
    w = g.mapping(z).numpy()
    assert_close(np.repeat(w[:, None], w_want.shape[1], axis=1), w_want, "w")
    assert_close(nchw(g(z, randomize_noise=False)), img_want, "image")
    assert ckpt.g is not None and ckpt.d is not None
    from tf_cartoon.io import network_pickle

    tree = from_persistent(network_pickle.load(os.path.join(FIXTURE, "ada64.pkl"))["G_ema"])
    assert_close(R.generate(tree, z), img_want, "numpy reference image")


def _refused(tmp_path, snap_fn, match):
    marker = tmp_path / "ran.txt"
    g, g_ema, d = ada_snapshot()
    snap_fn(g, g_ema, d)
    path = write_ada(tmp_path / "bad.pkl", g, g_ema, d, marker)
    with pytest.raises(UnsupportedNetworkError, match=match) as info:
        tf_cartoon.load(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_stylegan3_refused(tmp_path):
    def stylegan3(g, g_ema, d):
        g_ema["children"]["synthesis"]["children"]["input"] = R.module("SynthesisInput", {"channels": 8})
    _refused(tmp_path, stylegan3, "StyleGAN3")


def test_conditional_refused(tmp_path):
    def conditional(g, g_ema, d):
        g_ema["attrs"]["c_dim"] = 5
    _refused(tmp_path, conditional, "conditional")


def test_other_architectures_refused(tmp_path):
    def orig(g, g_ema, d):
        g_ema["children"]["synthesis"]["children"]["b8"]["attrs"]["architecture"] = "orig"
    _refused(tmp_path, orig, "architecture 'orig'")

    def skip_d(g, g_ema, d):
        d["children"]["b16"]["attrs"]["architecture"] = "skip"
    _refused(tmp_path, skip_d, "resnet")


def test_tf_other_configs_refused(tmp_path):
    g, g_ema, d = ada_snapshot()
    v = R.tf_variables(g=g_ema)
    comps = {"mapping": TFNetwork(name="G_mapping", variables=v["mapping"], version=4),
             "synthesis": TFNetwork(name="G_synthesis", variables=v["synthesis"], version=4)}
    for kwargs, func, match in [({"synthesis_func": "G_synthesis_stylegan_revised"}, "G_main", "config-a"),
                                ({"architecture": "orig"}, "G_main", "architecture 'orig'"),
                                ({}, "training.networks_stylegan.G_style", "G_style")]:
        path = tmp_path / "tf.pkl"
        write_tf_pickle(path, (TFNetwork(name="Gs", static_kwargs=kwargs, components=comps, variables=v["G"],
                                         build_func_name=func, version=4),))
        with pytest.raises(UnsupportedNetworkError, match=match):
            tf_cartoon.load(str(path))


def test_convert_cli_and_back_to_torch(tmp_path):
    """convert X.pkl OUT and --to-torch: the converted directory and the written .pt compute the same, clamp,
    z_dim and truncation centre included."""
    marker = tmp_path / "ran.txt"
    g, g_ema, d = ada_snapshot(conv_clamp=0.6)
    path = write_ada(tmp_path / "net.pkl", g, g_ema, d, marker)
    from tf_cartoon import convert

    assert convert.main([str(path), str(tmp_path / "conv")]) == 0
    check_networks(tf_cartoon.load(str(tmp_path / "conv")), g_ema, d, g)
    assert convert.main(["--to-torch", str(path), str(tmp_path / "net.pt")]) == 0
    check_networks(tf_cartoon.load(str(tmp_path / "net.pt")), g_ema, d, g)
    assert not marker.exists()


def test_cli_refuses_unsupported_pickle_in_one_line(tmp_path):
    marker = tmp_path / "ran.txt"
    g, g_ema, d = ada_snapshot()
    g_ema["attrs"]["c_dim"] = 5
    path = write_ada(tmp_path / "cond.pkl", g, g_ema, d, marker)
    r = subprocess.run([sys.executable, "-m", "tf_cartoon.convert", str(path), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()  # reading the file starts no TensorFlow: nothing else on stderr
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "conditional" in lines[0]
    assert not (tmp_path / "out").exists() and not marker.exists()
