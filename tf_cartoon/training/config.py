"""The trainer's settings: one dataclass, validated before any graph is built.

Names and defaults follow the reference's argparse flags (rosinality train.py +
Cartoon-StyleGAN2's freeze options) where they exist. Each field carries its flag's help text
(``help_of``); train.py generates an absl flag for every field from it.
"""

from __future__ import annotations

import dataclasses
import os

from tf_cartoon import arch
from tf_cartoon.cli import UsageError
from tf_cartoon.precision import PRECISIONS, resolve


def _flag(default, help: str):
    """A TrainConfig field with its flag's help text (train's --help is generated from these)."""
    return dataclasses.field(default=default, metadata={"help": help})


# --metrics names -> the tf_cartoon.evaluate row (and TensorBoard scalar eval/<row>) each gives
TRAIN_METRICS = {"structure": "structure_error", "domain": "domain_rate", "judge_fd": "judge_fd", "fid": "fid",
                 "kid": "kid"}


def help_of(field: dataclasses.Field) -> str:
    return field.metadata["help"]


@dataclasses.dataclass
class TrainConfig:
    # --- reference flags -------------------------------------------------------------------------
    iter: int = _flag(800_000, "total training iterations (steps)")
    batch: int = _flag(16, "GLOBAL batch size (split across replicas)")
    size: int = _flag(0, "image size; 0 = from --ckpt (256 from scratch; a value conflicting with --ckpt is an "
                         "error)")
    r1: float = _flag(10.0, "R1 weight")
    path_regularize: float = _flag(2.0, "path-length weight")
    path_batch_shrink: int = _flag(2, "path-length batch divisor")
    d_reg_every: int = _flag(16, "R1 every N steps (lazy regularisation)")
    g_reg_every: int = _flag(4, "path length every N steps (lazy regularisation)")
    mixing: float = _flag(0.9, "style-mixing probability")
    lr: float = _flag(0.002, "learning rate")
    channel_multiplier: int = _flag(2, "from scratch: channel multiplier of the default channel table")
    latent: int = _flag(512, "from scratch: style_dim")
    n_mlp: int = _flag(8, "from scratch: mapping layers")
    channels: str = _flag("", "from scratch: channel map resolution:channels for every resolution 4..size, e.g. "
                              "4:128,8:128,16:64,32:32 (empty: the reference table with --channel_multiplier)")
    augment: bool = _flag(False, "use ADA augmentation")
    augment_p: float = _flag(0.0, "fixed augmentation p (0 with --augment = adaptive)")
    ada_target: float = _flag(0.6, "ADA target r_t")
    ada_length: int = _flag(500_000, "ADA: images for p to go 0 -> 1")
    ada_every: int = _flag(8, "ADA: D steps between p updates (the reference hard-codes 8)")
    freezeG: int = _flag(-1, "train only the N highest-resolution G blocks (+ ToRGBs); <= 0: every block; any "
                             "value >= 0 also switches path length off, as the reference")
    freezeD: int = _flag(-1, "train only the N lowest-resolution D blocks + final layers; <= 0: all of D")
    freezeStyle: int = _flag(-1, "FreezeSG: first k W+ rows from the frozen source when mixing (-1 off)")
    freezeFC: bool = _flag(False, "D step: whole W+ from the frozen source when mixing")
    structure_loss: int = _flag(-1, "structure loss over swap layers 1..N (-1 off)")
    n_sample: int = _flag(8, "samples per row of the image grids")
    ckpt: str = _flag("", "start from any checkpoint the tools read (.pt, .pkl, converted directory, workdir, "
                          "builtin:<name>; empty: from scratch)")
    # --- ours ------------------------------------------------------------------------------------
    source_ckpt: str = _flag("", "frozen source generator (any checkpoint the tools read; default: --ckpt's "
                                 "g_ema); alias --source")
    workdir: str = _flag("runs/default", "run directory (checkpoints, TensorBoard, samples); rerun to resume")
    data: str = _flag("", "training images: a folder, a TFRecord pattern, or synthetic:<name>")
    structure_loss_on: str = _flag("features", "features (the reference code) or rgb (the paper's figure)")
    structure_weight: float = _flag(1.0, "structure loss weight")
    swap_layers: str = _flag("auto", "layer-swapped rows of the sample grids, e.g. 1,2 (auto: 1..min(3, blocks))")
    xla: str = _flag("auto", "XLA-compile the per-replica forward / backward: auto (on with GPUs), on, off")
    precision: str = _flag("fp32", "compute precision: fp32; bf16 (bfloat16 compute, float32 variables, losses, "
                                   "R1 / path-length maths, EMA and Adam; no loss scaling; fast on CPUs with "
                                   "AVX512_BF16 / AMX); fp16 (GPUs: float16 compute with dynamic loss scaling); "
                                   "auto (bf16 on a CPU with native bfloat16, else fp32)")
    mixed_precision: bool = _flag(False, "older spelling of --precision=bf16")
    log_every: int = _flag(100, "console / TensorBoard scalars every N steps")
    sample_every: int = _flag(1000, "image grids every N steps")
    ckpt_every: int = _flag(5000, "checkpoint every N steps")
    keep_checkpoints: int = _flag(3, "checkpoints to keep")
    export_torch: bool = _flag(False, "also write the reference .pt (with g_optim / d_optim) at each checkpoint")
    pairing: str = _flag("shared_w", "sample grids with a source: shared_w (z through the source's mapping, that "
                                     "W to both, as the reference's demos) or own_z (each generator maps z "
                                     "itself)")
    ada_p_from_ckpt: bool = _flag(False, "adaptive ADA starts at the --ckpt file's ada_aug_p (default: at 0, as "
                                         "the reference, whose p belongs to the source's dataset)")
    fresh_optimizer: bool = _flag(False, "start Adam from zero instead of the --ckpt file's g_optim / d_optim "
                                         "(the reference loads them)")
    seed: int = _flag(0, "random seed")
    fused_modconv: bool = _flag(False, "use the fused (grouped-conv) modulated convolution")
    recompute: bool = _flag(False, "gradient checkpointing of every G / D block: the D and G steps keep only "
                                   "each block's inputs and recompute the block in the backward pass (same "
                                   "results, less memory, ~25% slower; R1 and path length run without it). "
                                   "Off, only G's two highest-resolution blocks in the G step are")
    max_time_minutes: float = _flag(0.0, "stop and checkpoint after this many minutes (0 = no limit)")
    ema_halflife_steps: float = _flag(312.5, "half-life of g_ema's moving average in steps (312.5: the "
                                             "reference's per-step 0.5 ** (32 / 10000); short fine-tuning runs "
                                             "want less)")
    # --- metrics of g_ema during the run (tf_cartoon.evaluate's; TensorBoard scalars eval/<metric>) -----
    metrics: str = _flag("", "comma-separated metrics of g_ema every --metrics_every steps and at --iter, as "
                             "TensorBoard scalars eval/<name> and in the HParams dashboard: structure, domain, "
                             "judge_fd (the shipped judge of the built-in domains; structure needs a source), "
                             "fid, kid (with --inception); empty: none")
    metrics_every: int = _flag(0, "steps between --metrics evaluations (0: only at --iter)")
    metrics_n: int = _flag(500, "images per --metrics evaluation (seeds 0..n-1, the source's noise and latents)")
    metrics_real: str = _flag("", "real images for fid / kid / judge_fd (default: --data)")
    inception: str = _flag("", "FID Inception weights for --metrics fid / kid: pytorch-fid's "
                               "pt_inception-2015-12-05-6726825d.pth")
    # --- when the run reaches --iter (also on a rerun of a finished run, if still missing) ------------
    final_grid_seeds: str = _flag("", "at --iter: write <workdir>/final_grid.png for these seeds, e.g. 0-7 "
                                      "(rows: source | target | swapped at each --swap_layers; empty: none)")
    final_grid_truncation: float = _flag(0.7, "truncation psi of the final grid, each generator toward its own "
                                              "mean latent (1 = none)")
    export_on_finish: bool = _flag(False, "at --iter: export g_ema (+ the source's swap signature) as a "
                                          "SavedModel to <workdir>/export/<version>")

    def metric_list(self) -> list[str]:
        return [m.strip() for m in str(self.metrics).split(",") if m.strip()]

    def final_seeds(self) -> list[int]:
        if not str(self.final_grid_seeds).strip():
            return []
        from tf_cartoon.images import parse_seeds

        try:
            return parse_seeds(self.final_grid_seeds)
        except ValueError as e:
            raise ConfigError(f"--final_grid_seeds={self.final_grid_seeds!r}: {e}") from None

    def channel_map(self) -> dict[int, int] | None:
        """``--channels`` parsed: {resolution: channels}, or None for the default table.

        Only the syntax and values are checked here; ``validate`` checks the resolutions against --size."""
        text = str(self.channels).strip()
        if not text:
            return None
        out = {}
        for item in text.split(","):
            res, sep, ch = item.partition(":")
            try:
                res_i, ch_i = int(res), int(ch)
            except ValueError:
                res_i = ch_i = None
            if not sep or res_i is None:
                raise ConfigError(f"--channels={self.channels!r}: bad entry {item.strip()!r}; expected "
                                  "resolution:channels pairs like 4:128,8:128,16:64")
            if not arch.is_power_of_two(res_i) or res_i < 4:
                raise ConfigError(f"--channels={self.channels!r}: resolution {res_i} is not a power of two >= 4")
            if ch_i <= 0:
                raise ConfigError(f"--channels={self.channels!r}: resolution {res_i} needs a positive channel count")
            if res_i in out:
                raise ConfigError(f"--channels={self.channels!r}: resolution {res_i} appears twice")
            out[res_i] = ch_i
        return out

    @property
    def adaptive_augment(self) -> bool:
        return self.augment and self.augment_p == 0

    def compute_precision(self, gpu: bool = False) -> str:
        """The concrete precision the run computes in (fp32 / bf16 / fp16): --precision, with --mixed_precision
        as the older spelling of bf16, auto resolved for this machine (tf_cartoon.precision.resolve)."""
        return resolve("bf16" if self.mixed_precision else self.precision, gpu=gpu)

    def swap_layer_list(self, n_blocks: int | None = None) -> list[int]:
        if str(self.swap_layers).strip() in ("auto", ""):
            return list(range(1, min(3, n_blocks or 3) + 1))
        try:
            return [int(s) for s in str(self.swap_layers).split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--swap_layers={self.swap_layers!r}: expected 'auto' or a comma list like 1,2") from None


class ConfigError(UsageError):
    """A flag value that cannot work; the message names the flag (the CLI prints it as one error line)."""


def validate(cfg: TrainConfig, size: int | None = None, n_blocks: int | None = None, num_replicas: int = 1):
    """Check every flag; ``size`` / ``n_blocks`` are the network's once known (from the checkpoint)."""
    _check_batch(cfg, num_replicas)
    _check_architecture(cfg, size)
    _check_optimisation(cfg)
    _check_augmentation(cfg)
    _check_outputs(cfg)
    _check_paths(cfg)
    _check_metrics(cfg)
    if n_blocks is not None:
        _check_against_network(cfg, size, n_blocks)
    return cfg


def _need(cfg: TrainConfig, cond: bool, flag: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"--{flag}={getattr(cfg, flag)!r}: {msg}")


def _check_batch(cfg: TrainConfig, num_replicas: int) -> None:
    _need(cfg, cfg.iter > 0, "iter", "must be positive")
    _need(cfg, cfg.batch > 0, "batch", "must be positive")
    _need(cfg, cfg.batch % num_replicas == 0, "batch",
          f"the global batch must be divisible by the {num_replicas} replicas")
    per_replica = cfg.batch // max(num_replicas, 1)
    group = arch.STDDEV_GROUP
    _need(cfg, per_replica <= group or per_replica % group == 0, "batch", f"the per-replica batch {per_replica} "
          f"must be <= {group} or a multiple of {group} (minibatch-stddev groups of {group})")


def _check_architecture(cfg: TrainConfig, size: int | None) -> None:
    """--size and --channels, alone and against the checkpoint's size once known."""
    _need(cfg, cfg.size == 0 or arch.is_valid_size(cfg.size), "size",
          f"must be a power of two between {arch.MIN_SIZE} and {arch.MAX_SIZE} (or 0 = from the checkpoint)")
    if size is not None and cfg.size and cfg.ckpt:
        _need(cfg, cfg.size == size, "size", f"conflicts with the checkpoint {cfg.ckpt}, which is {size} px "
              "(leave --size out: it comes from the checkpoint)")
    channels = cfg.channel_map()
    if channels is not None:
        _need(cfg, not cfg.ckpt, "channels", f"applies to a run from scratch only: the architecture of "
              f"--ckpt={cfg.ckpt} comes from the checkpoint")
        net_size = size or cfg.size or 256
        wanted = arch.resolutions(net_size)
        _need(cfg, sorted(channels) == wanted, "channels",
              f"a {net_size} px network needs exactly the resolutions {','.join(map(str, wanted))}")


def _check_optimisation(cfg: TrainConfig) -> None:
    """Loss weights, learning rate, lazy-regularisation intervals, mixing, EMA."""
    for flag in ("r1", "path_regularize", "lr", "structure_weight"):
        _need(cfg, getattr(cfg, flag) >= 0, flag, "must be >= 0")
    _need(cfg, cfg.lr > 0, "lr", "must be positive")
    _need(cfg, cfg.path_batch_shrink >= 1, "path_batch_shrink", "must be >= 1")
    _need(cfg, cfg.d_reg_every >= 1, "d_reg_every", "must be >= 1")
    _need(cfg, cfg.g_reg_every >= 1, "g_reg_every", "must be >= 1")
    _need(cfg, 0.0 <= cfg.mixing <= 1.0, "mixing", "must be in [0, 1]")
    _need(cfg, cfg.ema_halflife_steps > 0, "ema_halflife_steps", "must be positive")
    _need(cfg, cfg.structure_loss_on in ("features", "rgb"), "structure_loss_on", "must be 'features' or 'rgb'")
    _need(cfg, cfg.xla in ("auto", "on", "off"), "xla", "must be auto, on or off")
    _need(cfg, cfg.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    _need(cfg, not cfg.mixed_precision or cfg.precision in ("fp32", "bf16"), "mixed_precision",
          f"is the older spelling of --precision=bf16 and conflicts with --precision={cfg.precision}")


def _check_augmentation(cfg: TrainConfig) -> None:
    _need(cfg, 0.0 <= cfg.augment_p <= 1.0, "augment_p", "must be in [0, 1]")
    _need(cfg, 0.0 <= cfg.ada_target <= 1.0, "ada_target", "must be in [0, 1]")
    _need(cfg, cfg.ada_length > 0, "ada_length", "must be positive")
    _need(cfg, cfg.ada_every >= 1, "ada_every", "must be >= 1")


def _check_outputs(cfg: TrainConfig) -> None:
    """What the run writes, and how often: logs, grids, checkpoints, the final grid."""
    _need(cfg, 0.0 < cfg.final_grid_truncation <= 1.0, "final_grid_truncation", "must be in (0, 1] (1 = none)")
    _need(cfg, len(cfg.final_seeds()) <= 64, "final_grid_seeds", "at most 64 seeds (one grid column each)")
    _need(cfg, cfg.pairing in ("shared_w", "own_z"), "pairing", "must be 'shared_w' or 'own_z'")
    for flag in ("log_every", "sample_every", "ckpt_every", "keep_checkpoints", "n_sample"):
        _need(cfg, getattr(cfg, flag) >= 1, flag, "must be >= 1")


def _check_paths(cfg: TrainConfig) -> None:
    """--workdir, --data, and the checkpoints the run needs (--ckpt, --source_ckpt) exist."""
    _need(cfg, bool(cfg.workdir), "workdir", "is required")
    _need(cfg, bool(cfg.data), "data", "is required (a folder, a TFRecord pattern or synthetic:<name>)")
    if not cfg.data.startswith("synthetic:"):
        import glob

        _need(cfg, os.path.exists(cfg.data) or bool(glob.glob(cfg.data)), "data", "no such folder or file pattern")
    if cfg.freezeStyle >= 0 or cfg.structure_loss > 0 or cfg.freezeFC:
        _need(cfg, bool(cfg.source_ckpt or cfg.ckpt), "source_ckpt" if not cfg.ckpt else "ckpt",
              "freezeStyle / freezeFC / structure_loss need a source generator: pass --ckpt or --source_ckpt")
    from tf_cartoon import assets

    for flag in ("source_ckpt", "ckpt"):
        path = getattr(cfg, flag)
        try:
            path = assets.resolve(path)
        except FileNotFoundError as e:
            raise ConfigError(f"--{flag}={getattr(cfg, flag)!r}: {e}") from None
        _need(cfg, not path or os.path.exists(path), flag, "no such file or directory")


def _check_metrics(cfg: TrainConfig) -> None:
    """--metrics and its settings: what tf_cartoon.evaluate can measure of g_ema during the run."""
    names = cfg.metric_list()
    unknown = [m for m in names if m not in TRAIN_METRICS]
    _need(cfg, not unknown, "metrics", f"unknown {', '.join(unknown)}; choose from {', '.join(TRAIN_METRICS)}")
    _need(cfg, cfg.metrics_every >= 0, "metrics_every", "must be >= 0 (0: only at --iter)")
    if not names:
        return
    _need(cfg, cfg.metrics_n >= 2, "metrics_n", "must be >= 2")
    if "structure" in names:
        _need(cfg, bool(cfg.source_ckpt or cfg.ckpt), "metrics",
              "structure compares g_ema with its source: pass --ckpt or --source_ckpt")
    if {"fid", "kid"} & set(names):
        _need(cfg, bool(cfg.inception) and os.path.isfile(cfg.inception), "inception",
              "fid / kid need the FID Inception weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    if cfg.metrics_real and not cfg.metrics_real.startswith("synthetic:"):
        import glob

        _need(cfg, os.path.exists(cfg.metrics_real) or bool(glob.glob(cfg.metrics_real)), "metrics_real",
              "no such folder or file pattern")


def _check_against_network(cfg: TrainConfig, size: int, n_blocks: int) -> None:
    """Freeze depths, structure-loss and swap layers within the network's blocks."""
    _need(cfg, cfg.freezeG <= n_blocks, "freezeG", f"this {size} px generator has {n_blocks} synthesis blocks")
    _need(cfg, cfg.freezeD <= n_blocks + 1, "freezeD",
          f"this {size} px discriminator has {n_blocks + 1} convolution stages")
    _need(cfg, cfg.structure_loss <= n_blocks, "structure_loss", f"layers 1..{n_blocks} exist at {size} px")
    n_latent = arch.n_latent(size)
    _need(cfg, cfg.freezeStyle < n_latent, "freezeStyle", f"must be < the {n_latent} W+ rows at {size} px")
    for L in cfg.swap_layer_list(n_blocks):
        if not 1 <= L <= n_blocks:
            raise ConfigError(f"--swap_layers={cfg.swap_layers!r}: layer {L} is outside 1..{n_blocks} "
                              f"at {size} px")


def check_data(cfg: TrainConfig) -> None:
    """--data names something to train on: a known synthetic set, TFRecord files, or a folder holding at
    least one image file. Scanned before any network is built, so that an empty folder is one error
    line, not a failure after the models are set up."""
    from tf_cartoon import data

    try:
        kind, target = data.resolve_spec(cfg.data)
        if kind == "folder":
            data.scan_images(target)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--data={cfg.data!r}: {' '.join(str(e).split())}") from None
