"""When storage or processes fail: torn checkpoints, two runs on one workdir, a full disk, images that change
under a run, incomplete SavedModel versions (tiny 16 px models, CPU)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon.io import integrity, store
from tf_cartoon.io.errors import CheckpointFormatError, StorageError, WorkdirBusyError
from tf_cartoon.training.config import TrainConfig
from tf_cartoon.training.trainer import Trainer
from tests.tiny_models import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # short training runs and subprocesses: minutes in all


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3)


def _cfg(tiny, workdir, **kw):
    base = dict(ckpt=tiny, data="synthetic:blobs", batch=4, iter=2, workdir=str(workdir), log_every=1,
                sample_every=1000, ckpt_every=1, keep_checkpoints=5, swap_layers="1,2", seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _train(tiny, workdir, *extra, timeout=400):
    cmd = [sys.executable, "-m", "tf_cartoon.train", f"--ckpt={tiny}", "--data=synthetic:blobs",
           f"--workdir={workdir}", "--batch=4", "--ckpt_every=1", "--log_every=1", "--sample_every=100000",
           "--keep_checkpoints=5", "--swap_layers=1,2", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _error_line(err: str) -> str:
    """The CLI's one-line error: the last line of stderr, with no traceback anywhere."""
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-3000:]
    return last


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _data(prefix):
    return prefix + ".data-00000-of-00001"


def _loads_fully(prefix):
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    return True


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------------------------- verification
def test_candidates_of_a_relative_directory(tmp_path, monkeypatch):
    """A workdir named relative to the current directory (``--target runs/quickstart``)."""
    monkeypatch.chdir(tmp_path)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), os.path.join("wd", "ck"), 3)
    manager.save()
    manager.save()
    assert integrity.candidates(os.path.join("wd", "ck")) == [os.path.join("wd", "ck", f"ckpt-{i}") for i in (2, 1)]
    assert integrity.newest_good(os.path.join("wd", "ck"))[0] == os.path.join("wd", "ck", "ckpt-2")


def test_verify_finds_torn_index_and_data_and_lists_newest_first(tmp_path):
    v = {f"v{i}": tf.Variable(np.arange(1000, dtype=np.float32) + i) for i in range(4)}
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**v), str(tmp_path), max_to_keep=5)
    for _ in range(3):
        manager.save()
    assert integrity.candidates(str(tmp_path)) == [str(tmp_path / f"ckpt-{i}") for i in (3, 2, 1)]
    assert all(integrity.verify_checkpoint(str(tmp_path / f"ckpt-{i}")) is None for i in (1, 2, 3))
    num_shards, needed = integrity.index_extents(str(tmp_path / "ckpt-3"))
    assert num_shards == 1 and needed[0] == os.path.getsize(_data(str(tmp_path / "ckpt-3")))

    _truncate(_data(str(tmp_path / "ckpt-3")))
    assert "ckpt-3.data-00000-of-00001 is cut short" in integrity.verify_checkpoint(str(tmp_path / "ckpt-3"))
    _truncate(str(tmp_path / "ckpt-2.index"))
    assert "ckpt-2.index" in integrity.verify_checkpoint(str(tmp_path / "ckpt-2"))
    good, bad = integrity.newest_good(str(tmp_path))
    assert good == str(tmp_path / "ckpt-1") and [p for p, _ in bad] == [str(tmp_path / "ckpt-3"),
                                                                         str(tmp_path / "ckpt-2")]
    # A torn state file: the checkpoints are found by their files.
    state = (tmp_path / "checkpoint").read_text()
    (tmp_path / "checkpoint").write_text(state[:25])
    assert integrity.candidates(str(tmp_path)) == [str(tmp_path / f"ckpt-{i}") for i in (3, 2, 1)]
    integrity.drop_from_state(str(tmp_path), [str(tmp_path / "ckpt-3")])
    assert tf.train.get_checkpoint_state(str(tmp_path)).model_checkpoint_path.endswith("ckpt-2")

    # Same size but different bytes: the size check passes, reading every tensor (CRC) does not.
    path = _data(str(tmp_path / "ckpt-1"))
    raw = bytearray(open(path, "rb").read())
    raw[100] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    assert integrity.verify_checkpoint(str(tmp_path / "ckpt-1")) is None
    assert "unreadable" in integrity.verify_checkpoint(str(tmp_path / "ckpt-1"), read_tensors=True)


def test_converted_directory_with_torn_weights_is_a_one_line_error_naming_the_file(tiny, tmp_path):
    copy = tmp_path / "conv"
    shutil.copytree(tiny, copy)
    (data,) = [n for n in os.listdir(copy / "weights") if ".data-" in n]
    _truncate(copy / "weights" / data)
    with pytest.raises(CheckpointFormatError, match=rf"{data} is cut short") as e:
        store.load(str(copy))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ torn newest checkpoint
