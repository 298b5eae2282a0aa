"""Image helpers shared by the command-line tools: uint8 conversion, grids, PNG, animations, seed lists.

Numpy and Pillow only (no TensorFlow), so importing this module is cheap. Animations (interpolations,
SeFa and StyleCLIP sweeps, a projection's progress) all go through :func:`save_animation`: GIF, or with
``video=True`` an H.264 MP4 through the ffmpeg binary the ``imageio-ffmpeg`` package ships (optional extra
``[video]``; without it the GIF is written and one line says so).

    rows = [source_images, target_images]            # each [N, H, W, 3], float in [-1, 1]
    save_png("grid.png", make_grid(rows, pad=2))     # one batch per row
    parse_seeds("0-3,7")                             # [0, 1, 2, 3, 7]
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

MAX_SEED = 2 ** 32 - 1  # np.random.RandomState accepts 0 .. 2**32 - 1
MAX_ITEMS = 1_000_000  # longest list parse_range expands


def to_uint8(images) -> np.ndarray:
    """Generator output in about [-1, 1] (any shape, e.g. NHWC) -> uint8.

    ``clip((x + 1) * 127.5 + 0.5, 0, 255)`` truncated, i.e. rounded to nearest.
    uint8 input is returned unchanged.
    """
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32, copy=False)
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def make_grid(rows, pad: int = 0, pad_value: int = 0) -> np.ndarray:
    """List of image batches -> one HWC uint8 image, one batch per row.

    rows: list of [N, H, W, 3] batches (float in [-1, 1] or uint8; a single
      [H, W, 3] image counts as a batch of one). All images share H and W.
      Rows may hold different counts; short rows are filled with ``pad_value``.
    pad: pixels between cells and around the border (as torchvision's make_grid).
    The result is ``R*H + (R+1)*pad`` by ``C*W + (C+1)*pad`` with C the longest row.
    """
    if isinstance(rows, np.ndarray) and rows.ndim == 4:
        rows = [rows]
    rows = [to_uint8(r) for r in rows]
    rows = [r[None] if r.ndim == 3 else r for r in rows]
    if not rows or any(r.ndim != 4 or r.shape[-1] != 3 for r in rows):
        raise ValueError(f"make_grid expects a non-empty list of [N, H, W, 3] batches, got shapes "
                         f"{[r.shape for r in rows]}")
    h, w = rows[0].shape[1:3]
    if any(r.shape[1:3] != (h, w) for r in rows):
        raise ValueError(f"all grid images must be {h}x{w}, got shapes {[r.shape for r in rows]}")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    grid = np.full((n_rows * h + (n_rows + 1) * pad, n_cols * w + (n_cols + 1) * pad, 3), pad_value, np.uint8)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad)
        for j, image in enumerate(row):
            x = pad + j * (w + pad)
            grid[y:y + h, x:x + w] = image
    return grid


def _default_mode(path) -> None:
    """Give a temporary file (mkstemp: 0600) the mode a plain ``open(path, "w")`` would have (0666 less
    the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` to write; renamed into place when the block ends without an
    exception (with the mode a plain ``open`` gives), removed otherwise: a reader never sees half a file,
    and a failed write leaves the old one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(path, save) -> str:
    """Write ``path`` through ``save(file)`` (a binary file) atomically (:func:`atomic_path`). Returns the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        save(f)
    return os.fspath(path)


def _hwc(image) -> np.ndarray:
    image = to_uint8(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected one HWC image with 1, 3 or 4 channels, got shape {image.shape}")
    return image[..., 0] if image.shape[-1] == 1 else image


_atomic_save = atomic_save  # the older private name (tf_cartoon.io.safetensors imports it)


def save_png(path, image) -> str:
    """Write one HWC image (uint8, or float in [-1, 1]) as PNG, atomically (temp file + os.replace)."""
    from PIL import Image

    pil = Image.fromarray(_hwc(image))
    return atomic_save(path, lambda f: pil.save(f, format="PNG"))


def save_gif(path, frames, duration_ms: int = 40) -> str:
    """Write frames (HWC uint8 or float in [-1, 1]; a list or a [T, H, W, 3] array) as a GIF looping forever.

    Pillow merges consecutive frames that are pixel-identical (adding up their durations).
    """
    from PIL import Image

    frames = [Image.fromarray(_hwc(f)) for f in frames]
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    duration_ms = int(duration_ms)
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms}")
    return atomic_save(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                        duration=duration_ms, loop=0))


def _frame_array(frames) -> np.ndarray:
    """Frames (a list or a [T, H, W, 3] array, uint8 or float in [-1, 1]) -> [T, H, W, 3] uint8."""
    frames = [_hwc(f) for f in frames]
    if not frames:
        raise ValueError("an animation needs at least one frame")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1 or frames[0].ndim != 3 or frames[0].shape[-1] != 3:
        raise ValueError(f"animation frames must all be [H, W, 3] of one size, got shapes {sorted(shapes)}")
    return np.stack(frames)


def ffmpeg_exe() -> str | None:
    """The ffmpeg binary that ``imageio-ffmpeg`` ships (``IMAGEIO_FFMPEG_EXE`` overrides it), or None
    when the package is not installed or holds no binary for this platform."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # its "no ffmpeg exe could be found" (a source install on another platform)
        return None


def even_size(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] padded by one repeated edge row / column where H or W is odd (yuv420p's 2x2 chroma
    blocks need even sizes)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def save_mp4(path, frames, duration_ms: int = 40, exe: str | None = None, crf: int = 18) -> str:
    """Write frames as an H.264 MP4 (yuv420p, which every player decodes; odd sizes padded to even by
    :func:`even_size`), atomically. ``exe``: an ffmpeg binary (default: :func:`ffmpeg_exe`).

    The frames go to ffmpeg's stdin as raw RGB; ``crf`` is x264's quality (18: visually lossless)."""
    frames = even_size(_frame_array(frames))
    duration_ms = int(duration_ms)
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms}")
    exe = exe or ffmpeg_exe()
    if exe is None:
        raise RuntimeError("writing MP4 needs the imageio-ffmpeg package (pip install 'tf_cartoon[video]')")
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        _run_ffmpeg(exe, frames, duration_ms, crf, tmp, path)
    return path


def _run_ffmpeg(exe: str, frames: np.ndarray, duration_ms: int, crf: int, tmp: str, path: str) -> None:
    """Pipe ``frames`` [T, H, W, 3] uint8 into an x264 encode to ``tmp``; OSError with ffmpeg's message."""
    h, w = frames.shape[1:3]
    cmd = [exe, "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-framerate", f"1000/{duration_ms}", "-i", "pipe:0", "-an", "-c:v", "libx264", "-preset", "medium",
           "-crf", str(int(crf)), "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", tmp]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg's messages cannot block it
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for frame in frames:  # one frame at a time: no second copy of the whole clip in memory
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its status and message below say why
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            status = proc.wait()
        if status != 0:
            err.seek(0)
            message = " ".join(err.read().decode(errors="replace").split())[-400:]
            raise OSError(f"cannot write {path}: ffmpeg exited with status {status}: {message}")


def save_animation(path, frames, duration_ms: int = 40, video: bool = False, bounce: bool = False,
                   stream=None) -> str:
    """The one writer of animations: ``path`` without its extension + ``.gif``, or with ``video`` ``.mp4``
    (:func:`save_mp4`). Without imageio-ffmpeg a video request writes the GIF and says so in one line on
    ``stream`` (stderr). ``bounce``: the frames forward, then back without repeating either end (a sweep
    that loops smoothly). Returns the path written."""
    stem = os.path.splitext(os.fspath(path))[0]
    if bounce:
        frames = list(frames)
        frames = frames + frames[-2:0:-1]
    if video:
        exe = ffmpeg_exe()
        if exe is not None:
            return save_mp4(stem + ".mp4", frames, duration_ms, exe=exe)
        print(f"warning: imageio-ffmpeg is not installed or has no ffmpeg for this platform (pip install "
              f"'tf_cartoon[video]'); writing {stem}.gif instead of an MP4",
              file=stream if stream is not None else sys.stderr, flush=True)
    return save_gif(stem + ".gif", frames, duration_ms)


_ITEM = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")


def parse_range(text, what: str = "values", lo: int | None = None, hi: int | None = None) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (inclusive ranges, order kept); ints / lists pass through.

    Raises ValueError naming ``what`` on empty input, a malformed item, a reversed
    range or a value outside ``lo..hi``.
    """
    if isinstance(text, (int, np.integer)):
        values = [int(text)]
    elif isinstance(text, (list, tuple)):
        values = [int(v) for v in text]
    else:
        text = str(text)
        if not text.strip():
            raise ValueError(f"empty {what} list: expected e.g. '0-3,7'")
        values = []
        for item in text.split(","):
            m = _ITEM.match(item)
            if not m:
                raise ValueError(f"bad {what} {text!r}: {item.strip()!r} is not an integer or a range a-b "
                                 "(expected e.g. '0-3,7')")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise ValueError(f"bad {what} {text!r}: range {a}-{b} runs backwards")
            if len(values) + b - a + 1 > MAX_ITEMS:
                raise ValueError(f"bad {what} {text!r}: more than {MAX_ITEMS} values")
            values.extend(range(a, b + 1))
    if not values:
        raise ValueError(f"empty {what} list")
    for v in values:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ValueError(f"{what} must be in {bounds}, got {v}")
    return values


def parse_seeds(text) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``; seeds must be in 0..2**32-1 (np.random.RandomState's range)."""
    return parse_range(text, "seeds", 0, MAX_SEED)
