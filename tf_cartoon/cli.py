"""The command-line layer every tool shares: flag names, checkpoint loading, user errors, process setup.

Every tool (train, generate, sefa, export, project, styleclip, convert, prepare_data, bench) goes
through this module, so that they all behave alike:

* Roles have one name everywhere (README "Command-line names"): ``--target`` is the fine-tuned
  generator, ``--source`` the pretrained one, ``--out`` what the tool writes. :func:`add_role` adds
  such a flag with the tool's older spellings as aliases and remembers which spelling the user typed,
  so that a message names the flag as it was written.
* A checkpoint spec (a path, ``builtin:<name>``, whatever ``tf_cartoon.io.store.load`` dispatches on)
  is never pre-checked here: :func:`load_checkpoint` / :func:`load_generator` let the loader decide
  and turn its complaint into a :class:`UsageError` naming the flag
  (``--source: checkpoint not found: x.pt``).
* A source / target pair that does not fit (tf_cartoon.latent.check_pair, the one rule) is an
  :class:`IncompatiblePairError`.
* A tool whose settings are a dataclass (train's TrainConfig, bench's Config) documents each flag once, in
  its field's ``metadata["help"]``: :func:`define_dataclass_flags` generates the absl flags (and --help)
  from the fields, :func:`dataclass_from_flags` reads them back.
* :func:`command` wraps each tool's ``main(argv)``: every user error becomes ONE stderr line
  ``error: ...`` and exit status 2; KeyboardInterrupt exits 130 without a traceback; anything else is
  a bug and keeps its traceback. :func:`run` is each tool's process entry: the process setup the
  tool declares (pooled allocator for generating, malloc arena cap for training; logging), then main.

This module imports neither numpy nor TensorFlow, so flag errors come back before TF starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys

from tf_cartoon.io.errors import CheckpointError

EXIT_USAGE = 2  # a user error: bad flags, files or data (argparse's own status for bad flags)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

ROLES = ("target", "source", "out")


class UsageError(ValueError):
    """A user error (flags, files, data): reported as one ``error: ...`` line with exit status 2.

    A ValueError, so that library callers that catch ValueError keep working."""


class IncompatiblePairError(UsageError):
    """A source and a target generator cannot be used together (layer swapping, shared latents)."""


# Errors that are the user's, wherever in a tool they are raised: flags (UsageError and the tools'
# subclasses of it), checkpoints (the readers' one family) and files (missing, existing, unreadable,
# unwritable: every OSError names the path).
USER_ERRORS = (UsageError, CheckpointError, OSError)


def one_line(e: BaseException | str) -> str:
    """The message on one line (readers' messages may wrap; the terminal shows one ``error:`` line)."""
    return " ".join(str(e).split()) or type(e).__name__


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the tools' error convention: one ``error: ...`` line and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see {self.prog} --help)\n")


def parser(prog: str, doc: str | None) -> ArgumentParser:
    """A tool's parser: ``python -m tf_cartoon.<tool>``, the module docstring as its help text."""
    return ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


class _Spelled(argparse.Action):
    """Stores the value and the option string the user typed (``--ckpt`` or ``--target``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        spellings = dict(getattr(namespace, "_spellings", {}))
        spellings[self.dest] = option_string
        namespace._spellings = spellings


def add_role(p: argparse.ArgumentParser, role: str, *aliases: str, **kwargs) -> argparse.Action:
    """Add ``--<role>`` (target, source or out) with the tool's older spellings as aliases.

    ``flag(args, role)`` then gives the spelling the user typed, for messages."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    kwargs.setdefault("metavar", role.upper())
    return p.add_argument(f"--{role}", *aliases, dest=role, action=_Spelled, **kwargs)


def flag(args: argparse.Namespace, dest: str) -> str:
    """The option string the user gave for ``dest`` (``--ckpt`` for an alias), else ``--<dest>``."""
    return getattr(args, "_spellings", {}).get(dest) or f"--{dest}"


def add_truncation(p: argparse.ArgumentParser, default: float = 0.7) -> None:
    """``--truncation`` (psi; each generator truncates toward its own mean latent) and ``--truncation_samples``
    (the z behind each mean latent), as every tool that renders seeds takes them."""
    p.add_argument("--truncation", type=float, default=default, help=f"truncation psi (1 = none; default {default:g})")
    p.add_argument("--truncation_samples", type=int, default=4096, help="z samples behind each mean latent")


def check_finite(args: argparse.Namespace, *dests: str) -> None:
    """Each float flag in ``dests`` is finite (not nan or inf), else ValueError naming it."""
    for dest in dests:
        value = getattr(args, dest)
        if not math.isfinite(value):
            raise ValueError(f"{flag(args, dest)} must be finite, got {value}")


def check_at_least(args: argparse.Namespace, minimum, *dests: str) -> None:
    """Each numeric flag in ``dests`` is >= ``minimum``, else ValueError naming it (``--batch must be >= 1``)."""
    for dest in dests:
        value = getattr(args, dest)
        if value < minimum:
            raise ValueError(f"{flag(args, dest)} must be >= {minimum}, got {value}")


def add_video(p: argparse.ArgumentParser, what: str, frames: int | None, frames_help: str = "") -> None:
    """``--video`` (``what``: the MP4 it writes; H.264 through imageio-ffmpeg, else a GIF), ``--frame_ms``,
    and with ``frames`` also ``--video_frames`` (its default; ``frames_help`` says what they span)."""
    p.add_argument("--video", action="store_true", help=f"also {what} (needs imageio-ffmpeg, else GIF)")
    if frames is not None:
        p.add_argument("--video_frames", type=int, default=frames, help=f"video frames {frames_help} (default "
                                                                         f"{frames})")
    p.add_argument("--frame_ms", type=int, default=40, help="video frame duration in milliseconds")


def add_precision(p: argparse.ArgumentParser, default: str = "auto") -> argparse.Action:
    """``--precision fp32|bf16|auto`` of the networks' compute (tf_cartoon.precision; auto: bf16 on a CPU with
    native bfloat16, else fp32)."""
    return p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=default,
                          help=f"compute precision: fp32, bf16 (bfloat16 compute, float32 weights; fast on CPUs "
                               f"with AVX512_BF16 / AMX) or auto (bf16 where the CPU has it; default {default})")


