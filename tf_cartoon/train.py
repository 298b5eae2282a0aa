"""Fine-tune (or pretrain) a StyleGAN2 with the paper's methods.

    python -m tf_cartoon.train --flagfile=configs/<name>.cfg [--flag=value ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
Watch with: tensorboard --logdir <workdir>/tensorboard

Exit status: 0 done (or stopped to resume later), 2 a user error (flags, checkpoints, data; one
``error:`` line), 3 a loss became NaN / infinite (the last good checkpoint stays), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from tf_cartoon import cli
from tf_cartoon.training.config import TrainConfig

# The trainer's own flag registry, not absl's global one: train parses its argv itself, and a process that
# imports another absl tool too (bench defines --batch, --size, ...) must not see its flags clash.
FLAGS = flags.FlagValues()

_HELP = {
    "iter": "total training iterations", "batch": "GLOBAL batch size (split across replicas)",
    "size": "image size; 0 = from --ckpt (a conflicting value is an error)",
    "r1": "R1 weight", "path_regularize": "path-length weight", "path_batch_shrink": "path-length batch divisor",
    "d_reg_every": "R1 every N steps (lazy)", "g_reg_every": "path length every N steps (lazy)",
    "mixing": "style-mixing probability", "lr": "learning rate",
    "channel_multiplier": "from scratch: channel multiplier", "latent": "from scratch: style_dim",
    "n_mlp": "from scratch: mapping layers",
    "channels": "from scratch: channel map resolution:channels for every resolution 4..size, e.g. "
                "4:128,8:128,16:64,32:32 (empty: the reference table with --channel_multiplier)", "augment": "use ADA augmentation",
    "augment_p": "fixed augmentation p (0 with --augment = adaptive)", "ada_target": "ADA target r_t",
    "ada_length": "ADA: images for p to go 0 -> 1", "ada_every": "ADA: D steps between p updates",
    "freezeG": "train only the N highest-resolution G blocks (-1 off; >= 0 also disables path length)",
    "freezeD": "train only the N lowest-resolution D blocks + final layers (-1 off)",
    "freezeStyle": "FreezeSG: first k W+ rows from the frozen source when mixing (-1 off)",
    "freezeFC": "D step: whole W+ from the frozen source when mixing",
    "structure_loss": "structure loss over swap layers 1..N (-1 off)", "n_sample": "samples in the image grids",
    "ckpt": "start from a reference .pt, a converted directory or builtin:<name> (empty: from scratch)",
    "source_ckpt": "frozen source generator (.pt, converted dir or builtin:<name>; default: --ckpt's g_ema)",
    "workdir": "run directory (checkpoints, TensorBoard, samples); rerun to resume",
    "data": "training images: a folder, a TFRecord pattern, or synthetic:<name>",
    "structure_loss_on": "features (the reference code) or rgb (the paper's figure)",
    "structure_weight": "structure loss weight", "swap_layers": "layer-swap columns in the sample grid",
    "xla": "XLA-compile the per-replica step: auto (on with GPUs), on, off",
    "mixed_precision": "mixed float16 compute (GPU)", "log_every": "console/TensorBoard scalars every N steps",
    "sample_every": "image grids every N steps", "ckpt_every": "checkpoint every N steps",
    "keep_checkpoints": "checkpoints to keep", "export_torch": "also write the reference .pt (with g_optim / d_optim) at each checkpoint",
    "pairing": "sample grids with a source: shared_w (z through the source's mapping, that W to both, as the "
               "reference's demos) or own_z (each generator maps z itself)",
    "ada_p_from_ckpt": "adaptive ADA starts at the --ckpt file's ada_aug_p (default: at 0, as the reference, "
                       "whose p belongs to the source's dataset)",
    "fresh_optimizer": "start Adam from zero instead of the --ckpt file's g_optim / d_optim (the reference "
                       "loads them)",
    "seed": "random seed", "fused_modconv": "use the fused (grouped-conv) modulated convolution",
    "recompute": "gradient checkpointing of every G/D block: the D and G steps keep only each block's inputs "
                 "and recompute the block in the backward pass (same results, less memory, ~25% slower; R1 "
                 "and path length steps run without it). Off, only G's two highest-resolution blocks in "
                 "the G step are",
    "max_time_minutes": "stop and checkpoint after this many minutes (0 = no limit)",
    "ema_halflife_steps": "half-life of g_ema's moving average in steps (312.5: the reference's per-step "
                          "0.5 ** (32 / 10000); short fine-tuning runs want less)",
    "final_grid_seeds": "at --iter: write <workdir>/final_grid.png for these seeds, e.g. 0-7 (rows: source | "
                        "target | swapped at each --swap_layers; empty: none)",
    "final_grid_truncation": "truncation psi of the final grid (1 = none)",
    "export_on_finish": "at --iter: export g_ema (+ the source's swap signature) as a SavedModel to "
                        "<workdir>/export/<version>",
}


def define_flags():
    """One absl flag per TrainConfig field, with the field's default."""
    for f in dataclasses.fields(TrainConfig):
        default, name, help_ = f.default, f.name, _HELP.get(f.name, f.name)
        if isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_, flag_values=FLAGS)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_, flag_values=FLAGS)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_, flag_values=FLAGS)
        else:
            flags.DEFINE_string(name, default, help_, flag_values=FLAGS)


