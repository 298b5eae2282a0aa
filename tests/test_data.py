"""tf_cartoon.data (folders, TFRecords, synthetic domains) and python -m tf_cartoon.prepare_data."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_cartoon import data, prepare_data
from tf_cartoon.data import synthetic, tfrecord
from tests.helpers import subprocess_env


@pytest.fixture(autouse=True)
def _fresh_stats():
    data.reset_stats()
    yield
    data.reset_stats()


def _batches(ds, n=None):
    out = []
    for i, x in enumerate(ds):
        if n is not None and i >= n:
            break
        out.append(x.numpy())
    return out


def _to_u8(x):
    return np.rint((np.asarray(x) + 1.0) * 127.5).astype(np.int64)


def _solid(path, colour, size=(20, 12), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _mixed_folder(root):
    """One image per format / mode / case / nesting; returns the paths."""
    rng = np.random.default_rng(0)
    paths = [
        _solid(f"{root}/a.png", (200, 30, 40), (23, 17)),
        _solid(f"{root}/b.jpg", (10, 200, 40), (40, 16)),
        _solid(f"{root}/sub/c.webp", (10, 20, 240), (16, 40)),
        _solid(f"{root}/sub/deeper/d.bmp", (120, 120, 0), (33, 33)),
        _solid(f"{root}/E.PNG", (0, 90, 90), (64, 32)),
        _solid(f"{root}/sub/f.JPEG", (90, 0, 90), (17, 19)),
        _solid(f"{root}/gray.png", 77, (30, 20), mode="L"),
        _solid(f"{root}/la.png", (100, 128), (20, 30), mode="LA"),
        _solid(f"{root}/rgba.png", (10, 20, 30, 0), (24, 24), mode="RGBA"),
    ]
    p = Image.fromarray(rng.integers(0, 256, (18, 26, 3), dtype=np.uint8)).convert("P")
    p.save(f"{root}/sub/pal.png")
    paths.append(f"{root}/sub/pal.png")
    Image.fromarray(np.full((14, 22), 40000, np.uint16)).save(f"{root}/sixteen.png")  # mode I;16
    paths.append(f"{root}/sixteen.png")
    return paths


# ------------------------------------------------------------------------------------------------ folder
def test_folder_mixed_formats_modes_and_sizes(tmp_path):
    paths = _mixed_folder(str(tmp_path))
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(data.scan_images(str(tmp_path))) == len(paths) == 11
    modes = {Image.open(p).mode for p in paths}
    assert {"RGB", "L", "LA", "RGBA", "P", "I;16"} <= modes, modes

    ds = data.make_dataset(str(tmp_path), 16, 4, shuffle=False, flip=False, repeat=False)
    got = _batches(ds)
    assert len(got) == 11 // 4  # drop_remainder
    ds = data.make_dataset(str(tmp_path), 16, 4, seed=3)  # the training configuration
    assert ds.element_spec.shape.as_list() == [4, 16, 16, 3] and ds.element_spec.dtype == tf.float32
    got += _batches(ds, 6)
    for b in got:
        assert b.shape == (4, 16, 16, 3) and b.dtype == np.float32
        assert b.min() >= -1.0 and b.max() <= 1.0
    assert data.stats().skipped == 0


def test_mode_conversions(tmp_path):
    d = str(tmp_path)
    _solid(f"{d}/l.png", 77, mode="L")
    _solid(f"{d}/la.png", (100, 128), mode="LA")
    _solid(f"{d}/clear.png", (255, 0, 0, 0), mode="RGBA")
    _solid(f"{d}/half.png", (0, 0, 0, 51), mode="RGBA")
    Image.fromarray(np.full((12, 20), 40000, np.uint16)).save(f"{d}/i16.png")
    pal = Image.new("P", (20, 12))
    pal.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    pal.putdata([1] * (20 * 12))
    pal.save(f"{d}/p.png")
    pal.save(f"{d}/ptrans.png", transparency=1)

    def px(name):
        a = data.load_image(f"{d}/{name}", 8)
        assert a.shape == (8, 8, 3) and a.dtype == np.uint8
        assert (a == a[0, 0]).all(), name  # constant stays constant through the resize
        return tuple(int(v) for v in a[0, 0])

    assert px("l.png") == (77, 77, 77)
    la = round(100 * 128 / 255 + 255 * 127 / 255)
    assert all(abs(v - la) <= 1 for v in px("la.png"))  # composited on white
    assert px("clear.png") == (255, 255, 255)  # transparent -> white, not the hidden red
    assert all(abs(v - 204) <= 1 for v in px("half.png"))  # 20% black over white
    assert all(abs(v - 156) <= 1 for v in px("i16.png"))  # 40000 / 257, not clipped to 255
    assert px("p.png") == (30, 60, 90)
    assert px("ptrans.png") == (255, 255, 255)


def test_centre_crop_and_constant_resize(tmp_path):
    d = str(tmp_path)
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, :16] = (255, 0, 0)
    wide[:, 16:32] = (0, 255, 0)
    wide[:, 32:] = (0, 0, 255)
    Image.fromarray(wide).save(f"{d}/wide.png")
    Image.fromarray(np.ascontiguousarray(wide.transpose(1, 0, 2))).save(f"{d}/tall.png")  # thirds top->bottom
    for name in ("wide.png", "tall.png"):
        a = data.load_image(f"{d}/{name}", 8).astype(int)
        centre = a[2:6, 2:6]
        assert (np.abs(centre - (0, 255, 0)) <= 2).all(), (name, centre)
        assert a[..., 0].max() < 128 and a[..., 2].max() < 128, name  # no red / blue region survives

    os.makedirs(f"{d}/const")
    _solid(f"{d}/const/c.png", (30, 140, 220), (32, 32))
    x = _batches(data.make_dataset(f"{d}/const", 16, 1, shuffle=False, flip=False, repeat=False))[0]
    np.testing.assert_array_equal(_to_u8(x[0]), np.broadcast_to([30, 140, 220], (16, 16, 3)))
    np.testing.assert_allclose(x[0, 0, 0], np.array([30, 140, 220]) / 127.5 - 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------------- corrupt files
def _corrupt_files(d):
    os.makedirs(d, exist_ok=True)
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(f"{d}/trunc.png")
    raw = open(f"{d}/trunc.png", "rb").read()
    open(f"{d}/trunc.png", "wb").write(raw[: len(raw) // 2])
    open(f"{d}/random.jpg", "wb").write(np.random.default_rng(2).bytes(500))
    open(f"{d}/empty.png", "wb").close()
    open(f"{d}/text.webp", "w").write("hello, I am not a webp\n")
    return sorted(os.path.join(d, n) for n in ("trunc.png", "random.jpg", "empty.png", "text.webp"))


def test_corrupt_files_skipped_counted_logged_once(tmp_path, caplog):
    d = str(tmp_path)
    bad = _corrupt_files(f"{d}/bad")
    good = {(200, 10, 10), (10, 200, 10), (10, 10, 200)}
    for i, c in enumerate(sorted(good)):
        _solid(f"{d}/good{i}.png", c)
    caplog.set_level(logging.WARNING, logger="tf_cartoon.data")
    ds = data.make_dataset(d, 8, 2, flip=False, seed=1)
    batches = _batches(ds, 12)  # 24 images = 8 epochs over the 3 good files
    seen = {tuple(int(v) for v in _to_u8(img)[4, 4]) for b in batches for img in b}
    assert seen == good
    st = data.stats()
    assert st.skipped == 4 and sorted(st.bad_files) == bad
    assert all(st.bad_files[p] for p in bad)  # a reason for each
    text = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for p in bad:
        assert sum(p in m for m in text) == 1, (p, text)

    # a second dataset over the same folder does not log them again
    _batches(data.make_dataset(d, 8, 2, flip=False), 3)
    text = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(sum(p in m for m in text) == 1 for p in bad)
    assert data.stats().skipped == 4


def test_all_corrupt_empty_and_missing_folders(tmp_path):
    bad_dir = str(tmp_path / "allbad")
    _corrupt_files(bad_dir)
    with pytest.raises(ValueError, match="none of the 4 image file"):
        data.make_dataset(bad_dir, 8, 2)
    assert data.stats().skipped == 4

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError) as e:
        data.make_dataset(str(empty), 8, 2)
    assert str(empty) in str(e.value) and ".webp" in str(e.value) and ".jpg" in str(e.value)

    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        data.make_dataset(missing, 8, 2)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        data.make_dataset(str(tmp_path / "*.tfrecord"), 8, 2)


def test_files_vanishing_mid_run_end_in_an_error(tmp_path):
    for i in range(3):
        _solid(f"{tmp_path}/img{i}.png", (i, i, i))
    it = iter(data.make_dataset(str(tmp_path), 8, 2))
    next(it)
    for i in range(3):
        os.remove(f"{tmp_path}/img{i}.png")
    with pytest.raises(tf.errors.OpError, match="in a row could not be read"):
        for _ in range(1000):
            next(it)
    assert data.stats().skipped == 3


# --------------------------------------------------------------------------------------------------- flip
def test_flip(tmp_path):
    a = np.zeros((8, 8, 3), np.uint8)
    a[:, 4:] = 255
    Image.fromarray(a).save(tmp_path / "lr.png")

    def orientations(flip, seed=0):
        out = []
        for b in _batches(data.make_dataset(str(tmp_path), 8, 8, flip=flip, seed=seed), 6):
            for img in b:
                left, right = img[:, :4].mean(), img[:, 4:].mean()
                out.append(bool(left > right))  # True = mirrored
        return out

    flipped = orientations(True)
    assert 8 < sum(flipped) < 40  # both orientations, about half each
    assert orientations(True) == flipped  # reproducible from the seed
    assert orientations(True, seed=5) != flipped
    assert not any(orientations(False))


# ---------------------------------------------------------------------------------------------- sharding
def _ids(batches):
    return [int(_to_u8(img)[2, 2, 0]) for b in batches for img in b]


def _ctx(i, n=2):
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n)


def test_folder_sharding_disjoint(tmp_path):
    reds = [10 + 20 * i for i in range(11)]
    for i, r in enumerate(reds):
        _solid(f"{tmp_path}/{'sub/' if i % 3 else ''}img{i:02d}.png", (r, 50, 50))
    for shuffle in (False, True):
        parts = [_ids(_batches(data.make_dataset(str(tmp_path), 8, 1, shuffle=shuffle, repeat=False,
                                                 input_context=_ctx(i)))) for i in range(2)]
        assert len(parts[0]) == len(set(parts[0])) and len(parts[1]) == len(set(parts[1]))
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == reds
    # synthetic: different streams per pipeline
    s = [_batches(data.make_dataset("synthetic:blobs", 8, 2, input_context=_ctx(i)), 1)[0] for i in range(2)]
    assert not np.array_equal(s[0], s[1])


# ---------------------------------------------------------------------------------------- prepare_data
def _source_tree(d):
    rng = np.random.default_rng(7)
    good = []
    for i in range(8):
        ext = ["png", "jpg", "webp", "bmp", "PNG"][i % 5]
        sub = "nested/" if i % 2 else ""
        p = f"{d}/{sub}img{i}.{ext}"
        os.makedirs(os.path.dirname(p), exist_ok=True)
        h, w = [(20, 30), (30, 20), (16, 16), (40, 24)][i % 4]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        good.append(p)
    Image.new("RGBA", (24, 18), (0, 0, 255, 100)).save(f"{d}/nested/alpha.png")
    good.append(f"{d}/nested/alpha.png")
    return good, _corrupt_files(f"{d}/broken")


def _digests(ds):
    return sorted(hashlib.sha1(_to_u8(img).astype(np.uint8).tobytes()).hexdigest()
                  for b in _batches(ds) for img in b)


def _records(files):
    spec = tfrecord.feature_spec()
    return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()}
            for r in tf.data.TFRecordDataset(files)]


def test_prepare_data_end_to_end(tmp_path, capsys, caplog):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    good, bad = _source_tree(src)
    rc = prepare_data.main([src, out, "--size", "16", "--shards", "3", "--workers", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    names = sorted(os.listdir(out))
    assert names == [f"data-{i:05d}-of-00003.tfrecord" for i in range(3)]  # and no temp file
    shards = [os.path.join(out, n) for n in names]
    recs = _records(shards)
    assert len(recs) == len(good)
    assert all(r["size"] == 16 for r in recs)
    assert sorted(r["source"].decode() for r in recs) == sorted(os.path.relpath(p, src) for p in good)
    assert all(0 < len(_records([s])) for s in shards)
    assert "worker pool failed" not in cap.err
    assert f"[prepare_data]: {len(good) + 4}/{len(good) + 4} images (100%), " in cap.err
    assert f"written {len(good)}, skipped 4" in cap.err.splitlines()[-1]
    for p in bad:
        assert sum(os.path.relpath(p, src) in line for line in cap.err.splitlines()) == 1, cap.err
    assert f"wrote {len(good)} image(s) to 3 shard(s)" in cap.out and "skipped 4" in cap.out

    # same pixels as the folder pipeline (order-independent)
    kw = dict(shuffle=False, flip=False, repeat=False)
    from_folder = _digests(data.make_dataset(src, 16, 1, **kw))
    assert len(from_folder) == len(good)
    assert _digests(data.make_dataset(out, 16, 1, **kw)) == from_folder
    assert _digests(data.make_dataset(os.path.join(out, "*.tfrecord"), 16, 1, **kw)) == from_folder

    # training configuration on the shards
    for b in _batches(data.make_dataset(out, 16, 4, seed=2), 5):
        assert b.shape == (4, 16, 16, 3) and b.dtype == np.float32 and -1 <= b.min() and b.max() <= 1

    # records of another resolution are resized, with one warning
    caplog.set_level(logging.WARNING, logger="tf_cartoon.data")
    small = _batches(data.make_dataset(out, 8, 3, **kw))
    assert len(small) == 3 and all(b.shape == (3, 8, 8, 3) for b in small)
    assert any("resizing them to 8 px" in r.getMessage() for r in caplog.records)

    # TFRecord sharding: by file (3 files >= 2 pipelines) and by record (1 file)
    rc = prepare_data.main([src, str(tmp_path / "one"), "--size", "16", "--shards", "1", "--workers", "1"])
    assert rc == 0
    for spec in (out, str(tmp_path / "one")):
        parts = [_digests(data.make_dataset(spec, 16, 1, shuffle=True, flip=False, repeat=False, seed=4,
                                            input_context=_ctx(i))) for i in range(2)]
        assert not set(parts[0]) & set(parts[1]), spec
        assert sorted(parts[0] + parts[1]) == from_folder, spec


def test_prepare_data_atomic_and_errors(tmp_path, capsys, monkeypatch):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    _source_tree(src)
    assert prepare_data.main([src, out, "--size", "8", "--shards", "2", "--workers", "1"]) == 0
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    # existing shards are an error without --overwrite
    assert prepare_data.main([src, out, "--size", "8", "--shards", "2", "--workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    calls = []

    def failing(*a):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("disk full")
        return real(*a)

    real = tfrecord.make_example
    monkeypatch.setattr(tfrecord, "make_example", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_data.main([src, out, "--size", "8", "--shards", "3", "--workers", "1", "--overwrite"])
    monkeypatch.setattr(tfrecord, "make_example", real)
    after = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    assert after == before  # old shards untouched, no partial / temp file left

    # --overwrite replaces, and removes the stale shards of another --shards
    assert prepare_data.main([src, out, "--size", "8", "--shards", "3", "--workers", "1", "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == [f"data-{i:05d}-of-00003.tfrecord" for i in range(3)]
    capsys.readouterr()

    for argv, needle in [([src, out + "2", "--size", "12"], "power of two"),
                         ([src, out + "2", "--size", "4"], "power of two"),
                         ([src, out + "2", "--shards", "0"], "--shards"),
                         ([str(tmp_path / "missing"), out + "2"], "missing"),
                         ([str(tmp_path / "src" / "broken"), out + "2", "--size", "8"], None)]:
        rc = prepare_data.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if needle is None:  # only corrupt files in it
            assert rc == 2 and err[-1].startswith("error: none of the 4 image file(s)")
            assert not glob.glob(out + "2/*")
        else:
            assert rc == 2 and needle in err[-1] and len(err) == 1, err
    os.makedirs(tmp_path / "blank")
    assert prepare_data.main([str(tmp_path / "blank"), out + "3"]) == 2
    assert "no image files" in capsys.readouterr().err


def test_prepare_data_cli_exit_code(tmp_path):
    src = tmp_path / "src"
    _solid(str(src / "a.png"), (1, 2, 3))
    env = subprocess_env()
    r = subprocess.run([sys.executable, "-m", "tf_cartoon.prepare_data", str(src), str(tmp_path / "out"),
                        "--size", "100", "--shards", "2"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "power of two" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
    # the data layer (and so prepare_data's spawned workers) does not import TensorFlow
    r = subprocess.run([sys.executable, "-c", "import sys, tf_cartoon.prepare_data, tf_cartoon.data; "
                        "assert 'tensorflow' not in sys.modules"], env=env, timeout=60)
    assert r.returncode == 0


# --------------------------------------------------------------------------------------------- synthetic
def test_synthetic_blobs():
    a = synthetic.blobs(3, 4, 16)
    assert a.dtype == np.uint8 and a.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(a, synthetic.blobs(3, 4, 16))
    assert not np.array_equal(a, synthetic.blobs(4, 4, 16))
    assert all(len(np.unique(img.reshape(-1, 3), axis=0)) >= 2 for img in a)  # background + blobs

    assert "blobs" in data.available_synthetic()
    ds = data.make_dataset("synthetic:blobs", 16, 4, seed=1)
    assert ds.element_spec.shape.as_list() == [4, 16, 16, 3]
    x = _batches(ds, 3)
    y = _batches(data.make_dataset("synthetic:blobs", 16, 4, seed=1), 3)
    z = _batches(data.make_dataset("synthetic:blobs", 16, 4, seed=2), 1)
    for b in x:
        assert b.shape == (4, 16, 16, 3) and b.dtype == np.float32 and -1 <= b.min() and b.max() <= 1
    np.testing.assert_array_equal(np.stack(x), np.stack(y))
    assert not np.array_equal(x[0], x[1]) and not np.array_equal(x[0], z[0])
    # without flip, a batch is exactly the domain's draw for its seed
    raw = _batches(data.make_dataset("synthetic:blobs", 16, 4, seed=1, flip=False), 1)[0]
    np.testing.assert_array_equal(_to_u8(raw), synthetic.blobs(synthetic.batch_seed(1, 0, 0), 4, 16))
    assert len(_batches(data.make_dataset("synthetic:blobs", 8, 256, repeat=False))) == \
        data.SYNTHETIC_EPOCH_IMAGES // 256

    with pytest.raises(ValueError, match="synthetic:blobs") as e:
        data.make_dataset("synthetic:nope", 16, 4)
    assert "nope" in str(e.value)


def test_register_synthetic():
    try:
        data.register_synthetic("const7", lambda seed, n, size: np.full((n, size, size, 3), 7, np.uint8))
        x = _batches(data.make_dataset("synthetic:const7", 8, 2), 1)[0]
        np.testing.assert_allclose(x, 7 / 127.5 - 1.0, atol=1e-6)
        assert "const7" in data.available_synthetic()
        with pytest.raises(ValueError, match="already registered"):
            data.register_synthetic("const7", lambda seed, n, size: None)
        data.register_synthetic("wrong", lambda seed, n, size: np.zeros((n, size, size), np.float32))
        with pytest.raises(ValueError, match="expected uint8"):
            data.make_dataset("synthetic:wrong", 8, 2)
    finally:
        for name in ("const7", "wrong"):
            synthetic._DOMAINS.pop(name, None)
    assert data.AUTOTUNE == tf.data.AUTOTUNE


# ------------------------------------------------------------------------------------ resume: start_batch
def test_start_batch_synthetic_bit_exact_and_not_drawn():
    calls = []

    def noise(seed, n, size):  # cheap, and records what is drawn
        calls.append((seed, n))
        return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    data.register_synthetic("noise", noise)
    try:
        kw = dict(flip=True, seed=3, input_context=_ctx(1))
        full = _batches(data.make_dataset("synthetic:noise", 8, 2, **kw), 7)
        got = _batches(data.make_dataset("synthetic:noise", 8, 2, start_batch=5, **kw), 2)
        np.testing.assert_array_equal(np.stack(got), np.stack(full[5:7]))  # flips included, bit for bit
        # repeat=False: the single "epoch" (SYNTHETIC_EPOCH_IMAGES // 256 = 4 batches) continues, then ends
        one = dict(flip=True, seed=3, repeat=False)
        epoch = _batches(data.make_dataset("synthetic:noise", 2, 256, **one))
        last = _batches(data.make_dataset("synthetic:noise", 2, 256, start_batch=3, **one))
        assert len(epoch) == 4 and len(last) == 1
        np.testing.assert_array_equal(last[0], epoch[3])
        assert _batches(data.make_dataset("synthetic:noise", 2, 256, start_batch=4, **one)) == []

        # skipped batches are never drawn: only (about) the batches read, at their absolute indices
        start = 10 ** 9
        seeds = {synthetic.batch_seed(3, 0, start + i) for i in range(64)}
        calls.clear()
        x = _batches(data.make_dataset("synthetic:noise", 8, 2, seed=3, flip=False, start_batch=start), 1)[0]
        drawn = [sd for sd, n in calls if n == 2]  # (n == 1: the build-time validation draw)
        assert 1 <= len(drawn) <= 64 and set(drawn) <= seeds, calls
        np.testing.assert_array_equal(_to_u8(x), noise(synthetic.batch_seed(3, 0, start), 2, 8))
    finally:
        synthetic._DOMAINS.pop("noise", None)
    with pytest.raises(ValueError, match="start_batch"):
        data.make_dataset("synthetic:blobs", 8, 2, start_batch=-1)


def _halves(red):
    """8x8 uint8: left and right halves differ, so a flip shows."""
    a = np.full((8, 8, 3), (red, 50, 50), np.uint8)
    a[:, 4:] = (red, 200, 90)
    return a


def test_start_batch_folder_equals_skip_without_decoding(tmp_path):
    for i in range(11):  # 11 files, batch 4: batches straddle the epoch boundaries
        os.makedirs(f"{tmp_path}/sub", exist_ok=True)
        Image.fromarray(_halves(10 + 20 * i)).save(f"{tmp_path}/{'sub/' if i % 3 else ''}img{i:02d}.png")
    d = str(tmp_path)
    for batch, ctx, ks in ((4, None, (2, 6)), (2, _ctx(1), (3,))):  # pipeline 1 of 2 owns 5 files
        kw = dict(shuffle=False, flip=True, seed=2, num_parallel=1, input_context=ctx)
        ds = data.make_dataset(d, 8, batch, **kw)
        for k in ks:
            got = _batches(data.make_dataset(d, 8, batch, start_batch=k, **kw), 2)
            np.testing.assert_array_equal(np.stack(got), np.stack(_batches(ds.skip(k), 2)))
    # one pass: continue it, or nothing once past its last full batch
    kw = dict(shuffle=False, flip=True, seed=2, repeat=False)
    epoch = _batches(data.make_dataset(d, 8, 4, **kw))
    assert len(epoch) == 2
    np.testing.assert_array_equal(np.stack(_batches(data.make_dataset(d, 8, 4, start_batch=1, **kw))),
                                  np.stack(epoch[1:]))
    assert _batches(data.make_dataset(d, 8, 4, start_batch=2, **kw)) == []

    # a far resume decodes about one batch (+ prefetch), not the 4 million skipped images
    data.reset_stats()
    _batches(data.make_dataset(d, 8, 4, seed=2, start_batch=10 ** 6), 1)
    assert data.stats().decoded < 200, data.stats().decoded


def test_start_batch_folder_shuffled_file_order(tmp_path):
    from tf_cartoon.data import folder

    own = [f"f{i}" for i in range(7)]

    def names(ds, n):
        return [v.decode() for v in ds.take(n).as_numpy_iterator()]

    full = names(folder.file_stream(own, shuffle=True, repeat=True, seed=5), 40)
    epochs = [full[i:i + 7] for i in range(0, 35, 7)]
    assert all(sorted(e) == own for e in epochs) and len({tuple(e) for e in epochs}) > 1
    for n in (3, 7, 23):
        assert names(folder.file_stream(own, shuffle=True, repeat=True, seed=5, skip_files=n), 40 - n) == full[n:]
    assert names(folder.file_stream(own, shuffle=True, repeat=True, seed=6), 7) != epochs[0]

    # end to end, shuffled, one pass: a resume at batch 2 yields exactly the files after the first 2 batches
    # of the epoch's seeded order (in an order mixed by the element buffer: not a bit-exact reproduction)
    reds = [10 + 20 * i for i in range(12)]
    for i, r in enumerate(reds):
        _solid(f"{tmp_path}/img{i:02d}.png", (r, 50, 50))
    files = data.scan_images(str(tmp_path))
    order = names(folder.file_stream(files, shuffle=True, repeat=False, seed=data._pipeline_seed(4, 0)), 12)
    want = sorted(reds[files.index(p)] for p in order[4:])
    got = _ids(_batches(data.make_dataset(str(tmp_path), 8, 2, shuffle=True, flip=False, repeat=False, seed=4,
                                          start_batch=2)))
    assert sorted(got) == want


def _write_records(path, reds):
    import io

    with tf.io.TFRecordWriter(path) as w:
        for i, r in enumerate(reds):
            buf = io.BytesIO()
            Image.fromarray(_halves(r)).save(buf, format="PNG")
            w.write(tfrecord.make_example(buf.getvalue(), 8, f"{i}.png"))


def test_start_batch_tfrecord_equals_skip(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    reds = [10 + 20 * i for i in range(12)]
    for j, part in enumerate((reds[:4], reds[4:7], reds[7:])):  # 4, 3 and 5 records
        _write_records(str(shards / f"data-{j}.tfrecord"), part)
    _write_records(str(tmp_path / "one.tfrecord"), reds[:9])
    # by file (3 files, 1 pipeline; 6 batches an epoch) and by record (1 file, pipeline 1 of 2; 2 batches)
    for spec, ctx, k in ((str(shards), None, 5), (str(tmp_path / "one.tfrecord"), _ctx(1), 3)):
        kw = dict(shuffle=False, flip=True, seed=1, num_parallel=1, input_context=ctx)
        got = _batches(data.make_dataset(spec, 8, 2, start_batch=k, **kw), 2)  # crosses an epoch boundary
        np.testing.assert_array_equal(np.stack(got), np.stack(_batches(data.make_dataset(spec, 8, 2, **kw).skip(k), 2)))
    once = dict(shuffle=False, flip=True, seed=1, repeat=False)
    epoch = _batches(data.make_dataset(str(shards), 8, 2, **once))
    assert len(epoch) == 6
    np.testing.assert_array_equal(np.stack(_batches(data.make_dataset(str(shards), 8, 2, start_batch=4, **once))),
                                  np.stack(epoch[4:]))
    assert _batches(data.make_dataset(str(shards), 8, 2, start_batch=6, **once)) == []
    # shuffled (non-deterministic interleave / buffers): runs, same shapes
    b = _batches(data.make_dataset(str(shards), 8, 2, seed=1, start_batch=7), 2)
    assert len(b) == 2 and all(x.shape == (2, 8, 8, 3) for x in b)