def add_quiet(p: argparse.ArgumentParser) -> argparse.Action:
    """``--quiet``: no progress lines (tf_cartoon.progress); results, warnings and errors still print."""
    return p.add_argument("--quiet", "-q", action="store_true",
                          help="no progress lines on stderr (results, warnings and errors still print)")


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def _concrete_precision(requested: str, flag_name: str) -> str:
    from tf_cartoon import precision

    try:
        return precision.resolve(requested)
    except ValueError as e:
        raise UsageError(f"{flag_name} {e}") from None


def resolve_precision(requested: str, flag_name: str = "--precision") -> str:
    """``requested`` (fp32 / bf16 / fp16 / auto) as the concrete precision the networks compute in
    (tf_cartoon.precision.resolve, auto: bf16 on a CPU with native bfloat16 and no GPU); logged at INFO."""
    concrete = _concrete_precision(requested, flag_name)
    logging.getLogger(__name__).info("networks compute in %s (%s %s)", concrete, flag_name, requested)
    return concrete


def load_checkpoint(spec, flag_name: str, models=("g_ema", "g", "d"), fused_modconv: bool = False,
                    precision: str = "fp32"):
    """``tf_cartoon.io.store.load(spec)``, its complaints as a UsageError naming ``flag_name``.

    precision: the networks' compute precision (fp32 / bf16 / fp16 / auto, :func:`resolve_precision`): they are
    built inside ``tf_cartoon.precision.policy`` (variables stay float32; layers compute in that dtype).
    Nothing is checked here first (not even that the path exists): the loader knows every spec it
    accepts (paths, ``builtin:<name>``, the formats its dispatch reads)."""
    from tf_cartoon import precision as precisions
    from tf_cartoon.io import store

    concrete = _concrete_precision(precision, "--precision")
    try:
        with precisions.policy(concrete):
            return store.load(spec, models=models, fused_modconv=fused_modconv)
    except (CheckpointError, OSError, ValueError) as e:
        # The readers report a bad file as a CheckpointError, a missing one as FileNotFoundError, and some
        # older checks (a directory of neither format, bad JSON) as a plain ValueError: all are about the
        # file the user named.
        raise UsageError(f"{flag_name}: {one_line(e)}") from e


