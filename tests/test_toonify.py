"""tf_cartoon.toonify: photo -> aligned, source reconstruction, target, swaps, W+ (library and command line)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import one_line_error
from tf_cartoon import align, cli, toonify
from tf_cartoon.data import synthetic

BUILTIN = "builtin:source_synthetic"
STEPS = 40


@pytest.fixture(scope="module")
def g():
    return cli.load_generator(BUILTIN, "--source")


@pytest.fixture(scope="module")
def face(g):
    """A rendered synthetic:faces image at the generator's size: the built-in domain's "photo"."""
    return synthetic.draw("faces", 1234, 1, g.size)[0]


@pytest.fixture(scope="module")
def result(g, face):
    return toonify.toonify_photo(face, g, g, fast=True, steps=STEPS)


def test_result_shapes(g, face, result):
    assert isinstance(result, toonify.ToonifyResult)
    np.testing.assert_array_equal(result.aligned, face)  # auto: a square at the generator's size is used as is
    for image in (result.reconstruction, result.target, *result.swapped.values()):
        assert image.dtype == np.uint8 and image.shape == (g.size, g.size, 3)
    assert sorted(result.swapped) == [1, 2]
    assert result.w_plus.dtype == np.float32 and result.w_plus.shape == (g.n_latent, g.style_dim)


def test_reconstruction_closer_than_random_samples(g, face, result):
    def mse(a):
        return float(np.mean((a.astype(np.float64) - face.astype(np.float64)) ** 2))

    z = np.random.RandomState(0).randn(8, g.z_dim).astype(np.float32)
    samples = np.asarray(g(z, randomize_noise=False))
    samples = np.clip((samples + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    assert mse(result.reconstruction) < min(mse(s) for s in samples)


def test_same_generator_swaps_equal_target(result):
    """Swapping a generator's feature into itself changes nothing: the swap path renders the same W+."""
    for image in result.swapped.values():
        np.testing.assert_allclose(image.astype(int), result.target.astype(int), atol=1)


def test_sheet(result, g):
    s = toonify.sheet(result)
    cell = g.size * max(1, -(-toonify.SHEET_MIN_PANEL // g.size))
    assert s.dtype == np.uint8 and s.shape[0] > cell and s.shape[1] >= 5 * cell
    assert [label for label, _ in toonify.panels(result)] == ["aligned", "reconstruction", "target",
                                                              "swap l=1", "swap l=2"]


def test_bad_align_mode(g, face):
    with pytest.raises(ValueError, match="align must be one of"):
        toonify.toonify_photo(face, g, g, align="dlib")


@pytest.mark.slow  # a second projection, traced anew
def test_cli_writes_sheet_and_latent(tmp_path, face, g):
    photo = tmp_path / "face.png"
    Image.fromarray(face).save(photo)
    out = tmp_path / "out"
    rc = toonify.main([str(photo), "--target", BUILTIN, "--out", str(out), "--steps", "5", "--swap_layers", "2"])
    assert rc == 0
    sheet = np.asarray(Image.open(out / "face.png"))
    assert sheet.ndim == 3 and sheet.shape[1] >= 4 * g.size
    with np.load(out / "face.npz") as f:
        assert f["w_plus"].shape == (g.n_latent, g.style_dim)
        np.testing.assert_array_equal(f["photo"], face)


@pytest.mark.parametrize("args, expected", [
    (["missing.png"], "missing.png does not exist"),
    (["PHOTO", "--steps", "0"], "--steps must be >= 1"),
    (["PHOTO", "--swap_layers", "x"], "--swap_layers"),
    (["PHOTO", "--source", "nowhere/ckpt"], "--source"),
])
def test_cli_bad_input_one_line(tmp_path, face, capsys, args, expected):
    photo = tmp_path / "p.png"
    Image.fromarray(face).save(photo)
    argv = [str(photo) if a == "PHOTO" else (str(tmp_path / a) if a == "missing.png" else a) for a in args]
    rc = toonify.main([*argv, "--target", BUILTIN, "--out", str(tmp_path / "out")])
    assert rc == 2
    assert expected in one_line_error(capsys)


def test_cli_bad_align_choice(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        toonify.main(["x.png", "--target", BUILTIN, "--out", str(tmp_path), "--align", "dlib"])
    assert e.value.code == 2
    assert "--align" in one_line_error(capsys)


def test_cli_unreadable_photo_skipped_none_done(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rc = toonify.main([str(bad), "--target", BUILTIN, "--out", str(tmp_path / "out"), "--steps", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and "error: no photo toonified (of 1)" in err
    assert not os.path.exists(tmp_path / "out" / "bad.png")


@pytest.mark.slow
def test_cli_real_unaligned_photo(tmp_path, g):
    """astronaut.png (512 px, the face off-centre): MTCNN alignment -> projection -> sheet and latent."""
    from tests.test_align import ASTRONAUT

    if ASTRONAUT is None or align.weights_dir() is None:
        pytest.skip("needs scikit-image's astronaut.png and facenet-pytorch's MTCNN weights (pip install --no-deps)")
    out = tmp_path / "out"
    rc = toonify.main([ASTRONAUT, "--target", BUILTIN, "--out", str(out), "--steps", "10"])
    assert rc == 0
    with np.load(out / "astronaut.npz") as f:
        aligned = f["photo"]
    photo = align.read_photo(ASTRONAUT)
    np.testing.assert_array_equal(aligned, align.ffhq_crop(photo, align.detector().detect(photo).landmarks[0], g.size))
    assert np.asarray(Image.open(out / "astronaut.png")).shape[1] >= 5 * g.size


def test_cli_align_without_weights_one_line(tmp_path, face, monkeypatch, capsys):
    monkeypatch.setattr(align, "weights_dir", lambda: None)
    photo = tmp_path / "p.png"
    Image.fromarray(face).save(photo)
    rc = toonify.main([str(photo), "--target", BUILTIN, "--out", str(tmp_path / "out"), "--align", "mtcnn"])
    assert rc == 2
    assert "pip install --no-deps facenet-pytorch" in one_line_error(capsys)


@pytest.mark.slow  # two projections, each traced anew
def test_cli_progress_and_quiet(tmp_path, face, capsys):
    from tests.helpers import tool_lines

    photo = tmp_path / "face.png"
    Image.fromarray(face).save(photo)
    argv = [str(photo), "--target", BUILTIN, "--steps", "2", "--swap_layers", "2", "--align", "none"]
    assert toonify.main(argv + ["--out", str(tmp_path / "a")]) == 0
    lines = tool_lines(capsys.readouterr().err)
    assert any(line.startswith("toonify face: 2/2 steps (100%), ") and "; mse " in line for line in lines), lines
    assert toonify.main(argv + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'b'}: 1 of 1 photo(s)")
    assert [line for line in tool_lines(err) if "projecting" in line or "steps" in line] == []
