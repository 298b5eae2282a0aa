"""The trainer's settings: one dataclass, validated before any graph is built.

Names and defaults follow the reference's argparse flags (rosinality train.py +
Cartoon-StyleGAN2's freeze options) where they exist; ours are documented inline.
train.py defines an absl flag for every field.
"""

from __future__ import annotations

import dataclasses
import os

from tf_cartoon import arch
from tf_cartoon.cli import UsageError


@dataclasses.dataclass
class TrainConfig:
    # --- reference flags -------------------------------------------------------------------------
    iter: int = 800_000  # total training iterations (steps)
    batch: int = 16  # GLOBAL batch (split across replicas)
    size: int = 0  # image size; 0 = from the checkpoint (or 256 from scratch)
    r1: float = 10.0
    path_regularize: float = 2.0
    path_batch_shrink: int = 2
    d_reg_every: int = 16
    g_reg_every: int = 4
    mixing: float = 0.9
    lr: float = 0.002
    channel_multiplier: int = 2  # from scratch only
    latent: int = 512  # style_dim, from scratch only
    n_mlp: int = 8  # from scratch only
    channels: str = ""  # from scratch only: explicit channel map "4:128,8:128,16:64,..." ("" = the default table)
    augment: bool = False
    augment_p: float = 0.0  # > 0: fixed p; 0 with --augment: adaptive (ADA)
    ada_target: float = 0.6
    ada_length: int = 500_000
    ada_every: int = 8  # D steps between p updates (the reference hard-codes 8)
    freezeG: int = -1
    freezeD: int = -1
    freezeStyle: int = -1
    freezeFC: bool = False
    structure_loss: int = -1
    n_sample: int = 8  # samples per row of the image grids
    ckpt: str = ""  # start from: a reference .pt, a converted directory ("" = from scratch)
    # --- ours ------------------------------------------------------------------------------------
    source_ckpt: str = ""  # frozen source G ("" = the --ckpt file's g_ema)
    workdir: str = "runs/default"
    data: str = ""  # folder | TFRecord pattern | synthetic:<name>
    structure_loss_on: str = "features"  # features (reference code) | rgb (paper's figure)
    structure_weight: float = 1.0
    swap_layers: str = "auto"  # layer-swapped rows of the sample grid ("auto": 1..min(3, blocks))
    xla: str = "auto"  # auto | on | off: XLA-compile the per-replica forward/backward
    mixed_precision: bool = False
    log_every: int = 100
    sample_every: int = 1000
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    export_torch: bool = False  # also write the reference .pt format (with g_optim / d_optim) at each checkpoint
    pairing: str = "shared_w"  # sample grids: shared_w (the source's W for both, as the reference) | own_z
    ada_p_from_ckpt: bool = False  # adaptive ADA starts at the --ckpt file's ada_aug_p (the reference: at 0)
    fresh_optimizer: bool = False  # start Adam from zero instead of the --ckpt file's g_optim / d_optim
    seed: int = 0
    fused_modconv: bool = False
    recompute: bool = False  # checkpoint every G and D block (default: the highest-resolution ones only)
    max_time_minutes: float = 0.0  # stop (and checkpoint) after this long; 0 = no limit
    ema_halflife_steps: float = 312.5  # g_ema half-life in steps; 312.5 = the reference's 0.5 ** (32 / 10000)
    # --- when the run reaches --iter (also on a rerun of a finished run, if still missing) ------------
    final_grid_seeds: str = ""  # seeds of <workdir>/final_grid.png (source | target | swapped); "" = none
    final_grid_truncation: float = 0.7  # truncation psi of that grid (each G toward its own mean latent)
    export_on_finish: bool = False  # SavedModel of g_ema (+ the source's swap) into <workdir>/export/<v>

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
    def need(cond, flag, msg):
        if not cond:
            raise ConfigError(f"--{flag}={getattr(cfg, flag)!r}: {msg}")

    need(cfg.iter > 0, "iter", "must be positive")
    need(cfg.batch > 0, "batch", "must be positive")
    need(cfg.batch % num_replicas == 0, "batch",
         f"the global batch must be divisible by the {num_replicas} replicas")
    per_replica = cfg.batch // max(num_replicas, 1)
    group = arch.STDDEV_GROUP
    need(per_replica <= group or per_replica % group == 0, "batch", f"the per-replica batch {per_replica} must be "
         f"<= {group} or a multiple of {group} (minibatch-stddev groups of {group})")
    need(cfg.size == 0 or arch.is_valid_size(cfg.size), "size",
         f"must be a power of two between {arch.MIN_SIZE} and {arch.MAX_SIZE} (or 0 = from the checkpoint)")
    if size is not None and cfg.size and cfg.ckpt:
        need(cfg.size == size, "size", f"conflicts with the checkpoint {cfg.ckpt}, which is {size} px "
             "(leave --size out: it comes from the checkpoint)")
    channels = cfg.channel_map()
    if channels is not None:
        need(not cfg.ckpt, "channels", f"applies to a run from scratch only: the architecture of --ckpt={cfg.ckpt} "
             "comes from the checkpoint")
        net_size = size or cfg.size or 256
        wanted = arch.resolutions(net_size)
        need(sorted(channels) == wanted, "channels",
             f"a {net_size} px network needs exactly the resolutions {','.join(map(str, wanted))}")
    for flag in ("r1", "path_regularize", "lr", "structure_weight"):
        need(getattr(cfg, flag) >= 0, flag, "must be >= 0")
    need(cfg.lr > 0, "lr", "must be positive")
    need(cfg.path_batch_shrink >= 1, "path_batch_shrink", "must be >= 1")
    need(cfg.d_reg_every >= 1, "d_reg_every", "must be >= 1")
    need(cfg.g_reg_every >= 1, "g_reg_every", "must be >= 1")
    need(0.0 <= cfg.mixing <= 1.0, "mixing", "must be in [0, 1]")
    need(0.0 <= cfg.augment_p <= 1.0, "augment_p", "must be in [0, 1]")
    need(0.0 <= cfg.ada_target <= 1.0, "ada_target", "must be in [0, 1]")
    need(cfg.ada_length > 0, "ada_length", "must be positive")
    need(cfg.ada_every >= 1, "ada_every", "must be >= 1")
    need(cfg.ema_halflife_steps > 0, "ema_halflife_steps", "must be positive")
    need(0.0 < cfg.final_grid_truncation <= 1.0, "final_grid_truncation", "must be in (0, 1] (1 = none)")
    need(len(cfg.final_seeds()) <= 64, "final_grid_seeds", "at most 64 seeds (one grid column each)")
    need(cfg.structure_loss_on in ("features", "rgb"), "structure_loss_on", "must be 'features' or 'rgb'")
    need(cfg.pairing in ("shared_w", "own_z"), "pairing", "must be 'shared_w' or 'own_z'")
    need(cfg.xla in ("auto", "on", "off"), "xla", "must be auto, on or off")
    for flag in ("log_every", "sample_every", "ckpt_every", "keep_checkpoints", "n_sample"):
        need(getattr(cfg, flag) >= 1, flag, "must be >= 1")
    need(bool(cfg.workdir), "workdir", "is required")
    need(bool(cfg.data), "data", "is required (a folder, a TFRecord pattern or synthetic:<name>)")
    if not cfg.data.startswith("synthetic:"):
        import glob

        need(os.path.exists(cfg.data) or bool(glob.glob(cfg.data)), "data", "no such folder or file pattern")
    needs_source = cfg.freezeStyle >= 0 or cfg.structure_loss > 0 or cfg.freezeFC
    if needs_source:
        need(bool(cfg.source_ckpt or cfg.ckpt), "source_ckpt" if not cfg.ckpt else "ckpt",
             "freezeStyle / freezeFC / structure_loss need a source generator: pass --ckpt or --source_ckpt")
    from tf_cartoon import assets

    for flag in ("source_ckpt", "ckpt"):
        path = getattr(cfg, flag)
        try:
            path = assets.resolve(path)
        except FileNotFoundError as e:
            raise ConfigError(f"--{flag}={getattr(cfg, flag)!r}: {e}") from None
        need(not path or os.path.exists(path), flag, "no such file or directory")
    if n_blocks is not None:
        need(cfg.freezeG <= n_blocks, "freezeG", f"this {size} px generator has {n_blocks} synthesis blocks")
        need(cfg.freezeD <= n_blocks + 1, "freezeD",
             f"this {size} px discriminator has {n_blocks + 1} convolution stages")
        need(cfg.structure_loss <= n_blocks, "structure_loss",
             f"layers 1..{n_blocks} exist at {size} px")
        n_latent = arch.n_latent(size)
        need(cfg.freezeStyle < n_latent, "freezeStyle", f"must be < the {n_latent} W+ rows at {size} px")
        for L in cfg.swap_layer_list(n_blocks):
            if not 1 <= L <= n_blocks:
                raise ConfigError(f"--swap_layers={cfg.swap_layers!r}: layer {L} is outside 1..{n_blocks} "
                                  f"at {size} px")
    return cfg


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
