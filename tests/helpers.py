"""Paths and small helpers the test modules share (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The reference fixtures committed with the repository: tests that need "a reference-format checkpoint"
# (rather than every case of $TF_CARTOON_REFERENCE_DIR) read these, so they behave the same everywhere.
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "reference")
REFERENCE_PT = os.path.join(FIXTURES, "tiny32.pt")
REFERENCE_TARGET_PT = os.path.join(FIXTURES, "tiny32_target.pt")
REFERENCE_JSON = os.path.join(FIXTURES, "tiny32.json")


def subprocess_env(**extra) -> dict:
    """os.environ with the repository first on PYTHONPATH, so a child interpreter imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def served_uint8(images) -> np.ndarray:
    """The documented image convention, in numpy: clip((x + 1) * 127.5 + 0.5, 0, 255), truncated; uint8 passes."""
    x = np.asarray(images)
    return x if x.dtype == np.uint8 else np.clip((x.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def one_line_error(capsys) -> str:
    """The stderr of a command-line tool that failed: one line starting with ``error:``."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def tool_lines(err: str) -> list[str]:
    """A tool's own stderr lines: TensorFlow's log lines (retracing warnings and the like, which depend on
    what ran before in the process) left out."""
    return [line for line in err.splitlines()
            if not re.match(r"(WARNING:tensorflow|WARNING:absl|[IWE]\d{4} )", line)]


def decode_mp4(path, exe=None):
    """(frames [T, H, W, 3] uint8, frame rate) decoded by ffmpeg itself: the size and rate from its stream
    description, the pixels as raw RGB on stdout. ``exe``: the ffmpeg binary (default: imageio-ffmpeg's)."""
    if exe is None:
        from tf_cartoon.images import ffmpeg_exe

        exe = ffmpeg_exe()
    info = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True)
    stream = next(line for line in info.stderr.splitlines() if "Video:" in line)
    w, h = map(int, re.search(r", (\d+)x(\d+)\b", stream).groups())  # not the codec tag 0x31637661
    fps = float(re.search(r"([\d.]+) fps", stream).group(1))
    assert "h264" in stream and "yuv420p" in stream, stream
    raw = subprocess.run([exe, "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    assert len(raw) % (w * h * 3) == 0
    return np.frombuffer(raw, np.uint8).reshape([-1, h, w, 3]), fps


def _summary_values(logdir):
    """(step, summary value) of every event in a TensorBoard log directory."""
    import glob

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            for v in event.summary.value:
                yield event.step, v


def event_tags(logdir):
    """{tag: [steps]} of the scalars, and the plugin names, in a TensorBoard log directory."""
    tags, plugins = {}, set()
    for step, v in _summary_values(logdir):
        plugins.add(v.metadata.plugin_data.plugin_name)
        tags.setdefault(v.tag, []).append(step)
    return tags, plugins


def event_scalars(logdir) -> dict:
    """{tag: {step: value}} of the scalar summaries in a TensorBoard log directory."""
    import tensorflow as tf

    out = {}
    for step, v in _summary_values(logdir):
        if v.metadata.plugin_data.plugin_name == "scalars":
            out.setdefault(v.tag, {})[step] = float(tf.make_ndarray(v.tensor))
    return out