def test_torn_newest_checkpoint_is_set_aside_and_the_rerun_resumes(tiny, tmp_path, caplog):
    workdir = tmp_path / "run"
    ckdir = workdir / "checkpoints"
    Trainer(_cfg(tiny, workdir, iter=3)).fit()  # in-process: a CLI run costs a TensorFlow start more
    _truncate(_data(str(ckdir / "ckpt-3")))

    # The other tools read the workdir from its newest intact checkpoint, and say so.
    caplog.set_level(logging.WARNING, logger="tf_cartoon.io")
    assert store.load(str(workdir), models=("g_ema",)).g_ema is not None
    assert any("ckpt-3" in m and "cut short" in m for m in caplog.messages), caplog.messages
    assert any(m.endswith("ckpt-2, its newest intact checkpoint") for m in caplog.messages), caplog.messages

    # A stale lock from a dead process on this host is taken over, and the log says so.
    (workdir / "train.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                    "started": "2026-01-01T00:00:00+00:00"}))
    r = _train(tiny, workdir, "--iter=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "taking over the workdir lock" in r.stderr and "no longer running" in r.stderr
    assert "ckpt-3 is torn" in r.stderr and "cut short" in r.stderr and "corrupt-3" in r.stderr
    assert "resumed from step 2" in r.stderr
    moved = sorted(os.listdir(ckdir / "corrupt-3"))
    assert moved == ["REASON.txt", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    state = tf.train.get_checkpoint_state(str(ckdir))
    assert state.model_checkpoint_path.endswith("ckpt-4")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-1", "ckpt-2", "ckpt-3",
                                                                               "ckpt-4"]
    assert _loads_fully(str(ckdir / "ckpt-3")) and _loads_fully(str(ckdir / "ckpt-4"))  # step 3 trained again
    assert (workdir / "train.lock").read_text() == ""  # a normal exit leaves no holder behind

    # No intact checkpoint at all: a one-line error, exit 2, nothing moved.
    for prefix in integrity.candidates(str(ckdir)):
        _truncate(_data(prefix))
    before = sorted(os.listdir(ckdir))
    r = _train(tiny, workdir, "--iter=5")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _error_line(r.stderr)
    assert "no intact checkpoint" in line and "ckpt-4.data-00000-of-00001 is cut short" in line
    assert sorted(os.listdir(ckdir)) == before


# ------------------------------------------------------------------------------------------ one run per dir
def test_second_run_on_a_held_workdir_fails_fast_naming_the_holder(tiny, tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tf_cartoon.training import workdir_lock as w; "
                               "w.hold(sys.argv[1]); print('held', flush=True); time.sleep(600)", str(workdir)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        r = _train(tiny, workdir, "--iter=1")
        assert r.returncode == 2, r.stderr[-3000:]
        line = _error_line(r.stderr)
        assert f"pid {holder.pid} on {socket.gethostname()}" in line and "in use by another training run" in line
        assert not os.path.exists(workdir / "checkpoints")
        assert time.time() - t0 < 120
        # In-process too: the library raises WorkdirBusyError before building networks.
        with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
            Trainer(_cfg(tiny, workdir))
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the flock, the JSON stays
        holder.wait()
    assert json.loads((workdir / "train.lock").read_text())["pid"] == holder.pid
    t = Trainer(_cfg(tiny, workdir, iter=1))
    t.fit()
    assert int(t.step.numpy()) == 1
    assert (workdir / "train.lock").read_text() == ""


# -------------------------------------------------------------------------------------------------- full disk
def _mount_tmpfs(path, size="4m") -> bool:
    os.makedirs(path, exist_ok=True)
    if os.environ.get("TF_CARTOON_TEST_NO_TMPFS"):  # exercise the injected-failure fallback where root is
        return False
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _fill(folder):
    """Fill the file system of ``folder`` up to the last byte (unbuffered: closing has nothing left to write)."""
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
        for chunk in (b"\0" * 65536, b"\0" * 512, b"\0"):
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC


def test_full_disk_stops_with_the_last_checkpoint_intact_and_samples_only_warn(tiny, tmp_path, caplog,
                                                                               monkeypatch):
    mount = tmp_path / "small"
    real_disk = _mount_tmpfs(mount)
    try:
        workdir = mount / "run"
        t = Trainer(_cfg(tiny, workdir, iter=3))
        train_step = t.train_step

        def step_then_fill(real, step):
            out = train_step(real, step)
            if step == 1:  # after ckpt-1 is written: the disk is full when ckpt-2 is saved
                if real_disk:
                    _fill(str(mount))
                else:  # no tmpfs here: the checkpoint writer fails as TF does on ENOSPC, leaving debris
                    def full(*a, **k):
                        os.makedirs(workdir / "checkpoints" / "ckpt-2_temp", exist_ok=True)
                        (workdir / "checkpoints" / "ckpt-2.index").write_bytes(b"torn")
                        raise tf.errors.ResourceExhaustedError(None, None, "ckpt-2_temp/part-00000: No space "
                                                                           "left on device")
                    monkeypatch.setattr(t.checkpoint, "_write", full)
                    monkeypatch.setattr(t.checkpoint, "write", full)
            return out

        t.train_step = step_then_fill
        with pytest.raises(StorageError) as e:
            t.fit()
        msg = str(e.value)
        assert "\n" not in msg and "No space left on device" in msg and "stopped at step 2" in msg
        assert "ckpt-1 is intact" in msg
        ckdir = workdir / "checkpoints"
        assert not [n for n in os.listdir(ckdir) if n.startswith("ckpt-2")]  # no half-written file or folder
        assert tf.train.latest_checkpoint(str(ckdir)).endswith("ckpt-1")
        assert integrity.verify_checkpoint(str(ckdir / "ckpt-1")) is None and _loads_fully(str(ckdir / "ckpt-1"))
        assert store.load(str(workdir), models=("g_ema",)).g_ema is not None
        assert (workdir / "train.lock").read_text() == ""  # released

        # Space is back: the same command resumes from step 1 and finishes.
        if real_disk:
            os.remove(mount / "filler")
        monkeypatch.undo()
        t2 = Trainer(_cfg(tiny, workdir, iter=3))
        assert t2.restore_or_initialise() == 1
        t2.fit()
        assert tf.train.latest_checkpoint(str(ckdir)).endswith("ckpt-3")
    finally:
        if real_disk:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)

    # Samples and TensorBoard are optional: a failed write is one warning and the run goes on.
    from tf_cartoon.training import trainer as trainer_mod

    def no_space(path, image):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(trainer_mod, "save_png", no_space)
    caplog.set_level(logging.WARNING, logger="tf_cartoon.train")
    t3 = Trainer(_cfg(tiny, tmp_path / "samples", iter=2, sample_every=1))
    t3.fit()
    assert int(t3.step.numpy()) == 2
    warned = [m for m in caplog.messages if "cannot write samples.png" in m]
    assert len(warned) == 1 and "No space left on device" in warned[0]


# ----------------------------------------------------------------------------------- images changing mid-run
def _images(folder, n):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (20, 20, 3), np.uint8)).save(os.path.join(folder, f"img{i}.png"))
    return sorted(os.path.join(folder, f"img{i}.png") for i in range(n))


