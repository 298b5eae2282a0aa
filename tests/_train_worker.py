"""Subprocess entry for the distribution tests (one tf.distribute strategy per process).

    python tests/_train_worker.py equivalence N_DEVICES CKPT WORKDIR OUT.npz
    python tests/_train_worker.py multiworker CKPT WORKDIR OUT.npz      (TF_CONFIG set by the caller)
    python tests/_train_worker.py fp16_skip CKPT WORKDIR OUT.json         (2 logical CPUs)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logging  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def dump(trainer, out):
    variables = trainer.g.variables + trainer.d.variables + trainer.g_ema.variables
    np.savez(out, *[np.asarray(v.numpy()) for v in variables])


def equivalence(n_dev, ckpt, workdir, out):
    cpu = tf.config.list_physical_devices("CPU")[0]
    if n_dev > 1:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_dev)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(n_dev)])
    from tf_cartoon.training.config import TrainConfig
    from tf_cartoon.training.trainer import Trainer

    cfg = TrainConfig(ckpt=ckpt, data="synthetic:blobs", batch=8, iter=1, workdir=workdir, freezeStyle=1,
                      structure_loss=2, freezeD=2, mixing=1.0, path_regularize=0.0, seed=5)
    trainer = Trainer(cfg, strategy)
    real = np.random.RandomState(0).uniform(-1, 1, [8, trainer.size, trainer.size, 3]).astype(np.float32)
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(real[ctx.replica_id_in_sync_group::n_dev]))
    trainer.train_step(dist, 0)
    dump(trainer, out)


def multiworker(ckpt, workdir, out):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from tf_cartoon.training.config import TrainConfig
    from tf_cartoon.training.trainer import Trainer

    cfg = TrainConfig(ckpt=ckpt, data="synthetic:blobs", batch=8, iter=2, workdir=workdir, structure_loss=1,
                      log_every=1, sample_every=1000, ckpt_every=1, seed=2)
    trainer = Trainer(cfg, strategy)
    trainer.fit()
    dump(trainer, out)


def fp16_skip(ckpt, workdir, out):
    """--precision fp16 on 2 replicas: an infinite pixel in replica 1's share of the batch makes only its D
    gradients non-finite; both replicas must skip the D step (and stay equal), the D_main scale halves. Then a
    finite batch updates both alike."""
    import json

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    from tf_cartoon.training.config import TrainConfig
    from tf_cartoon.training.trainer import Trainer

    trainer = Trainer(TrainConfig(ckpt=ckpt, data="synthetic:blobs", batch=8, iter=1, workdir=workdir, seed=3,
                                  precision="fp16"), strategy)
    real = np.random.RandomState(0).uniform(-1, 1, [8, trainer.size, trainer.size, 3]).astype(np.float32)

    def batch(poison):
        def share(ctx):
            r = ctx.replica_id_in_sync_group
            x = real[r::2].copy()
            if poison and r == 1:
                x[0, 0, 0, 0] = np.inf
            return tf.constant(x)
        return strategy.experimental_distribute_values_from_function(share)

    def d_state():  # every replica's copy of D's and its optimizer's variables
        return [[np.asarray(c.numpy()) for c in strategy.experimental_local_results(v)]
                for v in trainer.d.variables + trainer.d_opt.variables]

    def equal(a, b):
        return all(np.array_equal(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))

    def replicas_agree(state):
        return all(np.array_equal(copies[0], c) for copies in state for c in copies[1:])

    step, scale = tf.constant(1, tf.int64), trainer.loss_scales["D_main"].scale
    before, scale0 = d_state(), float(scale.numpy())
    skipped = float(trainer.phase_steps["D_main"](batch(True), step)["skipped"])
    after = d_state()
    result = {"replicas": strategy.num_replicas_in_sync, "skipped": skipped, "unchanged": equal(before, after),
              "scale_before": scale0, "scale_after_skip": float(scale.numpy())}
    applied = float(trainer.phase_steps["D_main"](batch(False), step)["skipped"])
    final = d_state()
    result.update(applied_skipped=applied, changed=not equal(after, final), replicas_agree=replicas_agree(final))
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    mode = sys.argv[1]
    if mode == "equivalence":
        equivalence(int(sys.argv[2]), *sys.argv[3:6])
    elif mode == "fp16_skip":
        fp16_skip(*sys.argv[2:5])
    else:
        multiworker(*sys.argv[2:5])