def define_aliases():
    """The cross-tool role name (README "Command-line names"): --source is the frozen source here too."""
    flags.DEFINE_alias("source", "source_ckpt", flag_values=FLAGS)


def config_from_flags() -> TrainConfig:
    return TrainConfig(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainConfig)})


def parse_flags(argv=None) -> TrainConfig:
    """absl flags (``--flagfile`` included) from ``argv`` (without the program name; None: sys.argv[1:]).

    Every flag starts from its default, so that repeated calls in one process do not inherit values."""
    from tf_cartoon.resources import resolve_flagfile_args

    # A --flagfile naming a shipped config (configs/quickstart.cfg, quickstart) that does not exist relative
    # to the current directory reads the installed copy (tf_cartoon/resources.py).
    argv = resolve_flagfile_args(list(sys.argv[1:] if argv is None else argv))
    if any(a in ("-h", "--help", "--helpfull", "-?") for a in argv):
        print(f"{__doc__}\nflags:\n{FLAGS.get_help()}")
        raise SystemExit(0)
    if FLAGS.is_parsed():
        FLAGS.unparse_flags()
    try:
        rest = FLAGS(["tf_cartoon.train"] + argv)
    except flags.Error as e:
        raise cli.UsageError(str(e).removeprefix("ERROR:: ")) from None
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments {' '.join(rest[1:])} (flags are --name=value)")
    return config_from_flags()


@cli.command(setup="train")
def main(argv=None) -> int:
    cfg = parse_flags(argv)
    from tf_cartoon.training.config import check_data, validate

    validate(cfg)  # flags alone, before TensorFlow builds anything (a ConfigError is a UsageError)
    check_data(cfg)  # an image folder without images fails here, before TensorFlow starts (the Trainer checks again)
    from tf_cartoon.data.folder import DataUnreadableError
    from tf_cartoon.training.trainer import Trainer, TrainingDiverged

    # Torn checkpoints (CheckpointError), a full disk (StorageError) and a workdir in use (WorkdirBusyError)
    # are user errors cli.command reports in one line with exit 2; so are images gone mid-run:
    try:
        trainer = Trainer(cfg)
        trainer.fit()
    except TrainingDiverged as e:
        cli.report(e)
        return 3
    except DataUnreadableError as e:
        cli.report(e)
        return 2
    print(summary(trainer))
    return 0


def summary(trainer) -> str:
    """Where the run stands and where each output is (printed at the end of every run)."""
    cfg = trainer.cfg
    step = int(trainer.step.numpy())
    if trainer.already_finished:
        head = (f"already finished: step {step} of --iter={cfg.iter} in {cfg.workdir} (nothing trained; "
                "raise --iter to continue)")
    elif step >= cfg.iter:
        head = f"finished: step {step} of {cfg.iter} in {cfg.workdir}"
    else:
        head = f"stopped at step {step} of {cfg.iter} in {cfg.workdir}; rerun the same command to resume"
    width = max(len(k) for k in trainer.outputs())
    return "\n".join([head] + [f"  {k + ':':<{width + 1}} {v}" for k, v in trainer.outputs().items()])


define_flags()
define_aliases()

if __name__ == "__main__":
    cli.run(main)