def test_images_deleted_replaced_or_truncated_mid_run_are_skipped_and_counted(tiny, tmp_path, caplog):
    from tf_cartoon import data

    data.reset_stats()
    files = _images(tmp_path / "imgs", 8)
    t = Trainer(_cfg(tiny, tmp_path / "run", data=str(tmp_path / "imgs"), iter=16, ckpt_every=100))
    train_step = t.train_step

    def step_then_damage(real, step):
        out = train_step(real, step)
        if step == 0:
            os.remove(files[0])
            os.remove(files[1])
            open(files[2], "w").write("not an image any more\n")
            _truncate(files[3], 0.3)
        return out

    t.train_step = step_then_damage
    caplog.set_level(logging.WARNING, logger="tf_cartoon.data")
    metrics = t.fit()
    assert int(t.step.numpy()) == 16
    assert metrics["data_skipped_files"] == 4 == data.stats().skipped
    assert sorted(data.stats().bad_files) == files[:4]
    assert sum("skipping unreadable image" in m for m in caplog.messages) == 4


def test_a_folder_that_empties_mid_run_stops_after_a_checkpoint(tiny, tmp_path):
    from tf_cartoon import data
    from tf_cartoon.data.folder import DataUnreadableError

    data.reset_stats()
    files = _images(tmp_path / "imgs", 4)
    workdir = tmp_path / "run"
    t = Trainer(_cfg(tiny, workdir, data=str(tmp_path / "imgs"), iter=1000, ckpt_every=1000))
    train_step = t.train_step

    def step_then_delete(real, step):
        out = train_step(real, step)
        if step == 1:
            for f in files:
                os.remove(f)
        return out

    t.train_step = step_then_delete
    with pytest.raises(DataUnreadableError) as e:
        t.fit()
    msg = str(e.value)
    assert "\n" not in msg and "could not be read" in msg and "rerun the same command" in msg
    step = int(t.step.numpy())
    assert 2 <= step < 1000 and f"stopped at step {step}" in msg
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest.endswith(f"ckpt-{step}") and _loads_fully(latest)

    # A rerun on the empty folder says so in one line before training (the flag check, before any network).
    from tf_cartoon.training.config import ConfigError

    with pytest.raises(ConfigError, match="no image files found"):
        Trainer(_cfg(tiny, workdir, data=str(tmp_path / "imgs"), iter=1000)).fit()


