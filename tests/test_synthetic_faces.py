"""tf_cartoon.data.faces: the parameter-sharing synthetic domains synthetic:faces / synthetic:cartoon.

Speed is not asserted here (``python -m tf_cartoon.data.faces --bench`` measures it)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tf_cartoon import data
from tf_cartoon.data import faces as F
from tf_cartoon.data import synthetic

DOMAINS = {"faces": F.faces, "cartoon": F.cartoon}


def _params(seed=11, n=24):
    return F.sample_face_params(np.random.default_rng(seed), n)


def _cartoon_foreground(params, imgs):
    """Pixels of the cartoon that differ from its plain pastel background colour."""
    bg = np.clip(np.rint(F._pastel(params["bg0"])), 0, 255)
    return np.abs(imgs.astype(np.int64) - bg[:, None, None, :]).max(-1) > 12


def _iou(a, b):
    return (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)


def _dark_edge_fraction(imgs):
    """Fraction of pixels that are dark (luma < 70) next to something at least 70 brighter: outlines."""
    s = imgs.shape[1]
    luma = imgs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    pad = np.pad(luma, ((0, 0), (1, 1), (1, 1)), mode="edge")
    hi = np.max([pad[:, 1 + dy:1 + dy + s, 1 + dx:1 + dx + s] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
    return ((luma < 70) & (hi - luma > 70)).mean((1, 2))


def _distinct_colours(imgs):
    return np.array([len(np.unique(im.reshape(-1, 3), axis=0)) for im in imgs])


# ---------------------------------------------------------------------------------------------- registry
def test_registered():
    assert {"faces", "cartoon"} <= set(data.available_synthetic())
    assert data.get_synthetic("faces") is F.faces
    assert data.get_synthetic("cartoon") is F.cartoon
    assert data.resolve_spec("synthetic:cartoon") == ("synthetic", "cartoon")


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_deterministic_by_seed(name):
    fn = DOMAINS[name]
    a = fn(5, 4, 32)
    np.testing.assert_array_equal(a, fn(5, 4, 32))
    np.testing.assert_array_equal(a, synthetic.draw(name, 5, 4, 32))
    b = fn(6, 4, 32)
    assert not np.array_equal(a, b)
    assert all(not np.array_equal(a[i], b[i]) for i in range(4))
    assert not np.array_equal(a[0], a[1])  # images within a batch differ too


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_shapes_dtypes_and_value_ranges(name, size):
    x = DOMAINS[name](3, 4, size)
    assert x.shape == (4, size, size, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    means = x.mean((1, 2, 3))
    assert np.all((means > 40) & (means < 215)), means  # neither black nor washed out
    assert np.all(x.std((1, 2, 3)) > 15)  # not constant: a face on a background
    assert np.all(x.reshape(4, -1).min(1) < 80) and np.all(x.reshape(4, -1).max(1) > 170)  # dark and light parts


@pytest.mark.parametrize("size", [16, 17, 48, 100])
def test_other_sizes_and_empty(size):
    for fn in DOMAINS.values():
        assert fn(1, 2, size).shape == (2, size, size, 3)
        assert fn(1, 0, size).shape == (0, size, size, 3)
    with pytest.raises(ValueError, match="size"):
        F.render_faces(_params(n=1), 15)


def test_sampled_parameters():
    p = _params(3, 300)
    assert all(np.asarray(v).shape[0] == 300 for v in p.values())
    for key, options in (("hair_style", F.HAIR_STYLES), ("mouth_type", F.MOUTH_TYPES),
                         ("skin_tone", F.SKIN_TONES), ("hair_colour", F.HAIR_COLOURS),
                         ("iris_colour", F.IRIS_COLOURS), ("brow_shape", F.BROW_SHAPES), ("bg_type", F.BG_TYPES)):
        assert set(np.unique(p[key]).tolist()) == set(range(len(options))), key
    np.testing.assert_allclose(np.linalg.norm(p["light"], axis=1), 1.0, rtol=1e-5)
    assert np.all(np.abs(p["tilt"]) <= 0.25) and np.ptp(p["cx"]) > 0.1 and np.ptp(p["ry"]) > 0.04
    again = _params(3, 300)
    assert all(np.array_equal(p[k], again[k]) for k in p)


def test_each_image_depends_only_on_its_own_parameters():
    p = _params(4, 6)
    for render in (F.render_faces, F.render_cartoon):
        full = render(p, 32)
        np.testing.assert_array_equal(render(F.subset_params(p, [4, 1]), 32), full[[4, 1]])


# ------------------------------------------------------------------------------------ shared structure
@pytest.mark.parametrize("size", [32, 64])
def test_faces_and_cartoon_share_structure(size):
    p = _params(11, 24)
    photo, alpha = F.render_faces(p, size, return_alpha=True)
    toon = F.render_cartoon(p, size)
    fg_photo, fg_toon = alpha > 0.5, _cartoon_foreground(p, toon)
    iou = _iou(fg_photo, fg_toon)
    assert iou.min() > 0.7, iou
    # ... and the overlap is specific to the face: pairing each photo with another face's cartoon is worse
    wrong = _iou(fg_photo, np.roll(fg_toon, 1, axis=0))
    assert iou.mean() > wrong.mean() + 0.1, (iou.mean(), wrong.mean())
    # the head outline (face_mask) is drawn in both
    head = F.face_mask(p, size)
    assert head.shape == (24, size, size) and head.dtype == bool
    frac = head.sum((1, 2)) / (size * size)
    assert np.all((frac > 0.05) & (frac < 0.5)), frac
    for fg in (fg_photo, fg_toon):
        assert np.all((fg & head).sum((1, 2)) >= 0.97 * head.sum((1, 2)))


def test_registered_fns_render_the_sampled_parameters():
    p = F.sample_face_params(np.random.default_rng(9), 3)
    np.testing.assert_array_equal(F.faces(9, 3, 32), F.render_faces(p, 32))
    np.testing.assert_array_equal(F.cartoon(9, 3, 32), F.render_cartoon(p, 32))


def test_cartoon_is_flat_with_dark_outlines():
    p = _params(12, 16)
    photo, toon = F.render_faces(p, 64), F.render_cartoon(p, 64)
    n_photo, n_toon = _distinct_colours(photo), _distinct_colours(toon)
    assert np.all(n_toon * 5 < n_photo), (n_toon, n_photo)  # flat colours (+ antialiased edges only)
    # the cartoon's most common colours cover most of the image; the photo's are spread out
    top = lambda im: np.sort(np.unique(im.reshape(-1, 3), axis=0, return_counts=True)[1])[::-1][:8].sum()  # noqa
    assert np.mean([top(im) for im in toon]) > 0.6 * 64 * 64 > 3 * np.mean([top(im) for im in photo])
    e_photo, e_toon = _dark_edge_fraction(photo), _dark_edge_fraction(toon)
    assert e_toon.mean() > 3 * e_photo.mean() and e_toon.min() > 0.02, (e_toon, e_photo)


# ---------------------------------------------------------------------------------------------- tf.data
def test_make_dataset_yields_batches():
    tf = pytest.importorskip("tensorflow")
    ds = data.make_dataset("synthetic:faces", 32, 4, seed=3, flip=False)
    x = next(iter(ds))
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32
    x = x.numpy()
    assert -1.0 <= x.min() < x.max() <= 1.0
    raw = np.rint((x + 1.0) * 127.5).astype(np.int64)
    np.testing.assert_array_equal(raw, F.faces(synthetic.batch_seed(3, 0, 0), 4, 32))
    y = next(iter(data.make_dataset("synthetic:cartoon", 32, 4, seed=3)))
    assert y.shape == (4, 32, 32, 3)


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_pngs_and_grid(tmp_path):
    from PIL import Image

    out = tmp_path / "toon"
    assert F.main(["--domain", "cartoon", "--size", "32", "--n", "5", "--seed", "2", "--out", str(out)]) == 0
    files = sorted(os.listdir(out))
    assert files == ["cartoon_0000.png", "cartoon_0001.png", "cartoon_0002.png", "cartoon_0003.png",
                     "cartoon_0004.png", "grid.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "cartoon_0003.png")), F.cartoon(2, 5, 32)[3])
    assert Image.open(out / "grid.png").size[0] > 2 * 32


def test_thread_safe():
    """tf.data calls the domain from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(name, seed) for name in sorted(DOMAINS) for seed in range(6)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda j: DOMAINS[j[0]](j[1], 3, 32), jobs))
    for (name, seed), x in zip(jobs, got):
        np.testing.assert_array_equal(x, DOMAINS[name](seed, 3, 32))
