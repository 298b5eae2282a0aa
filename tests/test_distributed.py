"""Distribution: 2 logical CPU devices == 1 device; two workers (TF_CONFIG on 127.0.0.1) stay identical;
SIGTERM saves and stops; kill -9 never leaves an unloadable latest checkpoint. Each run is its own process
(one strategy per process)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import ROOT, subprocess_env
from tests.tiny_models import make_tiny_checkpoint

# Slow tier: each test trains in its own processes (minutes).
pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_train_worker.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=4)


def _env(**extra):
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _load(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]


def test_two_devices_equal_one_device(tiny, tmp_path):
    outs = []
    for n in (1, 2):
        out = tmp_path / f"n{n}.npz"
        r = subprocess.run([sys.executable, WORKER, "equivalence", str(n), tiny, str(tmp_path / f"w{n}"), str(out)],
                           env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"{n} replica(s)" in r.stderr
        outs.append(_load(out))
    one, two = outs
    assert len(one) == len(two)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_train_to_identical_weights(tiny, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        cfg = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen([sys.executable, WORKER, "multiworker", tiny, str(tmp_path / "run"),
                                       str(tmp_path / f"w{i}.npz")], env=_env(TF_CONFIG=cfg),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    logs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        logs.append(err)
        assert p.returncode == 0, err[-3000:]
    assert "MultiWorkerMirroredStrategy: 2 worker(s), 2 replica(s)" in logs[0]
    w0, w1 = _load(tmp_path / "w0.npz"), _load(tmp_path / "w1.npz")
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-2")


def _train_cmd(tiny, workdir, *extra):
    return [sys.executable, "-m", "tf_cartoon.train", f"--ckpt={tiny}", "--data=synthetic:blobs",
            f"--workdir={workdir}", "--iter=100000", "--batch=4", "--ckpt_every=1", "--log_every=1",
            "--sample_every=100000", "--keep_checkpoints=2", *extra]


def _wait_for(predicate, proc, timeout=400):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the trainer")
        time.sleep(0.2)


def _latest(workdir):
    return tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))


def _step_of(path):
    return int(path.rsplit("-", 1)[1]) if path else 0


def test_sigterm_saves_and_resumes_kill9_never_breaks_the_latest_checkpoint(tiny, tmp_path):
    workdir = str(tmp_path / "run")
    p = subprocess.Popen(_train_cmd(tiny, workdir), cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _step_of(_latest(workdir)) >= 2, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert "rerun the same command to resume" in err
    stopped = _step_of(_latest(workdir))
    assert stopped >= 2

    # Resume, then kill -9 at a random moment while it checkpoints every step.
    p = subprocess.Popen(_train_cmd(tiny, workdir), cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _step_of(_latest(workdir)) >= stopped + 2, p)
    time.sleep(random.uniform(0.0, 1.0))
    p.kill()
    _, err = p.communicate(timeout=60)
    assert f"resumed from step {stopped}" in err
    latest = _latest(workdir)
    assert _step_of(latest) >= stopped + 2
    reader = tf.train.load_checkpoint(latest)  # loads: index and data files complete
    names = reader.get_variable_to_shape_map()
    assert any("g_ema" in n for n in names) and any("d_optim" in n for n in names)
    for n in names:
        reader.get_tensor(n)