# ------------------------------------------------------------------------------------ SavedModel versions
def _tiny_saved_model(path):
    m = tf.Module()
    m.v = tf.Variable(np.arange(5000, dtype=np.float32))
    m.f = tf.function(lambda x: x * m.v[0], input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(m, str(path))


def test_incomplete_saved_model_versions_are_named_skipped_and_set_aside(tmp_path, caplog):
    from tf_cartoon import export as ex

    base = tmp_path / "export"
    _tiny_saved_model(base / "1")
    shutil.copytree(base / "1", base / "2")
    _truncate(base / "2" / "variables" / "variables.data-00000-of-00001")
    shutil.copytree(base / "1", base / "3")
    os.remove(base / "3" / "saved_model.pb")
    caplog.set_level(logging.WARNING, logger="tf_cartoon.export")
    assert ex.existing_versions(str(base)) == [1]
    assert any("2" in m and "cut short" in m for m in caplog.messages)
    assert sorted(ex.incomplete_versions(str(base))) == [2, 3]
    assert ex.next_version(str(base)) == 4  # never reuses a torn version's name
    moved = ex.set_aside_incomplete(str(base))
    assert sorted(os.path.basename(p) for p in moved) == [".incomplete-2", ".incomplete-3"]
    assert sorted(os.listdir(base)) == [".incomplete-2", ".incomplete-3", "1"]
    assert ex.existing_versions(str(base)) == [1] and ex.next_version(str(base)) == 2


def test_export_onto_a_full_disk_is_a_one_line_error_leaving_no_version(tiny, tmp_path, capsys):
    from tf_cartoon import export as ex

    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "1m"):
        pytest.skip("no tmpfs mount here (needs root); the checkpoint test covers ENOSPC by injection")
    try:
        base = mount / "export"
        base.mkdir()
        _fill(str(mount))
        # --quiet: no stage lines (the tracing stage succeeds before the write fails); stderr is the error alone
        code = ex.main(["--ckpt", tiny, "--out", str(base), "--truncation_samples", "8", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "No space left on device" in err and str(base) in err, err
        assert os.listdir(base) == []  # neither a version nor a hidden temporary folder
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_train_cli_on_a_disk_that_fills_mid_run_exits_2_with_the_last_checkpoint_intact(tiny, tmp_path):
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "1m"):
        pytest.skip("no tmpfs mount here (needs root); test_full_disk_... injects the failure instead")
    try:
        workdir = mount / "run"
        # ~110 kB per tiny checkpoint and none deleted: the disk fills after a few steps.
        r = _train(tiny, workdir, "--iter=100", "--keep_checkpoints=100")
        assert r.returncode == 2, r.stderr[-3000:]
        line = _error_line(r.stderr)
        assert "cannot write checkpoint" in line and "No space left on device" in line and "is intact" in line
        ckdir = workdir / "checkpoints"
        latest = tf.train.latest_checkpoint(str(ckdir))
        step = int(latest.rsplit("-", 1)[1])
        assert f"stopped at step {step + 1}" in line and f"{latest} is intact" in line
        assert integrity.verify_checkpoint(latest) is None and _loads_fully(latest)
        assert not [n for n in os.listdir(ckdir) if n.startswith(f"ckpt-{step + 1}")]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_train_cli_on_a_folder_where_nothing_decodes_exits_2(tiny, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.png").write_text("not a png\n")
    cmd_data = f"--data={folder}"
    r = _train(tiny, tmp_path / "run", "--iter=2", cmd_data)
    assert r.returncode == 2, r.stderr[-3000:]
    line = _error_line(r.stderr)
    assert str(folder) in line and "none of the 3 image file(s)" in line


def test_lock_release_leaves_no_workdir_it_created_and_never_touches_others(tmp_path):
    """A run that stops before writing anything leaves no workdir it created; a workdir that was there (or
    holds anything else) stays; a workdir removed while held is released without an error."""
    from tf_cartoon.training import workdir_lock

    fresh = tmp_path / "fresh"
    workdir_lock.hold(str(fresh))
    workdir_lock.release(str(fresh))
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    workdir_lock.hold(str(kept))
    workdir_lock.release(str(kept))
    assert kept.is_dir() and (kept / workdir_lock.LOCK_FILE).exists()
    gone = tmp_path / "gone"
    workdir_lock.hold(str(gone))
    shutil.rmtree(gone)
    workdir_lock.release(str(gone))
