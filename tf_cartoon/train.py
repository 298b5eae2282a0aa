"""Fine-tune (or pretrain) a StyleGAN2 with the paper's methods.

    python -m tf_cartoon.train --flagfile=configs/<name>.cfg [--flag=value ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
Watch with: tensorboard --logdir <workdir>/tensorboard
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from absl import app, flags

from tf_cartoon.training.config import ConfigError, TrainConfig

FLAGS = flags.FLAGS

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
    "ckpt": "start from a reference .pt or a converted directory (empty: from scratch)",
    "source_ckpt": "frozen source generator (.pt or converted dir; default: --ckpt's g_ema)",
    "workdir": "run directory (checkpoints, TensorBoard, samples); rerun to resume",
    "data": "training images: a folder, a TFRecord pattern, or synthetic:<name>",
    "structure_loss_on": "features (the reference code) or rgb (the paper's figure)",
    "structure_weight": "structure loss weight", "swap_layers": "layer-swap columns in the sample grid",
    "xla": "XLA-compile the per-replica step: auto (on with GPUs), on, off",
    "mixed_precision": "mixed float16 compute (GPU)", "log_every": "console/TensorBoard scalars every N steps",
    "sample_every": "image grids every N steps", "ckpt_every": "checkpoint every N steps",
    "keep_checkpoints": "checkpoints to keep", "export_torch": "also write the reference .pt at each checkpoint",
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
            flags.DEFINE_bool(name, default, help_)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_)
        else:
            flags.DEFINE_string(name, default, help_)


def config_from_flags() -> TrainConfig:
    return TrainConfig(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainConfig)})


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = config_from_flags()
    from tf_cartoon.training.config import validate

    try:
        validate(cfg)  # flags alone, before TensorFlow builds anything
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tf_cartoon.data.folder import DataUnreadableError
    from tf_cartoon.io.errors import CheckpointError, StorageError, WorkdirBusyError
    from tf_cartoon.training.trainer import Trainer, TrainingDiverged

    try:
        trainer = Trainer(cfg)
        trainer.fit()
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, StorageError, WorkdirBusyError, DataUnreadableError) as e:
        # storage and processes: torn checkpoints, a full disk, a workdir in use, images gone (one line, exit 2)
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
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

if __name__ == "__main__":
    from tf_cartoon import limit_malloc_arenas

    limit_malloc_arenas()  # before TF starts its thread pools
    app.run(lambda argv: sys.exit(main(argv)))
