"""The fine-tuning trainer: one class, the reference's iteration, on tf.distribute.

One iteration (rosinality / Cartoon-StyleGAN2 train.py order) runs the phases of ``Trainer._phase_table``:

  phase          computes                                              optimizer, variables   runs
  D_main         logistic loss on (augmented) reals and fakes;         d_opt, D's trained     every step
                 ADA statistics (p updated every ``ada_every`` steps)
  D_r1           R1 on un-augmented reals through the augmentation     d_opt, D's trained     every d_reg_every
  G_main         non-saturating loss (+ structure loss against the     g_opt, G's trained     every step
                 frozen source)
  G_path_length  path length on 1/path_batch_shrink of the batch       g_opt, G's trained     every g_reg_every
                                                                                              (never under freezeG)
then the EMA of G into g_ema. Each phase is one distributed step (``Trainer._distributed_step``: per-replica
gradients, the optimizer's update, metrics averaged over replicas). With ``--precision fp16`` each phase has its
own dynamic loss scale (``loss_scale.py``: a phase whose gradients are not all finite on some replica is skipped
on every replica and its scale halves; R1 and path length scale both of their backward passes). Only the
variables that ``freeze.py`` says train are given to ``apply_gradients``; the optimizers are built once on all
variables (Keras 3 only updates variables it was built with).

Distribution: every replica computes its share of the GLOBAL batch. Random draws
(latents, noise maps, mixing decisions) are made for the global batch from a key folded from
(seed, step, purpose, part) (``draw_key``) and each replica takes the samples r, r+R, r+2R, ...
(strided, so minibatch-stddev groups coincide with a single-device run's). Losses are
scaled by 1/R so the summed gradients equal the global-batch mean's. Randomness is
therefore a pure function of the step: resuming reproduces the same draws.

Known, documented deviations from the reference (the method's intent, not its bugs):
  * the source generator is LOADED (reference: random) and frozen;
  * structure loss: source and target see the same z, mixing and noise maps, and the
    target's features come from the same forward as its adversarial loss;
  * the path-length mean is per replica, as in the reference's distributed run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import signal
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_cartoon import arch, cli, latent, precision
from tf_cartoon.images import make_grid, save_png
from tf_cartoon.io import integrity, store
from tf_cartoon.io import reference_keys as rk
from tf_cartoon.io.errors import CheckpointFormatError, StorageError
from tf_cartoon.training import adam_states, freeze, loss_scale, losses
from tf_cartoon.training import strategy as strategy_lib
from tf_cartoon.training import workdir_lock
from tf_cartoon.training.config import TrainConfig, check_data, validate

log = logging.getLogger("tf_cartoon.train")

FINAL_GRID = "final_grid.png"  # <workdir>/final_grid.png (--final_grid_seeds)
EXPORT_DIR = "export"  # <workdir>/export/<version> (--export_on_finish; TF Serving's model base path)

EMA_DECAY = 0.5 ** (32 / (10 * 1000))  # the reference's accumulate(g_ema, g, 0.5 ** (32 / 10000))
# (per step whatever the batch: a half-life of 312.5 steps, TrainConfig.ema_halflife_steps' default)

# What a random draw is for: the words folded into its key after the seed and the step (``draw_key``).
_D, _R1, _G, _PL, _AUG_D, _AUG_R1, _AUG_G, _AUG_D_REAL = range(8)
# Parts of one purpose's draws.
_Z, _MIX, _NOISE, _PL_Y = range(4)


def draw_key(seed, *words):
    """The stateless key [2] int64 of one random draw: ``seed`` with each word (step, purpose, part, replica or
    layer) folded in, one after the other. Folding, unlike adding offsets to one counter, never gives two
    different draws the same key (e.g. the augmentation of step s and the latents of step s + 13)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.constant(0, tf.int64)])
    for word in words:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(word, tf.int64))
    return key


def _f32(x):
    """Losses and statistics in float32 whatever the compute dtype (mixed precision)."""
    return tf.cast(x, tf.float32)


def _dense_grads(grads, variables):
    """None -> zeros. The reference adds ``0 * output`` to the R1 and path-length losses, so every
    parameter gets a (zero) gradient and Adam's state advances for all of them; we match that."""
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


# Highest-resolution blocks checkpointed by default in a training step: G's two largest in the G step (their
# activations are the largest a step keeps while D's backward pass runs). D's are not: tf.recompute_grad
# around D's first block cost 7 s per D step (bench train_step, 2026-11-26), far more than its forward.
LEAN_RECOMPUTE_G, LEAN_RECOMPUTE_D = 2, 0


