"""tf.distribute strategy from the environment.

``TF_CONFIG`` with more than one task -> MultiWorkerMirroredStrategy (one process per
host, all its GPUs); otherwise MirroredStrategy over every local GPU, or the CPU.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def make_strategy(devices=None) -> tf.distribute.Strategy:
    tf_config = os.environ.get("TF_CONFIG")
    if tf_config and devices is None:
        cluster = json.loads(tf_config).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or ["/cpu:0"]
    return tf.distribute.MirroredStrategy(devices)


def num_workers(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def is_chief(strategy) -> bool:
    """Only the chief writes checkpoints names others read, summaries and images."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def describe(strategy, global_batch: int) -> str:
    replicas = strategy.num_replicas_in_sync
    devices = sorted({d.split("/")[-1] for d in strategy.extended.worker_devices})
    name = ("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else type(strategy).__name__)
    return (f"strategy {name}: {num_workers(strategy)} worker(s), {replicas} replica(s) "
            f"on {', '.join(devices)}; global batch {global_batch}, per-replica batch {global_batch // replicas}")