def load_generator(spec, flag_name: str, fused_modconv: bool = False, precision: str = "fp32"):
    """The ``g_ema`` generator of a checkpoint spec, computing in ``precision`` (see :func:`load_checkpoint`)."""
    g = load_checkpoint(spec, flag_name, models=("g_ema",), fused_modconv=fused_modconv, precision=precision).g_ema
    if g is None:
        raise UsageError(f"{flag_name}: {spec} holds no g_ema generator")
    return g


def checkpoint_record(spec: str) -> str:
    """A checkpoint spec as a tool's records (metadata, settings) keep it: a path made absolute,
    ``builtin:<name>`` as it is."""
    from tf_cartoon import assets

    return spec if assets.is_builtin(spec) else os.path.abspath(spec)


# ---------------------------------------------------------------------------
# Errors and process setup
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def user_input():
    """Inside, ValueError and OSError are the user's: a tool's flag / file validation phase, whose
    checks (seed ranges, photo files, ...) raise plain ValueErrors. Outside it, a plain ValueError is
    a bug and keeps its traceback."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from e


def report(e: BaseException | str) -> None:
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)


_SETUP_DONE: set = set()
SETUPS = ("generate", "train", "none")


def setup_process(kind: str = "generate") -> None:
    """What a tool's process needs before TensorFlow runs anything, once per process.

    ``generate``: TF's pooled (BFC) CPU allocator (tf_cartoon.use_pooled_cpu_allocator: no page faults
    per forward pass); ``train``: the malloc arena cap (tf_cartoon.limit_malloc_arenas: lower peak RSS);
    ``none``: neither. Each also sends INFO logging to stderr (stdout stays for results)."""
    if kind not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {kind!r}")
    if kind in _SETUP_DONE:
        return
    _SETUP_DONE.add(kind)
    import tf_cartoon

    if kind == "generate":
        tf_cartoon.use_pooled_cpu_allocator()
    elif kind == "train":
        tf_cartoon.limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


def command(setup: str = "generate"):
    """Decorator of a tool's ``main(argv=None) -> int``: user errors as one line + status 2.

    ``setup`` names the process setup the tool wants (:func:`setup_process`); :func:`run`, the tool's
    process entry, applies it before calling ``main``. A direct ``main(argv)`` call (tests, notebooks)
    leaves the host process's allocator and logging alone: they are the host's to choose.
    argparse's own errors already exit 2 through :class:`ArgumentParser` (a SystemExit passes through)."""
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")

    def wrap(main):
        @functools.wraps(main)
        def run_main(argv=None) -> int:
            try:
                return main(argv)
            except USER_ERRORS as e:
                report(e)
                return EXIT_USAGE
            except KeyboardInterrupt:
                print(file=sys.stderr)  # end the line ^C left
                return EXIT_INTERRUPTED
        run_main.setup = setup
        return run_main
    return wrap


def run(main, argv=None) -> None:
    """The ``if __name__ == "__main__"`` line of every tool: the tool's process setup (before TensorFlow runs
    anything), then ``sys.exit(main(argv))``."""
    setup_process(getattr(main, "setup", "none"))
    try:
        sys.exit(main(argv))
    except KeyboardInterrupt:  # outside main's own handler (e.g. while Python imports TensorFlow)
        sys.exit(EXIT_INTERRUPTED)


def define_dataclass_flags(config_class, flag_values, module_name: str, choices: dict | None = None) -> None:
    """One absl flag per field of the dataclass ``config_class`` in ``flag_values``: the field's name and default,
    its help ``field.metadata["help"]`` (the one place the flag is documented), its type from the default
    (bool, int, float, else string; ``choices[name]``: an enum of those values). --help lists them under
    ``module_name`` (the tool's)."""
    from absl import flags

    for f in dataclasses.fields(config_class):
        name, default = f.name, f.default
        kw = dict(help=f.metadata["help"], flag_values=flag_values, module_name=module_name)
        if choices and name in choices:
            flags.DEFINE_enum(name, default, list(choices[name]), **kw)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, **kw)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, **kw)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, **kw)
        else:
            flags.DEFINE_string(name, default, **kw)


def dataclass_from_flags(config_class, flag_values):
    """The ``config_class`` instance of the parsed flags :func:`define_dataclass_flags` defined."""
    return config_class(**{f.name: flag_values[f.name].value for f in dataclasses.fields(config_class)})