@dataclasses.dataclass(frozen=True)
class Phase:
    """One part of a training iteration: what it computes, which optimizer applies the gradients to which
    variables, how often it runs. ``compute(real, step)`` (``takes_real``) or ``compute(step)`` runs on each
    replica and returns (gradients matching ``variables``, {metric: scalar}, extra); ``after_apply(extra)`` runs
    on each replica after the update, ``after_step(step)`` on the host after the distributed step."""
    name: str
    compute: Callable
    optimizer: keras.optimizers.Optimizer
    variables: list
    every: int  # runs at the steps divisible by it; 0 = never
    takes_real: bool = False
    backward_passes: int = 1  # 2 where the loss holds a gradient (R1, path length): see loss_scale.py
    after_apply: Callable | None = None
    after_step: Callable | None = None

    def runs_at(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    def __init__(self, cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None,
                 loss_scale_growth: int = loss_scale.GROWTH_INTERVAL):
        """``loss_scale_growth``: with --precision fp16, the finite steps of a phase after which its loss scale
        doubles."""
        self.cfg = cfg
        self.loss_scale_growth = loss_scale_growth
        self.strategy = strategy or strategy_lib.make_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = strategy_lib.is_chief(self.strategy)
        validate(cfg, num_replicas=self.replicas)
        check_data(cfg)
        log.info(strategy_lib.describe(self.strategy, cfg.batch))
        # One run per workdir, checked before anything heavy is built. Only the chief holds the lock: the
        # other workers of a MultiWorker run share the chief's workdir.
        self._holds_workdir = False
        if self.chief:
            workdir_lock.hold(cfg.workdir)
            self._holds_workdir = True
        try:
            self._setup(cfg)
        except BaseException:
            self.release_workdir()
            raise

    def release_workdir(self) -> None:
        """Let go of the workdir lock (fit() does at its end; the process's exit does in any case)."""
        if self._holds_workdir:
            self._holds_workdir = False
            workdir_lock.release(self.cfg.workdir)

    def _setup(self, cfg):
        start = cli.load_checkpoint(cfg.ckpt, "--ckpt") if cfg.ckpt else None
        gen_cfg, dis_cfg = self._architecture(start)
        self.size = gen_cfg["size"]
        n_blocks = arch.n_blocks(self.size)
        validate(cfg, size=self.size, n_blocks=n_blocks, num_replicas=self.replicas)
        self.per_replica_batch = cfg.batch // self.replicas
        self.swap_layers = cfg.swap_layer_list(n_blocks)
        self.use_xla = {"on": True, "off": False}.get(cfg.xla, bool(tf.config.list_logical_devices("GPU")))
        needs_source = cfg.freezeStyle >= 0 or cfg.structure_loss > 0 or cfg.freezeFC
        source_path = cfg.source_ckpt or cfg.ckpt

        # Mixed precision (tf_cartoon.precision): bfloat16 / float16 compute, float32 variables and losses.
        # bfloat16 keeps float32's range, so it needs no loss scaling; float16 does (loss_scale.py).
        gpu = bool(tf.config.list_logical_devices("GPU"))
        self.precision = cfg.compute_precision(gpu=gpu)
        if self.precision == "fp16" and not gpu:
            log.warning("--precision=fp16 without a GPU: CPUs have no fast float16 convolutions (slower than fp32)")
        with precision.policy(self.precision):
            self._build(cfg, start, gen_cfg, dis_cfg, source_path, needs_source)
        log.info("G and D compute in %s (%s); variables, losses and optimizer state in float32",
                 self.precision, self.g.compute_dtype)
        # The loaded checkpoint's networks (copied into ours) are as large as G and D together; Keras
        # models hold reference cycles, so without a collection they would stay through training.
        del start
        gc.collect()

        self.g_train_vars = freeze.generator_trainable(self.g, cfg.freezeG)
        self.d_train_vars = freeze.discriminator_trainable(self.d, cfg.freezeD)
        self.structure_layers = self.structure_layers_for(cfg)
        # Gradient checkpointing: --recompute does every block; by default only the highest-resolution ones
        # (their activations are the largest; see LEAN_RECOMPUTE_G).
        self.g_recompute = True if cfg.recompute else LEAN_RECOMPUTE_G
        self.d_recompute = True if cfg.recompute else LEAN_RECOMPUTE_D
        self.do_path_length = cfg.freezeG < 0 and cfg.path_regularize > 0
        self.phases = self._phase_table()
        self.loss_scales = None  # {phase name: DynamicLossScale} with --precision fp16
        if self.precision == "fp16":
            with self.strategy.scope():
                self.loss_scales = {p.name: loss_scale.DynamicLossScale(p.name, p.backward_passes,
                                                                        self.loss_scale_growth)
                                    for p in self.phases}

        tracked = dict(g=self.g, g_ema=self.g_ema, d=self.d, g_optim=self.g_opt, d_optim=self.d_opt,
                       step=self.step, mean_path_length=self.mean_path_length)
        if self.ada is not None:
            tracked["ada"] = tf.train.Checkpoint(**self.ada.state_variables())
        if self.loss_scales is not None:  # a resumed fp16 run continues at its scales
            tracked["loss_scale"] = tf.train.Checkpoint(**{k: v.state() for k, v in self.loss_scales.items()})
        self.checkpoint = tf.train.Checkpoint(**tracked)
        ckpt_dir = os.path.join(cfg.workdir, "checkpoints")
        if not self.chief:  # non-chief workers write to a scratch dir (MultiWorker saving protocol)
            ckpt_dir = os.path.join(cfg.workdir, f"worker_tmp_{self.strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=cfg.keep_checkpoints)
        self._build_step_functions()
        self._stop_requested = False
        self._warned_writes = set()  # kinds of optional output (samples, TensorBoard) that failed to write
        # Periodic evaluation hooks, (every N steps, fn(trainer) -> {name: value}); see _evaluate.
        self.evaluations: list[tuple[int, Callable[[Trainer], dict]]] = []
        if cfg.metric_list() and self.chief:  # only the chief writes TensorBoard: the others need not score
            self.evaluations.append((cfg.metrics_every or cfg.iter, Trainer.measure))
        self.already_finished = False  # set by fit() when the workdir had reached --iter before

    def _build(self, cfg, start, gen_cfg, dis_cfg, source_path, needs_source):
        """Networks (the source loaded and frozen), optimizers and training state, in the strategy scope."""
        with self.strategy.scope():
            fused = cfg.fused_modconv
            self.g = store.build_generator(gen_cfg, fused_modconv=fused, name="g")
            self.g_ema = store.build_generator(gen_cfg, fused_modconv=fused, name="g_ema")
            self.d = store.build_discriminator(dis_cfg)
            self.source = None
            if source_path:
                flag = "--source_ckpt" if cfg.source_ckpt else "--ckpt"
                # The source is --ckpt's g_ema unless --source_ckpt names another file: read once.
                same = not cfg.source_ckpt and start is not None and start.g_ema is not None
                src = start.g_ema if same else cli.load_generator(source_path, flag, fused_modconv=fused)
                # The run swaps the source's features into G at the structure-loss layers and in the
                # sample grids (and at every layer in an exported swap signature), and shares latents
                # with it (freezeStyle / freezeFC).
                layers = "all" if cfg.export_on_finish else sorted(set(self.swap_layers)
                                                                    | set(self.structure_layers_for(cfg)))
                latent.check_pair(src, self.g, layers, flag, same_z=True)  # both map the same z
                # Frozen: its weights are stored in the compute dtype (precision.policy's frozen), the values
                # its layers would cast them to (a bf16 run: 60 MB less at 256 px).
                with precision.policy(self.precision, frozen=True):
                    self.source = store.build_generator(src.get_config(), fused_modconv=fused, name="source")
                _copy(src, self.source)
            elif needs_source:
                raise ValueError("freezeStyle / freezeFC / structure_loss need a source generator")
            if start is not None:
                _copy(start.g if start.g is not None else start.g_ema, self.g)
                _copy(start.g_ema if start.g_ema is not None else start.g, self.g_ema)
                if start.d is not None:
                    _copy(start.d, self.d)
                else:
                    log.warning("%s has no discriminator: D starts from random weights", cfg.ckpt)
            else:
                _copy(self.g, self.g_ema)
            g_ratio = cfg.g_reg_every / (cfg.g_reg_every + 1)
            d_ratio = cfg.d_reg_every / (cfg.d_reg_every + 1)
            self.g_opt = keras.optimizers.Adam(cfg.lr * g_ratio, beta_1=0.0, beta_2=0.99 ** g_ratio, epsilon=1e-8)
            self.d_opt = keras.optimizers.Adam(cfg.lr * d_ratio, beta_1=0.0, beta_2=0.99 ** d_ratio, epsilon=1e-8)
            self.g_opt.build(self.g.trainable_variables)
            self.d_opt.build(self.d.trainable_variables)
            self._load_adam_states(cfg, start)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.mean_path_length = tf.Variable(0.0, trainable=False, name="mean_path_length",
                                                aggregation=tf.VariableAggregation.MEAN)
            self.ada = None
            if cfg.augment:
                from tf_cartoon.training.augment import AdaptiveAugment

                self.ada = AdaptiveAugment(target=cfg.ada_target, ada_length=cfg.ada_length,
                                           update_every=cfg.ada_every, augment_p=cfg.augment_p,
                                           adaptive=cfg.adaptive_augment)
        if start is not None and cfg.adaptive_augment and cfg.ada_p_from_ckpt:
            self.ada.p.assign(float(start.ada_aug_p))

    # ------------------------------------------------------------------------------------------
    # set-up helpers
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def structure_layers_for(cfg) -> tuple:
        return tuple(range(1, cfg.structure_loss + 1)) if cfg.structure_loss > 0 else ()

    def _load_adam_states(self, cfg, start):
        """The --ckpt file's g_optim / d_optim into our Adams, as the reference's train.py does (a resumed
        workdir restores its own optimizers afterwards). Their step counts are kept for frozen parameters'
        entries of --export_torch."""
        self.loaded_adam_steps = {}
        states = (start.optimizer_states or {}) if start is not None else {}
        if cfg.fresh_optimizer or not states:
            if states:
                log.info("--fresh_optimizer: Adam starts from zero (the checkpoint's g_optim / d_optim are not used)")
            return
        for name, opt, model, table in (("g_optim", self.g_opt, self.g, rk.generator_table),
                                        ("d_optim", self.d_opt, self.d, rk.discriminator_table)):
            if isinstance(states.get(name), dict):
                step = adam_states.load(opt, model, table, states[name], name, cfg.ckpt)
                self.loaded_adam_steps[name] = adam_states.stored_steps(states[name])
                log.info("%s: Adam states of %d parameters from %s (step %d)", name,
                         len(states[name].get("state") or {}), cfg.ckpt, step)

    def _architecture(self, start):
        cfg = self.cfg
        if start is not None:
            gen_cfg = dict(start.config["generator"])
            dis_cfg = start.config.get("discriminator") or {"size": gen_cfg["size"], "channels": gen_cfg["channels"],
                                                            "blur_kernel": gen_cfg.get("blur_kernel", [1, 3, 3, 1])}
            validate(cfg, size=gen_cfg["size"], num_replicas=self.replicas)
            return gen_cfg, dis_cfg
        size = cfg.size or 256
        gen_cfg = {"size": size, "style_dim": cfg.latent, "n_mlp": cfg.n_mlp,
                   "channel_multiplier": cfg.channel_multiplier}
        dis_cfg = {"size": size, "channel_multiplier": cfg.channel_multiplier}
        channels = cfg.channel_map()  # G and D share the map (as the reference's table is shared)
        if channels is not None:
            gen_cfg["channels"] = dis_cfg["channels"] = channels
        return gen_cfg, dis_cfg

    def restore_or_initialise(self) -> int:
        """Resume from the workdir's newest intact checkpoint if any; returns the step to continue at.

        Each checkpoint is verified before it is restored (integrity.verify_checkpoint: index readable, data
        files as long as the index says). Torn ones newer than the first good one are moved into
        ``checkpoints/corrupt-<step>/`` and dropped from the state file, with a warning naming them; when no
        checkpoint is intact nothing is moved and CheckpointFormatError stops the run (starting over silently
        would throw the run away)."""
        directory = self.manager.directory
        bad = []
        for prefix in integrity.candidates(directory):
            reason = integrity.verify_checkpoint(prefix)
            if reason is None:
                try:
                    status = self.checkpoint.restore(prefix)
                except (tf.errors.OpError, IndexError) as e:  # e.g. a checksum mismatch inside a tensor
                    reason = f"{prefix} cannot be restored ({integrity.one_line(e)})"
                else:
                    status.assert_existing_objects_matched()  # everything this run tracks was in the checkpoint
                    status.expect_partial()  # state of options this run does not use (e.g. ADA) may stay unread
            if reason is not None:
                bad.append((prefix, reason))
                continue
            if bad:
                self._set_aside(bad)
                log.warning("resumed from step %d (%s), the newest intact checkpoint", int(self.step.numpy()),
                            prefix)
            else:
                log.info("resumed from step %d (%s)", int(self.step.numpy()), prefix)
            return int(self.step.numpy())
        if bad:
            raise CheckpointFormatError(
                f"{directory}: no intact checkpoint to resume from: "
                + "; ".join(reason for _, reason in bad)
                + f". Nothing was moved; to start over, move {directory} aside")
        return int(self.step.numpy())

    def _set_aside(self, bad) -> None:
        """Move torn checkpoints out of the manager's way (never deleting them) and forget them."""
        integrity.drop_from_state(self.manager.directory, [p for p, _ in bad])
        for prefix, reason in bad:
            where = integrity.quarantine(prefix, reason)
            log.warning("checkpoint %s is torn (%s); moved it to %s", prefix, reason, where)
        # A new manager reads the rewritten state file: the torn ones are neither latest nor swept later.
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.manager.directory,
                                                  max_to_keep=self.cfg.keep_checkpoints)

    # ------------------------------------------------------------------------------------------
    # randomness: global draws, strided per-replica slices
    # ------------------------------------------------------------------------------------------
    def _key(self, step, purpose, *parts):
        return draw_key(self.cfg.seed, step, purpose, *parts)

    def _replica_slice(self, x):
        ctx = tf.distribute.get_replica_context()
        rid = ctx.replica_id_in_sync_group if ctx is not None else 0
        return x[rid::self.replicas]

    def _latents(self, step, purpose, per_replica):
        """z1, z2 [n, D] for this replica, whether mixing fired, the inject index (n_latent = no mixing)."""
        n_global = per_replica * self.replicas
        z = tf.random.stateless_normal([2, n_global, self.g.z_dim], seed=self._key(step, purpose, _Z))
        z1, z2 = self._replica_slice(z[0]), self._replica_slice(z[1])
        u = tf.random.stateless_uniform([3], seed=self._key(step, purpose, _MIX))
        mixed = u[0] < self.cfg.mixing
        n_lat = self.g.n_latent
        index = latent.random_cutoff(u[1], n_lat)
        src_index = latent.random_cutoff(u[2], n_lat)  # the source mixes at its own index
        inject = tf.where(mixed, index, n_lat)
        return z1, z2, mixed, inject, tf.where(mixed, src_index, n_lat)

    def _noise(self, step, purpose, per_replica):
        n_global = per_replica * self.replicas
        return [self._replica_slice(tf.random.stateless_normal([n_global, r, r, 1],
                                                               seed=self._key(step, purpose, _NOISE, i)))
                for i, r in enumerate(self.g.noise_resolution(i) for i in range(self.g.num_layers))]

    def _fake_wplus(self, z1, z2, mixed, inject, src_inject, for_d):
        """W+ of the trained generator with FreezeSG / freezeFC as the reference does them."""
        cfg = self.cfg
        w = self.g.make_wplus([z1, z2], inject_index=inject)
        if cfg.freezeStyle >= 0 or (cfg.freezeFC and for_d):
            src_w = tf.stop_gradient(self.source.make_wplus([z1, z2], inject_index=src_inject))
            if cfg.freezeStyle >= 0:  # rows < k from the source when mixing fired (D and G steps)
                k = tf.where(mixed, cfg.freezeStyle, 0)
                w = self.g.make_wplus([z1, z2], inject_index=k, put_latent=src_w)
            else:  # freezeFC: the whole W+ from the source, D step only
                w = tf.where(mixed, src_w, w)
        return w

    def _augment(self, x, step, purpose):
        if self.ada is None:
            return x
        from tf_cartoon.training.augment import augment

        ctx = tf.distribute.get_replica_context()
        rid = ctx.replica_id_in_sync_group if ctx is not None else 0
        return augment(x, self.ada.p, seed=self._key(step, purpose, rid))

    # ------------------------------------------------------------------------------------------
    # per-replica computations (XLA-compiled when --xla)
    # ------------------------------------------------------------------------------------------
    def _scaled(self, loss, scale, passes=1):
        """``loss`` as the phase differentiates it: divided by the replicas (their gradients are summed), times
        the loss scale's factor ``scale ** passes`` with --precision fp16 (``scale`` None otherwise)."""
        loss = loss / self.replicas
        return loss if scale is None else loss * (scale if passes == 1 else scale ** passes)

    def _d_compute(self, real, step, scale=None):
        b = self.per_replica_batch
        # The logistic loss is a sum of a real and a fake term, so its gradient is the sum of two backward
        # passes. They run one after the other, and the fakes are generated between them (everything below
        # the real gradients waits for them): one set of D activations or one G forward is alive at a time,
        # never two, for the same arithmetic.
        real_aug = self._augment(real, step, _AUG_D_REAL)
        with tf.GradientTape() as tape:
            real_pred = _f32(self.d(real_aug, recompute=self.d_recompute))
            real_loss = losses.d_logistic_real_term(real_pred)
            scaled = self._scaled(real_loss, scale)  # (inside the tape: the division must be recorded)
        real_grads = tape.gradient(scaled, self.d_train_vars)
        with tf.control_dependencies([g for g in real_grads if g is not None]):
            z1, z2, mixed, inject, src_inject = self._latents(step, _D, b)
            w = self._fake_wplus(z1, z2, mixed, inject, src_inject, for_d=True)
            fake = tf.stop_gradient(_f32(self.g.synthesis(w, self._noise(step, _D, b)).image))
            fake = self._augment(fake, step, _AUG_D)
        with tf.GradientTape() as tape:
            fake_pred = _f32(self.d(fake, recompute=self.d_recompute))
            fake_loss = losses.d_logistic_fake_term(fake_pred)
            scaled = self._scaled(fake_loss, scale)
        fake_grads = tape.gradient(scaled, self.d_train_vars)
        grads = [a if b is None else b if a is None else a + b for a, b in zip(real_grads, fake_grads)]
        loss = real_loss + fake_loss  # = losses.d_logistic_loss(real_pred, fake_pred)
        metrics = {"d_loss": loss, "real_score": tf.reduce_mean(real_pred), "fake_score": tf.reduce_mean(fake_pred)}
        return grads, metrics, real_pred

    def _r1_compute(self, real, step, scale=None):
        with tf.GradientTape() as tape:
            r1, _ = losses.r1_penalty(lambda x: _f32(self.d(self._augment(x, step, _AUG_R1))), real,
                                      inner_scale=scale)
            scaled = self._scaled(self.cfg.r1 / 2 * r1 * self.cfg.d_reg_every, scale, passes=2)
        grads = _dense_grads(tape.gradient(scaled, self.d_train_vars), self.d_train_vars)
        return grads, {"r1": r1}, None

    def _g_compute(self, step, scale=None):
        cfg = self.cfg
        b = self.per_replica_batch
        z1, z2, mixed, inject, src_inject = self._latents(step, _G, b)
        noise = self._noise(step, _G, b)
        layers = self.structure_layers
        rgb = cfg.structure_loss_on == "rgb"
        metrics = {}
        with tf.GradientTape() as tape:
            w = self._fake_wplus(z1, z2, mixed, inject, src_inject, for_d=False)
            out = self.g.synthesis(w, noise, tap_layers=() if rgb else layers, return_skips=rgb and bool(layers),
                                   recompute=self.g_recompute)
            fake = self._augment(_f32(out.image), step, _AUG_G)
            loss = losses.g_nonsaturating_loss(_f32(self.d(fake, recompute=cfg.recompute)))
            metrics["g_loss"] = loss
            total = loss
            if layers:
                src_w = self.source.make_wplus([z1, z2], inject_index=inject)
                src = self.source.synthesis(src_w, noise, tap_layers=() if rgb else layers, return_skips=rgb,
                                            stop_after_layer=max(layers))
                if rgb:  # skips[0] is the 4x4 RGB; skip after to_rgbs[L-1] is skips[L]
                    s_t, t_t = ({L: o.skips[L] for L in layers} for o in (src, out))
                else:
                    s_t, t_t = src.features, out.features
                struct, per_layer = losses.structure_loss({L: _f32(v) for L, v in s_t.items()},
                                                          {L: _f32(v) for L, v in t_t.items()}, layers)
                total = total + cfg.structure_weight * struct
                metrics["structure_loss"] = struct
                metrics.update({f"structure_loss_L{L}": v for L, v in per_layer.items()})
            metrics["g_total"] = total
            scaled = self._scaled(total, scale)
        grads = tape.gradient(scaled, self.g_train_vars)
        return grads, metrics, None

    def _pl_compute(self, step, scale=None):
        cfg = self.cfg
        b = max(1, self.per_replica_batch // cfg.path_batch_shrink)
        z1, z2, mixed, inject, _ = self._latents(step, _PL, b)
        noise = self._noise(step, _PL, b)
        y = self._replica_slice(tf.random.stateless_normal([b * self.replicas, self.size, self.size, 3],
                                                           seed=self._key(step, _PL, _PL_Y)))
        with tf.GradientTape() as tape:
            w = _f32(self.g.make_wplus([z1, z2], inject_index=inject))
            pen, path_mean, lengths = losses.path_length_penalty(
                lambda x: _f32(self.g.synthesis(x, noise).image), w, self.mean_path_length, noise=y,
                inner_scale=scale)
            scaled = self._scaled(cfg.path_regularize * cfg.g_reg_every * pen, scale, passes=2)
        grads = _dense_grads(tape.gradient(scaled, self.g_train_vars), self.g_train_vars)
        return grads, {"path_penalty": pen, "path_length": tf.reduce_mean(lengths)}, path_mean

    def _phase_table(self) -> tuple[Phase, ...]:
        """The iteration, in order (stylegan2-ada-pytorch's training_loop phases). R1 and path length are
        lazy: they run every ``d_reg_every`` / ``g_reg_every`` steps with their weights scaled by that
        interval; path length never runs under freezeG or with --path_regularize=0."""
        cfg = self.cfg
        return (
            Phase("D_main", self._d_compute, self.d_opt, self.d_train_vars, every=1, takes_real=True,
                  after_apply=self._ada_accumulate, after_step=self._ada_update),
            Phase("D_r1", self._r1_compute, self.d_opt, self.d_train_vars, every=cfg.d_reg_every, takes_real=True,
                  backward_passes=2),
            Phase("G_main", self._g_compute, self.g_opt, self.g_train_vars, every=1),
            Phase("G_path_length", self._pl_compute, self.g_opt, self.g_train_vars,
                  every=cfg.g_reg_every if self.do_path_length else 0, backward_passes=2,
                  after_apply=self.mean_path_length.assign),
        )

    def _build_step_functions(self):
        self.phase_steps = {phase.name: self._distributed_step(phase) for phase in self.phases}
        g_vars, ema_vars = self.g.trainable_variables, self.g_ema.trainable_variables
        decay = ema_decay(self.cfg.ema_halflife_steps)

        @tf.function(autograph=False)
        def ema_update():
            for e, v in zip(ema_vars, g_vars):
                e.assign(v + decay * (e - v))

        self.ema_update = ema_update

    def _distributed_step(self, phase: Phase):
        """One phase as a tf.function over the strategy: each replica computes its gradients (XLA-compiled
        with --xla), its optimizer applies them to the phase's variables (MirroredStrategy sums the
        replicas' gradients there), then the replicas' metrics are averaged."""
        # Our code branches on Python values only: autograph would just slow tracing down. The compute is a
        # function of its own where XLA compiles it or where several replicas call it (traced once); on one
        # replica without XLA it is traced into the step itself: a nested function's graph is kept once more
        # (its own graph and the FunctionDef copies of the callers), 0.14 GB of a 256 px bf16 step.
        compute = phase.compute
        if self.use_xla or self.replicas > 1:
            compute = tf.function(phase.compute, jit_compile=self.use_xla, autograph=False)
        strategy = self.strategy
        scale = self.loss_scales[phase.name] if self.loss_scales is not None else None

        def apply(grads, extra):
            phase.optimizer.apply_gradients(zip(grads, phase.variables))
            if phase.after_apply is not None:
                phase.after_apply(extra)

        def replica(*args):
            if scale is None:
                grads, metrics, extra = compute(*args)
                apply(grads, extra)
                return metrics
            grads, metrics, extra = compute(*args, tf.convert_to_tensor(scale.scale))
            factor = scale.factor(tf.convert_to_tensor(scale.scale))
            grads = [None if g is None else g / tf.cast(factor, g.dtype) for g in grads]
            # Every replica skips together: the flag is reduced over replicas before the decision.
            ctx = tf.distribute.get_replica_context()
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(loss_scale.all_finite(grads), tf.float32))
            ctx.merge_call(apply_if_finite, args=(bad, grads, extra))
            metrics["skipped"] = tf.cast(bad > 0, tf.float32)
            return metrics

        def apply_if_finite(strategy, bad, grads, extra):
            # The decision is taken in the cross-replica context: the optimizer's update calls merge_call, which
            # a tf.cond branch in a replica context cannot do (Keras' LossScaleOptimizer decides there too).
            finite = strategy.experimental_local_results(bad)[0] == 0

            def finite_step():
                strategy.extended.call_for_each_replica(apply, args=(grads, extra))

            tf.cond(finite, finite_step, lambda: None)
            scale.update(finite)

        def step(*args):
            metrics = strategy.run(replica, args=args)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in metrics.items()}

        return tf.function(step, autograph=False)

    def _loss_scale_metrics(self, name: str, values: dict, step: int) -> dict:
        """A phase's metrics with --precision fp16: ``loss_scale/<phase>`` and ``skipped/<phase>`` (1: its
        update was skipped); a skipped phase's other metrics are dropped (they may be the overflow itself).
        Raises TrainingDiverged once the scale falls below loss_scale.MIN_SCALE."""
        skipped = float(values.pop("skipped").numpy())
        value = float(self.loss_scales[name].scale.numpy())
        out = {} if skipped else dict(values)
        out.update({f"loss_scale/{name}": value, f"skipped/{name}": skipped})
        if value < loss_scale.MIN_SCALE:
            raise TrainingDiverged(f"step {step}: {name}'s gradients are not finite even at loss scale {value:g} "
                                   f"(float16); stopping without saving (the last good checkpoint in "
                                   f"{self.manager.directory} is intact)")
        return out

    def _ada_accumulate(self, real_pred):
        if self.ada is not None and self.ada.adaptive:
            self.ada.accumulate(real_pred)

    def _ada_update(self, step: int):
        if self.ada is not None and self.ada.adaptive and (step + 1) % self.cfg.ada_every == 0:
            self.ada.update()

    # ------------------------------------------------------------------------------------------
    # one iteration
    # ------------------------------------------------------------------------------------------
    def train_step(self, real, step: int) -> dict:
        """One full iteration on a distributed real batch: the phases due at ``step``, then the EMA; returns
        host metrics."""
        s = tf.constant(step, tf.int64)
        metrics = {}
        for phase in self.phases:
            if phase.runs_at(step):
                values = self.phase_steps[phase.name](*((real, s) if phase.takes_real else (s,)))
                if self.loss_scales is not None:
                    values = self._loss_scale_metrics(phase.name, values, step)
                metrics.update(values)
                if phase.after_step is not None:
                    phase.after_step(step)
        self.ema_update()
        self.step.assign(step + 1)
        out = {k: float(v) for k, v in metrics.items()}  # (eager scalars, or floats of the loss scales)
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"step {step}: {', '.join(f'{k}={out[k]}' for k in bad)} is not finite; "
                                   f"stopping without saving (the last good checkpoint in "
                                   f"{self.manager.directory} is intact)")
        if self.ada is not None:
            out["ada_p"] = float(self.ada.p.numpy())
            if self.ada.adaptive:
                out["ada_r_t"] = float(self.ada.r_t.numpy())
        out["mean_path_length"] = float(self.mean_path_length.numpy())
        return out

    # ------------------------------------------------------------------------------------------
    # data, samples, checkpoints, the loop
    # ------------------------------------------------------------------------------------------
    def make_data(self, start_step: int = 0):
        """Distributed real batches; a resumed run continues the same stream at ``start_step``."""
        from tf_cartoon.data import make_dataset

        cfg = self.cfg

        def fn(ctx):
            return make_dataset(cfg.data, self.size, ctx.get_per_replica_batch_size(cfg.batch), seed=cfg.seed,
                                input_context=ctx, start_batch=start_step)

        return self.strategy.distribute_datasets_from_function(fn)

    def sample_grid(self, n: int | None = None) -> np.ndarray:
        """Fixed latents -> rows source | target (g_ema) | layer-swapped at each swap layer; uint8 HWC grid."""
        n = n or self.cfg.n_sample
        z = tf.random.stateless_normal([n, self.g.z_dim], seed=[self.cfg.seed, 2 ** 31 - 1])
        noise = [tf.constant(v.numpy()) for v in self.g_ema.noise_buffers]
        rows = []
        tgt_w = self.g_ema.make_wplus(z)
        if self.source is not None:
            src_w = self.source.make_wplus(z)
            if self.cfg.pairing == "shared_w":  # the reference's demos: the source's W for both
                tgt_w = src_w
            src = self.source.synthesis(src_w, noise, tap_layers=self.swap_layers)
            rows.append(src.image)
        rows.append(self.g_ema.synthesis(tgt_w, noise).image)
        if self.source is not None:
            for L in self.swap_layers:
                rows.append(self.g_ema.synthesis(tgt_w, noise, swap_layer=L, swap_feature=src.features[L]).image)
        return make_grid(rows)

    def _run_args(self) -> dict:
        """The flags with the architecture filled in (what a reference checkpoint's args hold)."""
        return _jsonable({**vars_of(self.cfg), "size": self.size, "latent": self.g.style_dim, "n_mlp": self.g.n_mlp})

    def save(self, reason: str = "") -> str:
        """Checkpoint this step. A failed write (full disk, quota, I/O error) removes what it left, keeps the
        previous checkpoint (the state file still names it) and raises StorageError."""
        step = int(self.step.numpy())
        previous = self.manager.latest_checkpoint
        prefix = os.path.join(self.manager.directory, f"ckpt-{step}")
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            if self.manager.latest_checkpoint != prefix:  # never remove a checkpoint the state file names
                integrity.discard_partial(prefix)
            raise StorageError(self._write_failed(f"checkpoint {prefix}", e, previous)) from None
        if self.cfg.export_torch and self.chief:
            pt = os.path.join(self.cfg.workdir, "checkpoints", f"step_{step:08d}.pt")
            optim = {name: adam_states.to_reference(opt, model, table, trained, self.loaded_adam_steps.get(name))
                     for name, opt, model, table, trained in (
                         ("g_optim", self.g_opt, self.g, rk.generator_table, self.g_train_vars),
                         ("d_optim", self.d_opt, self.d, rk.discriminator_table, self.d_train_vars))}
            config = {"generator": self.g.get_config(), "discriminator": self.d.get_config()}
            try:  # torch_pickle writes a temporary file and renames it: no torn .pt under the final name
                store.write_reference(store.Checkpoint(config=config, g=self.g, g_ema=self.g_ema, d=self.d,
                                                       args=self._run_args(), optimizer_states=optim,
                                                       ada_aug_p=float(self.ada.p.numpy()) if self.ada else 0.0),
                                      pt)
            except OSError as e:
                raise StorageError(self._write_failed(pt, e, path)) from None
        log.info("saved checkpoint %s%s", path, f" ({reason})" if reason else "")
        return path

    def _write_failed(self, what: str, e: BaseException, intact: str | None) -> str:
        cause = e.strerror if isinstance(e, OSError) and e.strerror else integrity.one_line(e)
        kept = (f"the last good checkpoint {intact} is intact; free space and rerun the same command to resume"
                if intact else "no checkpoint was written yet")
        return f"cannot write {what} ({cause}); stopped at step {int(self.step.numpy())}; {kept}"

    def _soft_write(self, what: str, fn) -> None:
        """Samples and TensorBoard: a failed write is warned about (once per kind) and the run goes on."""
        try:
            fn()
        except (OSError, tf.errors.OpError) as e:
            if what not in self._warned_writes:
                self._warned_writes.add(what)
                log.warning("cannot write %s (%s); training goes on without it",
                            what, integrity.one_line(e.strerror if isinstance(e, OSError) and e.strerror else e))

    def _install_signal_handlers(self):
        def handler(signum, frame):
            log.warning("signal %d: saving a checkpoint after this step and stopping", signum)
            self._stop_requested = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass

    def fit(self) -> dict:
        """Run (or resume) the training loop until ``iter`` steps; returns the latest value of every
        metric (lazy regularisers keep the value of their last step).

        The chief holds ``<workdir>/train.lock`` from __init__ to the end of fit (WorkdirBusyError when a live
        run has it); other workers share the chief's workdir and take no lock."""
        if self.chief and not self._holds_workdir:  # a second fit() of this Trainer
            workdir_lock.hold(self.cfg.workdir)
            self._holds_workdir = True
        try:
            return self._fit()
        finally:
            self.release_workdir()

    def _fit(self) -> dict:
        cfg = self.cfg
        os.makedirs(cfg.workdir, exist_ok=True)
        start = self.restore_or_initialise()
        if start >= cfg.iter:
            log.info("already finished: step %d of %d in %s", start, cfg.iter, cfg.workdir)
            self.already_finished = True
            self.finish(only_missing=True)
            return {}
        writer = self._open_summaries(start)
        self._install_signal_handlers()
        data = self._open_data(start)
        clock = _Clock(start)
        metrics = {}
        for step in range(start, cfg.iter):
            real = self._next_batch(data, step)
            metrics.update(self.train_step(real, step))
            done = step + 1
            if _due(done, cfg.log_every, cfg.iter):
                self._log(metrics, done, clock, writer)
            if self.chief and _due(done, cfg.sample_every, cfg.iter):
                self._sample(done, real, writer)
            metrics.update(self._evaluate(done, writer))
            if self._checkpoint(done, clock):
                break
        self._soft_write("TensorBoard summaries", writer.flush)
        if self.chief:
            self._write_samples_png(self.sample_grid())
        if int(self.step.numpy()) >= cfg.iter:
            self.finish()
        return metrics

    # ------------------------------------------------------------------------------------------
    # the loop's helpers: settings, data, log, samples, evaluation, checkpoints
    # ------------------------------------------------------------------------------------------
    def _open_summaries(self, start: int):
        """The TensorBoard writer (a no-op one on other workers than the chief); the chief also records the
        run's settings: the workdir's network config, flags.json and the flags as TensorBoard text."""
        cfg = self.cfg
        if not self.chief:
            return tf.summary.create_noop_writer()
        writer = tf.summary.create_file_writer(os.path.join(cfg.workdir, "tensorboard"))
        flags_json = json.dumps(_jsonable(vars_of(cfg)), indent=2, sort_keys=True)
        try:
            store.write_workdir_config(cfg.workdir, self.g.get_config(), self.d.get_config(), self._run_args())
            _atomic_write_text(os.path.join(cfg.workdir, "flags.json"), flags_json)
        except OSError as e:
            raise StorageError(self._write_failed(f"the run's settings in {cfg.workdir}", e,
                                                  self.manager.latest_checkpoint)) from None

        # What the networks computed in (``compute_dtype``: G's and D's Keras compute dtypes), beside the flags
        # that asked for it: tf_cartoon.precision_curves reads it back to show each run's precision.
        compute_json = json.dumps({"g": self.g.compute_dtype, "d": self.d.compute_dtype}, sort_keys=True)

        def flags_text():
            with writer.as_default():
                tf.summary.text("flags", flags_json, step=start)
                tf.summary.text("compute_dtype", compute_json, step=start)

        self._soft_write("TensorBoard summaries", flags_text)
        self._soft_write("TensorBoard summaries", lambda: self._write_hparams(writer))
        return writer

    def _write_hparams(self, writer) -> None:
        """The run's flags and its metrics' names for TensorBoard's HParams dashboard: ``tensorboard --logdir``
        over several workdirs lists every run's flags beside its final eval/<metric> and losses."""
        from tensorboard.plugins.hparams import api as hp

        from tf_cartoon.training.config import TRAIN_METRICS

        cfg = self.cfg
        values = {k: v for k, v in vars_of(cfg).items() if isinstance(v, (bool, int, float, str))}
        metrics = [hp.Metric(f"eval/{TRAIN_METRICS[m]}") for m in cfg.metric_list()]
        metrics += [hp.Metric(k) for k in ("d_loss", "g_loss")]
        with writer.as_default():
            hp.hparams_config(hparams=[hp.HParam(k) for k in values], metrics=metrics)
            hp.hparams(values, trial_id=os.path.basename(os.path.abspath(cfg.workdir)))

    def _open_data(self, start: int):
        from tf_cartoon.data.folder import DataUnreadableError

        try:
            return iter(self.make_data(start))
        except (ValueError, OSError) as e:  # the folder is gone, empty or unreadable as a whole
            raise DataUnreadableError(f"--data={self.cfg.data}: {integrity.one_line(e)}") from None

    def _next_batch(self, data, step: int):
        """The next real batch; when no image can be read any more, checkpoint and stop (DataUnreadableError)."""
        from tf_cartoon.data.folder import DataUnreadableError, data_failure

        try:
            return next(data)
        except (tf.errors.OpError, StopIteration):
            failure = data_failure()  # the folder source stops the stream when no file can be read any more
            if failure is None:
                raise
            kept = self.save("data unreadable") if self.manager.latest_checkpoint != os.path.join(
                self.manager.directory, f"ckpt-{step}") else self.manager.latest_checkpoint
            raise DataUnreadableError(f"{failure}; stopped at step {step}, checkpoint {kept}; rerun the same "
                                      "command to resume once the images are back") from None

    def _log(self, metrics: dict, done: int, clock: _Clock, writer) -> None:
        """Speed, learning rates and skipped files into ``metrics``; one console line; TensorBoard scalars."""
        from tf_cartoon.data import stats as data_stats

        cfg = self.cfg
        sec_per_step = clock.lap(done)
        metrics["images_per_s"] = cfg.batch / sec_per_step
        metrics["sec_per_kimg"] = sec_per_step * 1000 / cfg.batch
        metrics["data_skipped_files"] = float(data_stats().skipped)  # unreadable images, logged once each
        metrics["lr_g"] = float(self.g_opt.learning_rate.numpy())
        metrics["lr_d"] = float(self.d_opt.learning_rate.numpy())
        shown = ("d_loss", "g_loss", "r1", "path_penalty", "structure_loss", "ada_p") + (
            ("data_skipped_files",) if metrics["data_skipped_files"] else ())
        log.info("step %d/%d  %s  %.1f img/s  ETA %s", done, cfg.iter,
                 "  ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if k in shown),
                 metrics["images_per_s"], _hms(sec_per_step * (cfg.iter - done)))

        def scalars():
            with writer.as_default():
                for k, v in metrics.items():
                    if not k.startswith("eval/"):  # _evaluate writes those at the step they measure
                        tf.summary.scalar(k, v, step=done)

        self._soft_write("TensorBoard summaries", scalars)

    def _sample(self, done: int, real, writer) -> None:
        """The sample grid (samples.png, the latest one, viewable mid-run) and TensorBoard images (chief)."""
        grid = self.sample_grid()
        self._write_samples_png(grid)

        def images():
            with writer.as_default():
                tf.summary.image("samples/source_target_swapped", grid[None], step=done)
                local = self.strategy.experimental_local_results(real)[0]
                tf.summary.image("real", make_grid([local])[None], step=done)

        self._soft_write("TensorBoard summaries", images)

    def _write_samples_png(self, grid: np.ndarray) -> None:
        self._soft_write("samples.png", lambda: save_png(os.path.join(self.cfg.workdir, "samples.png"), grid))

    def _evaluate(self, done: int, writer) -> dict:
        """Periodic evaluation: where metrics of the model being trained (e.g. FID of g_ema) plug in.
        ``self.evaluations`` holds (every, fn) pairs; each fn whose interval divides ``done`` (and each at
        --iter) runs on every worker as ``fn(trainer) -> {name: value}``. The values are returned as
        ``eval/<name>`` (fit's metrics) and written as TensorBoard scalars. The trainer registers none itself."""
        results = {}
        for every, fn in self.evaluations:
            if _due(done, every, self.cfg.iter):
                results.update({f"eval/{k}": float(v) for k, v in fn(self).items()})
        if results:
            def scalars():
                with writer.as_default():
                    for k, v in results.items():
                        tf.summary.scalar(k, v, step=done)

            self._soft_write("TensorBoard summaries", scalars)
        return results

    def measure(self) -> dict:
        """--metrics of g_ema now, by tf_cartoon.evaluate with the generators in memory: {row name: value}
        (structure_error, domain_rate, judge_fd, fid, kid). Seeds 0..--metrics_n-1; with structure, the
        latents and noise maps of the source's samples (--pairing), as evaluate --source pairs them."""
        from tf_cartoon import evaluate

        cfg, names = self.cfg, self.cfg.metric_list()
        argv = ["--metrics", ",".join(names), "--fake", "g_ema", "--n", str(cfg.metrics_n), "--pairing", cfg.pairing,
                "--quiet"]  # one log line with the values instead of progress lines
        live = {"fake": self.g_ema}
        if "structure" in names:
            argv += ["--source", "source"]
            live["source"] = self.source
        if {"fid", "kid", "judge_fd"} & set(names):
            argv += ["--real", cfg.metrics_real or cfg.data]
        if {"fid", "kid"} & set(names):
            argv += ["--inception", cfg.inception]
        start = time.perf_counter()
        rows = evaluate.evaluate(argv, live)
        values = {r["metric"]: r["value"] for r in rows if r.get("set", "fake") == "fake"}
        log.info("metrics at step %d (%.1f s): %s", int(self.step.numpy()), time.perf_counter() - start,
                 "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
        return values

    def _checkpoint(self, done: int, clock: _Clock) -> bool:
        """Save every --ckpt_every steps, at --iter, on a signal and after --max_time_minutes; True: stop now."""
        cfg = self.cfg
        timed_out = bool(cfg.max_time_minutes) and clock.elapsed() > cfg.max_time_minutes * 60
        stop = self._stop_requested or timed_out
        if _due(done, cfg.ckpt_every, cfg.iter) or stop:
            self.save("signal" if self._stop_requested else "")
        if stop:
            log.warning("stopped at step %d; rerun the same command to resume", done)
        return stop

    # ------------------------------------------------------------------------------------------
    # the end of a run: final grid, SavedModel, where everything is
    # ------------------------------------------------------------------------------------------
    def final_grid(self) -> np.ndarray:
        """Rows source | target | target with the source's feature swapped in at each --swap_layers, one
        column per --final_grid_seeds seed (tf_cartoon.generate's conventions: z of seed s is
        RandomState(s).randn, latents paired as --pairing says, stored noise, each generator truncated toward
        its own mean latent)."""
        from tf_cartoon import generate

        seeds, psi = self.cfg.final_seeds(), self.cfg.final_grid_truncation
        if self.source is None:
            return make_grid([generate.sample(self.g_ema, seeds, psi)])
        result = generate.swap_images(self.source, self.g_ema, seeds, self.swap_layers, psi, pairing=self.cfg.pairing)
        return make_grid(generate.swap_grid_rows(result))

    def finish(self, only_missing: bool = False) -> None:
        """Write what --final_grid_seeds / --export_on_finish ask for (chief only). ``only_missing``
        (a rerun of a finished run): write only what is not there yet, e.g. after a crash mid-export."""
        cfg = self.cfg
        if not self.chief:
            return
        grid_path = os.path.join(cfg.workdir, FINAL_GRID)
        if cfg.final_seeds() and not (only_missing and os.path.exists(grid_path)):
            grid = self.final_grid()
            try:
                save_png(grid_path, grid)
            except OSError as e:
                raise StorageError(self._write_failed(grid_path, e, self.manager.latest_checkpoint)
                                   + " (the rerun writes what is missing)") from None
            log.info("final grid: %s", grid_path)
        if cfg.export_on_finish:
            from tf_cartoon import assets, export

            base = os.path.join(cfg.workdir, EXPORT_DIR)
            if not (only_missing and export.existing_versions(base)):
                source = cfg.source_ckpt or cfg.ckpt
                # the latest checkpoint of the workdir is this step's (saved when the loop reached --iter)
                try:
                    path = export.export(cfg.workdir, base, source=assets.resolve(source) if source else None,
                                         seed=cfg.seed)
                except (OSError, tf.errors.OpError) as e:
                    if not isinstance(e, StorageError) and not integrity.is_storage_failure(e):
                        raise
                    raise StorageError(self._write_failed(f"the SavedModel under {base}", e,
                                                          self.manager.latest_checkpoint)
                                       + " (the rerun exports what is missing)") from None
                log.info("SavedModel: %s", path)

    def outputs(self) -> dict:
        """What the run has left in its workdir: {label: path or command}, existing files only."""
        cfg = self.cfg
        out = {}
        latest = self.manager.latest_checkpoint
        if latest:
            out["checkpoint"] = latest
        for label, name in (("final grid", FINAL_GRID), ("samples", "samples.png")):
            path = os.path.join(cfg.workdir, name)
            if os.path.exists(path):
                out[label] = path
        if cfg.export_on_finish or os.path.isdir(os.path.join(cfg.workdir, EXPORT_DIR)):
            from tf_cartoon import export

            base = os.path.join(cfg.workdir, EXPORT_DIR)
            versions = export.existing_versions(base)
            if versions:
                out["SavedModel"] = os.path.join(base, str(max(versions)))
        out["TensorBoard"] = f"tensorboard --logdir {os.path.join(cfg.workdir, 'tensorboard')}"
        return out


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def ema_decay(halflife_steps: float) -> float:
    """Per-step EMA decay for a half-life in steps (312.5 gives EMA_DECAY: 1 / 312.5 == 32 / 10000)."""
    return 0.5 ** (1.0 / halflife_steps)


def _copy(src, dst):
    sv, dv = src.variables, dst.variables
    if len(sv) != len(dv):
        raise ValueError(f"cannot copy {src.name} into {dst.name}: {len(sv)} vs {len(dv)} variables")
    for a, b in zip(sv, dv):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"cannot copy {src.name} into {dst.name}: {a.path} {a.shape} vs {b.path} {b.shape}")
        value = a.numpy() if hasattr(a, "numpy") else a
        # Into a frozen network stored in its compute dtype (bf16 / fp16): rounded once, as its reads would.
        b.assign(value if b.dtype == a.dtype else tf.cast(value, b.dtype))


def _atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to a temporary sibling and rename it over ``path``: never a torn file under ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def vars_of(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def _jsonable(d: dict) -> dict:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in d.items()}


def _due(done: int, every: int, last: int) -> bool:
    """A periodic action is due every ``every`` steps and at the last step."""
    return done % every == 0 or done == last


class _Clock:
    """Wall-clock time of the run and between console lines."""

    def __init__(self, start_step: int):
        self.start = self.last = time.time()
        self.last_step = start_step

    def lap(self, done: int) -> float:
        """Seconds per step since the previous lap; starts the next one."""
        now = time.time()
        sec_per_step = (now - self.last) / max(done - self.last_step, 1)
        self.last, self.last_step = now, done
        return sec_per_step

    def elapsed(self) -> float:
        return time.time() - self.start


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
