"""Subprocess entry for the distribution tests (one tf.distribute strategy per process).

    python tests/_train_worker.py equivalence N_DEVICES CKPT WORKDIR OUT.npz
    python tests/_train_worker.py multiworker CKPT WORKDIR OUT.npz      (TF_CONFIG set by the caller)
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    mode = sys.argv[1]
    if mode == "equivalence":
        equivalence(int(sys.argv[2]), *sys.argv[3:6])
    else:
        multiworker(*sys.argv[2:5])
