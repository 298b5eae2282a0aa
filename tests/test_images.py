"""tf_cartoon.images' animations: MP4 through imageio-ffmpeg's ffmpeg (decoded back with the same binary), the GIF
fallback without it, file modes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tf_cartoon import images
from tests.helpers import decode_mp4


def moving_frames(n=12, h=48, w=64):
    """Smooth content (a colour ramp and a square that moves): what the codec keeps well."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        f = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 20 * t % 256)], -1).astype(np.uint8)
        f[8:24, 4 + 3 * t:20 + 3 * t] = (250, 250, 30)
        out.append(f)
    return np.stack(out)


@pytest.fixture(scope="module")
def ffmpeg():
    pytest.importorskip("imageio_ffmpeg")  # the [video] extra (in [test], so CI runs these)
    return images.ffmpeg_exe()


def test_mp4_decodes_back(ffmpeg, tmp_path):
    frames = moving_frames()
    path = images.save_mp4(tmp_path / "walk.mp4", frames, duration_ms=40)
    decoded, fps = decode_mp4(path, ffmpeg)
    assert decoded.shape == frames.shape and fps == pytest.approx(25.0)
    # Per frame and channel, the mean colour survives H.264 (crf 18) and yuv420p's chroma subsampling.
    mean_in, mean_out = frames.mean(axis=(1, 2)), decoded.astype(np.float64).mean(axis=(1, 2))
    assert np.abs(mean_in - mean_out).max() < 2.0, np.abs(mean_in - mean_out).max()
    # and each frame is that frame (the square moves: a frame compared with its neighbour differs more)
    err = np.abs(decoded.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    shifted = np.abs(decoded[1:].astype(int) - frames[:-1].astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 6.0 and (shifted > 2 * err[1:]).all()  # err 1.7..4 (sharp edges), shifted ~11
    assert sorted(os.listdir(tmp_path)) == ["walk.mp4"]  # no temp file left
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_mp4_odd_size_is_padded_to_even(ffmpeg, tmp_path):
    frames = moving_frames(n=3, h=33, w=47)
    decoded, _ = decode_mp4(images.save_mp4(tmp_path / "odd.mp4", frames, duration_ms=100), ffmpeg)
    assert decoded.shape == (3, 34, 48, 3)
    padded = images.even_size(frames)
    np.testing.assert_array_equal(padded[:, -1, :47], frames[:, -1])  # the edge row and column repeated
    np.testing.assert_array_equal(padded[:, :33, -1], frames[:, :, -1])
    assert np.abs(decoded[:, :33, :47].astype(float).mean((1, 2)) - frames.mean((1, 2))).max() < 2.0


def test_save_animation_writes_mp4_or_gif(ffmpeg, tmp_path):
    frames = moving_frames(n=4)
    assert images.save_animation(tmp_path / "a.gif", frames, 50, video=True) == str(tmp_path / "a.mp4")
    assert images.save_animation(tmp_path / "b", frames, 50) == str(tmp_path / "b.gif")
    with Image.open(tmp_path / "b.gif") as im:
        assert im.n_frames == 4 and im.info["duration"] == 50


def test_bounce_walks_back_without_repeating_the_ends(ffmpeg, tmp_path):
    frames = moving_frames(n=4)
    decoded, _ = decode_mp4(images.save_animation(tmp_path / "s", frames, 40, video=True, bounce=True), ffmpeg)
    assert len(decoded) == 6  # 0 1 2 3 2 1
    means = decoded.astype(float).mean((1, 2))
    for k, j in enumerate([0, 1, 2, 3, 2, 1]):
        assert np.abs(means[k] - frames[j].mean((0, 1))).max() < 2.0


def test_save_animation_falls_back_to_gif_without_imageio_ffmpeg(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(images, "ffmpeg_exe", lambda: None)
    path = images.save_animation(tmp_path / "walk.mp4", moving_frames(n=3), 40, video=True)
    assert path == str(tmp_path / "walk.gif") and os.listdir(tmp_path) == ["walk.gif"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "imageio-ffmpeg is not installed" in err and "[video]" in err and "walk.gif" in err


def test_mp4_errors(ffmpeg, tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        images.save_mp4(tmp_path / "e.mp4", [])
    with pytest.raises(ValueError, match="one size"):
        images.save_mp4(tmp_path / "e.mp4", [np.zeros((4, 4, 3), np.uint8), np.zeros((6, 4, 3), np.uint8)])
    with pytest.raises(OSError, match="ffmpeg exited"):  # an ffmpeg that fails: its message, no file left
        images.save_mp4(tmp_path / "e.mp4", moving_frames(n=2), exe=_failing_ffmpeg(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".e.mp4")]


def _failing_ffmpeg(tmp_path):
    path = tmp_path / "fake-ffmpeg"
    path.write_text("#!/bin/sh\necho 'Unknown encoder libx264' >&2\nexit 1\n")
    path.chmod(0o755)
    return str(path)
