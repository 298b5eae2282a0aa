"""Fine-tune (or pretrain) a StyleGAN2 with the paper's methods.

    python -m tf_cartoon.train --flagfile=configs/<name>.cfg [--flag=value ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
Watch with: tensorboard --logdir <workdir>/tensorboard

Exit status: 0 done (or stopped to resume later), 2 a user error (flags, checkpoints, data; one
``error:`` line), 3 a loss became NaN / infinite (the last good checkpoint stays), 130 interrupted.
"""

from __future__ import annotations

import sys

from absl import flags

from tf_cartoon import cli
from tf_cartoon.precision import PRECISIONS
from tf_cartoon.training.config import TrainConfig

# The trainer's own flag registry, not absl's global one: train parses its argv itself, and a process that
# imports another absl tool too (bench defines --batch, --size, ...) must not see its flags clash.
FLAGS = flags.FlagValues()

def define_flags():
    """One absl flag per TrainConfig field, with the field's default and help (training/config.py)."""
    # absl's name of this module: the script path when it runs as __main__ (--help lists that module first)
    cli.define_dataclass_flags(TrainConfig, FLAGS, module_name=sys.argv[0] if __name__ == "__main__" else __name__,
                               choices={"precision": PRECISIONS})


def define_aliases():
    """The cross-tool role name (README "Command-line names"): --source is the frozen source here too."""
    flags.DEFINE_alias("source", "source_ckpt", flag_values=FLAGS)


def config_from_flags() -> TrainConfig:
    return cli.dataclass_from_flags(TrainConfig, FLAGS)


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


def command(argv) -> list[str]:
    """The command line of a training run with the flags ``argv`` in its own Python process."""
    return [sys.executable, "-m", "tf_cartoon.train", *argv]


def run_logged(argv, log_path: str, label: str, log=print) -> float:
    """Train with the flags ``argv`` in a subprocess (one tf.distribute strategy per process), its output appended
    to ``log_path``; returns the seconds it took. A failed run raises a UsageError naming ``label`` and the log
    (a rerun of the same flags resumes it, or says it is finished)."""
    import subprocess
    import time

    start = time.time()
    with open(log_path, "ab") as f:
        rc = subprocess.call(command(argv), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if rc != 0:
        raise cli.UsageError(f"training {label} failed with status {rc}; see {log_path}")
    return time.time() - start


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
