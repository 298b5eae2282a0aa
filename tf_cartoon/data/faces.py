"""Two synthetic face domains that share their structure: ``synthetic:faces`` and ``synthetic:cartoon``.

The built-in CPU demo fine-tunes a generator trained on photo-like faces into a cartoon one; these two
domains make it possible to SEE whether the structure (position, pose, expression, hair style) survives.

    params = sample_face_params(np.random.default_rng(seed), n)   # dict of per-face arrays, length n
    photo = render_faces(params, size)       # uint8 [n, size, size, 3], shaded, textured, soft
    toon = render_cartoon(params, size)      # uint8 [n, size, size, 3], flat colours + dark outlines
    mask = face_mask(params, size)           # bool  [n, size, size], the head (egg) shared by both

``synthetic:faces`` (``faces(seed, n, size)``) and ``synthetic:cartoon`` (``cartoon(seed, n, size)``) are
``render_*(sample_face_params(np.random.default_rng(seed), n), size)``, so image ``i`` of the same seed is
the same face (head centre / scale / tilt / yaw, hair style, mouth type, brows, ...) in both domains.

Structural parameters (``sample_face_params``; coordinates are in units of the image side, face-frame
lengths in units of the head half-height ``ry``):
  cx, cy, ry          head centre and half-height; ``aspect`` (head width / height), ``jaw`` (chin narrowing)
  yaw                 horizontal offset of the features (a turned head), in ry
  tilt                roll angle in radians (small, |tilt| <= 0.25)
  skin_tone / skin    index into SKIN_TONES (light .. dark) / RGB (jittered)
  hair_style          index into HAIR_STYLES (short, long, bob, buzz, bangs, afro); ``hair_part``,
                      ``hair_len``; hair_colour / hair: index into HAIR_COLOURS / RGB
  eye_y, eye_sep      eye height and half distance between the eyes; eye_w / eye_h (half width / height)
  iris_colour / iris  index into IRIS_COLOURS / RGB; ``gaze`` (horizontal iris offset, -0.5..0.5)
  brow_shape          index into BROW_SHAPES (straight, arched, angled); brow_angle (radians, + = inner
                      end raised), brow_gap, brow_thick
  nose_len, nose_w    nose length / half width
  mouth_type          index into MOUTH_TYPES (neutral, smile, open); mouth_w (half width), mouth_y, lip RGB
  bg_type             index into BG_TYPES (vertical, radial, diagonal, blotchy); bg0 / bg1 RGB, bg_noise
  light               unit vector towards the light (x right, y down, z towards the viewer)
  shirt               RGB of the clothes; tex_seed (uint32, the photo textures' grain)

How (numpy + PIL only, no TensorFlow): shapes are PIL polygons / ellipses drawn supersampled
(``_supersample``: 4x at 32 px, 2x from 64 px up) and box-downsampled. The cartoon is just that (each outlined
shape is a dilated dark polygon under the fill). The photo draws flat colours with a coverage band, then
lights a height field (the head as a dome, eye sockets / nose / cheeks / lips / chin as bumps, the rest of
the person rounded from its blurred silhouette) from ``light`` (diffuse + specular), adds a chin shadow,
hair strands (or curls), a textured background with the person's soft drop shadow, a mild blur and grain;
the smooth fields are computed at <= 64 px (``_shade_res``) and upsampled, vectorised over chunks of the
batch. No BLAS calls above tiny sizes (multithreaded small gemms crawl on busy machines). Measure with
``python -m tf_cartoon.data.faces --bench`` (one thread).

``python -m tf_cartoon.data.faces --domain faces|cartoon --size 64 --n 64 --seed 0 --out DIR`` writes the
images as PNGs plus ``grid.png``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from tf_cartoon.data.synthetic import register_synthetic

__all__ = ["sample_face_params", "render_faces", "render_cartoon", "face_mask", "faces", "cartoon",
           "subset_params", "save_grid", "SKIN_TONES", "HAIR_COLOURS", "IRIS_COLOURS", "HAIR_STYLES",
           "MOUTH_TYPES", "BROW_SHAPES", "BG_TYPES"]

SKIN_TONES = np.array([[252, 224, 204], [238, 192, 164], [222, 168, 128], [196, 138, 96], [150, 98, 66],
                       [102, 66, 46]], np.float32)
HAIR_COLOURS = np.array([[30, 26, 26], [66, 42, 30], [118, 78, 44], [216, 178, 110], [168, 70, 34],
                         [168, 166, 164]], np.float32)  # black, dark brown, brown, blond, red, grey
IRIS_COLOURS = np.array([[66, 40, 24], [112, 70, 36], [120, 100, 50], [66, 118, 72], [64, 116, 184],
                         [118, 134, 146]], np.float32)  # dark brown, brown, hazel, green, blue, grey
HAIR_STYLES = ("short", "long", "bob", "buzz", "bangs", "afro")
MOUTH_TYPES = ("neutral", "smile", "open")
BROW_SHAPES = ("straight", "arched", "angled")
BG_TYPES = ("vertical", "radial", "diagonal", "blotchy")

_SHORT, _LONG, _BOB, _BUZZ, _BANGS, _AFRO = range(6)
_NEUTRAL, _SMILE, _OPEN = range(3)
_CHUNK_PIXELS = 32768  # images per post-processing chunk: this many pixels
_SHADE_RES = 64  # the photo's smooth shading fields are computed at most at this resolution
_BG_GRID = 5  # low-frequency background noise grid (per image, per channel)


# ------------------------------------------------------------------------------------------------ params
def sample_face_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-face structural parameters shared by ``render_faces`` and ``render_cartoon`` (see module doc).

    Every value is a numpy array with leading dimension ``n``; draws are deterministic given ``rng``.
    """
    n = int(n)
    u = lambda lo, hi, *shape: rng.uniform(lo, hi, (n, *shape)).astype(np.float32)  # noqa: E731
    p: dict[str, np.ndarray] = {}
    p["cx"] = u(0.40, 0.60)
    p["cy"] = u(0.40, 0.50)
    p["ry"] = u(0.22, 0.285)
    p["aspect"] = u(0.72, 0.86)
    p["jaw"] = u(0.08, 0.22)
    p["yaw"] = u(-0.16, 0.16)
    p["tilt"] = np.clip(rng.normal(0.0, 0.11, n), -0.25, 0.25).astype(np.float32)
    p["skin_tone"] = rng.integers(0, len(SKIN_TONES), n)
    p["skin"] = np.clip(SKIN_TONES[p["skin_tone"]] * u(0.95, 1.04, 1) + u(-6, 6, 3), 0, 255)
    p["hair_style"] = rng.integers(0, len(HAIR_STYLES), n)
    p["hair_colour"] = rng.integers(0, len(HAIR_COLOURS), n)
    p["hair"] = np.clip(HAIR_COLOURS[p["hair_colour"]] * u(0.85, 1.12, 1) + u(-8, 8, 3), 0, 255)
    p["hair_part"] = u(-0.35, 0.35)
    p["hair_len"] = u(0.0, 1.0)
    p["eye_y"] = u(-0.08, 0.04)
    p["eye_sep"] = u(0.29, 0.35)
    p["eye_w"] = u(0.12, 0.15)
    p["eye_h"] = p["eye_w"] * u(0.5, 0.62)
    p["iris_colour"] = rng.integers(0, len(IRIS_COLOURS), n)
    p["iris"] = np.clip(IRIS_COLOURS[p["iris_colour"]] + u(-10, 10, 3), 0, 255)
    p["gaze"] = u(-0.5, 0.5)
    p["brow_shape"] = rng.integers(0, len(BROW_SHAPES), n)
    p["brow_angle"] = u(-0.30, 0.30)
    p["brow_gap"] = u(0.06, 0.11)
    p["brow_thick"] = u(0.035, 0.06)
    p["nose_len"] = u(0.24, 0.36)
    p["nose_w"] = u(0.07, 0.10)
    p["mouth_type"] = rng.integers(0, len(MOUTH_TYPES), n)
    p["mouth_w"] = u(0.17, 0.26)
    p["mouth_y"] = np.maximum(u(0.50, 0.60), p["eye_y"] + p["nose_len"] + 0.14)
    p["lip"] = np.clip(p["skin"] * np.array([0.86, 0.62, 0.62], np.float32) + np.array([14, 0, 4], np.float32)
                       + u(-8, 8, 1), 0, 255)
    p["bg_type"] = rng.integers(0, len(BG_TYPES), n)
    grey = u(60, 220, 1)
    p["bg0"] = np.clip(grey + u(-70, 70, 3), 10, 245)
    p["bg1"] = np.clip(p["bg0"] * u(0.45, 1.0, 1) + u(-40, 40, 3), 5, 250)
    p["bg_noise"] = rng.standard_normal((n, _BG_GRID, _BG_GRID, 3)).astype(np.float32)
    lx, ly, lz = u(-0.75, 0.75), u(-0.85, 0.15), u(0.45, 0.9)
    norm = np.sqrt(lx * lx + ly * ly + lz * lz)
    p["light"] = np.stack([lx, ly, lz], 1) / norm[:, None]
    p["shirt"] = np.clip(u(30, 220, 1) + u(-90, 90, 3), 15, 240)
    p["tex_seed"] = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    return p


def subset_params(params: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    """The faces ``index`` (an int, slice or index array) of ``params``."""
    if isinstance(index, (int, np.integer)):
        index = [int(index)]
    return {k: np.asarray(v)[index] for k, v in params.items()}


def _n(params) -> int:
    return int(np.asarray(params["cx"]).shape[0])


# ---------------------------------------------------------------------------------------------- geometry
def _supersample(size: int) -> int:
    return int(min(8, max(2, math.ceil(128 / size))))


@functools.lru_cache(maxsize=None)
def _unit_circle(k: int, start: float = 0.0, stop: float = 2 * math.pi, endpoint: bool = False):
    t = np.linspace(start, stop, k, endpoint=endpoint, dtype=np.float32)
    return _frozen(np.cos(t)), _frozen(np.sin(t))


def _frozen(a: np.ndarray) -> np.ndarray:
    """Cached arrays are shared between threads (tf.data calls domains in parallel): make them read-only."""
    a.setflags(write=False)
    return a


def _col(a) -> np.ndarray:
    return np.asarray(a, np.float32)[:, None]


def _stackxy(x, y) -> np.ndarray:
    x, y = np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(y, np.float32))
    return np.stack([x, y], -1)


def _ellipse(cx, cy, a, b, k=24):
    """(n, k, 2) points of axis-aligned ellipses (face frame); cx/cy/a/b broadcast to (n, 1)."""
    c, s = _unit_circle(k)
    return _stackxy(cx + a * c, cy + b * s)


def _head_outline(p, k=44, scale=1.0, dy=0.0):
    """The egg-shaped head: rx = aspect, ry = 1, the lower half narrowed by ``jaw`` (face frame)."""
    c, s = _unit_circle(k)
    rx = _col(p["aspect"]) * scale
    jaw = _col(p["jaw"])
    return _stackxy(rx * c * (1.0 - jaw * np.maximum(s, 0) ** 2), dy + scale * s)


def _to_px(p, pts, canvas):
    """Face frame (units of ry, origin at the head centre, unrotated) -> canvas pixels (n, k, 2)."""
    th = np.asarray(p["tilt"], np.float32)
    c, s = np.cos(th)[:, None], np.sin(th)[:, None]
    ry = _col(p["ry"])
    x, y = pts[..., 0], pts[..., 1]
    return np.stack([(_col(p["cx"]) + ry * (x * c - y * s)) * canvas,
                     (_col(p["cy"]) + ry * (x * s + y * c)) * canvas], -1)


def _bezier(p0, p1, p2, k):
    """Quadratic Bezier curves; p* are (n, 2) -> (n, k, 2)."""
    t = np.linspace(0.0, 1.0, k, dtype=np.float32)[None, :, None]
    return (1 - t) ** 2 * p0[:, None] + 2 * t * (1 - t) * p1[:, None] + t * t * p2[:, None]


class _HairFrame:
    """The per-face columns (n, 1) the hair polygons are built from, and their curve primitives (face frame)."""

    def __init__(self, p):
        self.rx = _col(p["aspect"])
        self.part = _col(p["hair_part"])
        self.hl = _col(p["hair_len"])
        self.ph = (np.asarray(p["tex_seed"], np.float32) % 997.0 / 997.0 * 6.2832)[:, None]  # the wobbles' phase
        self.z = np.zeros((_n(p), 1), np.float32)

    def arc(self, sx, sy, cy, t0, t1, k, bumps=0.0, freq=11.0):
        """k points of the ellipse (sx * rx, sy) around (0, cy) from angle t0 to t1, wobbling by ``bumps``."""
        t = np.linspace(t0, t1, k, dtype=np.float32)[None, :]
        wob = 1.0 + bumps * np.sin(freq * t + self.ph)
        return _stackxy(sx * self.rx * np.cos(t) * wob, cy + sy * np.sin(t) * wob)

    def hairline(self, temple_x, temple_y, mid_y, k=11):
        """Right temple -> left temple through the parting (quadratic Bezier reaching mid_y halfway)."""
        rx, z = self.rx[:, 0], self.z[:, 0]
        t_r = _stackxy(temple_x * rx, temple_y + z)
        t_l = _stackxy(-temple_x * rx, temple_y + z)
        ctrl = _stackxy(self.part[:, 0] * rx, 2.0 * mid_y - temple_y + z)
        return _bezier(t_r, ctrl, t_l, k)

    @staticmethod
    def side(x_of_v, v0, v1, k=6):
        """k points (x_of_v(v), v) for v from v0 to v1."""
        v = np.linspace(0.0, 1.0, k, dtype=np.float32)[None, :] * (v1 - v0) + v0
        return _stackxy(x_of_v(v), v)


def _hair_shapes(p):
    """Face-frame hair polygons per style: dict name -> (n, k, 2), computed for every face (cheap, vectorised);
    ``_STYLE_PARTS`` says which are drawn behind the head (``back_*``) and in front of it (``cap_*``)."""
    fr = _HairFrame(p)
    out = _cropped_hair(fr, p)
    out.update(_curtain_hair(fr))
    out.update(_afro_hair(fr))
    return out


def _cropped_hair(fr: _HairFrame, p) -> dict:
    """short: a tufted cap with sideburns; bangs: a jagged fringe at the brows (both with some volume behind);
    buzz: a thin cap."""
    rx, z, pi = fr.rx, fr.z, math.pi
    out = {"back_short": fr.arc(1.1, 1.14, -0.06, pi - 0.3, 2 * pi + 0.3, 23, 0.03)}
    out["cap_short"] = np.concatenate([
        _stackxy(-0.9 * rx, 0.06 + z), _stackxy(-1.0 * rx, 0.08 + z),
        fr.arc(1.07, 1.12, -0.04, pi - 0.05, 2 * pi + 0.05, 25, 0.025),
        _stackxy(1.0 * rx, 0.08 + z), _stackxy(0.9 * rx, 0.06 + z), fr.hairline(0.9, -0.27, -0.6)], 1)
    brow_y = _col(p["eye_y"]) - _col(p["eye_h"]) - _col(p["brow_gap"]) - 0.06
    m = 13
    xs = np.linspace(0.97, -0.97, m, dtype=np.float32)[None, :]
    fy = brow_y - 0.18 * xs ** 2 - np.where(np.arange(m) % 2 == 1, 0.09, 0.0).astype(np.float32)[None, :]
    out["cap_bangs"] = np.concatenate([
        _stackxy(-1.03 * rx, 0.02 + z), fr.arc(1.09, 1.14, -0.06, pi - 0.05, 2 * pi + 0.05, 25, 0.02),
        _stackxy(1.03 * rx, 0.02 + z), _stackxy(xs * rx, fy)], 1)
    out["cap_buzz"] = np.concatenate([fr.arc(1.02, 1.03, 0.0, pi + 0.3, 2 * pi - 0.3, 21),
                                      fr.hairline(0.92, -0.36, -0.62)], 1)
    return out


def _curtain_hair(fr: _HairFrame) -> dict:
    """long / bob: one curtain over the top and down both sides (the face framed by its inner edge), more
    behind."""
    rx, hl, pi, side = fr.rx, fr.hl, math.pi, fr.side
    out = {}
    top = fr.arc(1.12, 1.16, -0.06, pi, 2 * pi, 21, 0.012, 7.0)
    for name, bot, inner in (
            ("long", 1.3 + 0.6 * hl, lambda v: rx * (0.86 + 0.03 * np.clip(v, 0, 1))),
            ("bob", 0.74 + 0.2 * hl, lambda v: rx * (0.87 - 0.22 * np.clip((v - 0.3) / 0.6, 0, 1)))):
        outer = (lambda v: rx * (1.2 + 0.05 * np.clip(v, 0, 2))) if name == "long" else \
            (lambda v: rx * (1.2 + 0.04 * np.clip(v, 0, 1)))
        left_out = side(lambda v: -outer(v), bot, -0.06)
        right_out = side(outer, -0.06, bot)
        right_in = side(inner, bot - 0.04, -0.3)
        left_in = side(lambda v: -inner(v), -0.3, bot - 0.04)
        out[f"cap_{name}"] = np.concatenate([
            left_out, top, right_out, _stackxy(0.5 * (outer(bot) + inner(bot)), bot + 0.03), right_in[:, :-1],
            fr.hairline(0.86, -0.33, -0.64), left_in[:, 1:], _stackxy(-0.5 * (outer(bot) + inner(bot)), bot + 0.03)],
            1)
        out[f"back_{name}"] = np.concatenate([
            _stackxy(-1.18 * rx, bot - 0.04), fr.arc(1.15, 1.18, -0.06, pi, 2 * pi, 15),
            _stackxy(1.18 * rx, bot - 0.04), _stackxy(0.0 * rx, bot + 0.02)], 1)
    return out


def _afro_hair(fr: _HairFrame) -> dict:
    """afro: a big bumpy cloud behind, a bumpy hairline in front."""
    rx, pi = fr.rx, math.pi
    c, s = _unit_circle(48)
    r = 1.0 + 0.045 * np.sin(11 * np.arctan2(s, c)[None] + fr.ph)
    R = 1.28 + 0.18 * fr.hl
    back = _stackxy(R * 1.12 * rx / 0.8 * r * c, -0.22 + R * r * s)
    xs = np.linspace(0.97, -0.97, 15, dtype=np.float32)[None, :] * rx
    ys = -0.52 + 0.3 * (xs / rx) ** 2 - 0.06 * np.abs(np.sin(np.linspace(0, 7 * pi, 15)))[None, :]
    cap = np.concatenate([_stackxy(-1.1 * rx, fr.z), fr.arc(1.1, 1.21, -0.05, pi, 2 * pi, 21, 0.03, 9.0),
                          _stackxy(1.1 * rx, fr.z), _stackxy(xs, ys)], 1)
    return {"back_afro": back, "cap_afro": cap}


_STYLE_PARTS = {  # drawn behind the head, in front of it
    _SHORT: (("back_short",), ("cap_short",)),
    _LONG: (("back_long",), ("cap_long",)),
    _BOB: (("back_bob",), ("cap_bob",)),
    _BUZZ: ((), ("cap_buzz",)),
    _BANGS: (("back_short",), ("cap_bangs",)),
    _AFRO: (("back_afro",), ("cap_afro",)),
}


def _features(p, eye_scale_w=1.0, eye_scale_h=1.0):
    """Face-frame anchor points and sizes of the eyes, brows, nose and mouth (dict of (n,) / (n, k, 2))."""
    f = {}
    yaw = _col(p["yaw"])
    f["fx"] = yaw  # the features shift sideways with the yaw
    sep = _col(p["eye_sep"]) * (1.0 - 0.5 * np.abs(yaw))
    ey = _col(p["eye_y"])
    ew = _col(p["eye_w"]) * eye_scale_w
    eh = _col(p["eye_h"]) * eye_scale_h
    # foreshortening: the eye on the side the face turns towards gets narrower
    f["eye_x"] = np.concatenate([yaw * 0.9 - sep, yaw * 0.9 + sep], 1)  # (n, 2): left, right
    f["eye_w"] = np.concatenate([ew * (1 + 0.9 * yaw), ew * (1 - 0.9 * yaw)], 1)
    f["eye_h"] = np.concatenate([eh, eh], 1)
    f["eye_y"] = np.concatenate([ey, ey], 1)
    f["nose_x"] = yaw * 1.15
    f["nose_top"] = ey + 0.05
    f["nose_tip"] = ey + _col(p["nose_len"])
    f["nose_w"] = _col(p["nose_w"])
    f["mouth_x"] = yaw * 0.95
    f["mouth_y"] = _col(p["mouth_y"])
    f["mouth_w"] = _col(p["mouth_w"]) * (1.0 - 0.4 * np.abs(yaw))
    return f


def _almond(ex, ey, ew, eh, k=16, low=0.75):
    """Eye outline (upper arc heavier than the lower): (n, k, 2) for one eye."""
    c, s = _unit_circle(k)
    y = np.where(s < 0, s, low * s)
    return _stackxy(ex + ew * c, ey + eh * y)


def _brow(p, f, side, raise_=0.0, k=7):
    """Brow polygon for eye ``side`` (0 left, 1 right) in the face frame: (n, 2k, 2)."""
    ex = f["eye_x"][:, side:side + 1]
    ew = f["eye_w"][:, side:side + 1]
    base = f["eye_y"][:, side:side + 1] - f["eye_h"][:, side:side + 1] - _col(p["brow_gap"]) - raise_
    t = np.linspace(0.0, 1.0, k, dtype=np.float32)[None, :]  # inner (0) -> outer (1)
    sign = -1.0 if side == 0 else 1.0
    x = ex + sign * (-0.95 + 2.1 * t) * ew
    shape = np.asarray(p["brow_shape"])[:, None]
    arched = -0.07 * np.sin(math.pi * t)
    angled = -0.08 * np.minimum(t / 0.65, (1 - t) / 0.35)
    y = base + np.where(shape == 1, arched, np.where(shape == 2, angled, -0.02 * t))
    y = y - _col(p["brow_angle"]) * (1.0 - t) * 0.35  # + angle: the inner end goes up
    th = _col(p["brow_thick"]) * (1.15 - 0.75 * t)
    top = _stackxy(x, y - th * 0.5)
    bot = _stackxy(x, y + th * 0.5)[:, ::-1]
    return np.concatenate([top, bot], 1)


def _mouth(p, f, smile_gain=1.0, open_gain=1.0, k=11):
    """Mouth curves (face frame): upper (n, k, 2) and lower (n, k, 2) boundary, both left -> right.

    neutral: a thin closed mouth; smile: corners up; open: a gap between the lips."""
    mt = np.asarray(p["mouth_type"])[:, None]
    mx, my, mw = f["mouth_x"], f["mouth_y"], f["mouth_w"]
    t = np.linspace(-1.0, 1.0, k, dtype=np.float32)[None, :]
    x = mx + mw * t
    bend = np.where(mt == _SMILE, 0.10 * smile_gain, np.where(mt == _OPEN, 0.05, 0.0)) * mw / 0.22
    centre = my + bend * (1 - t * t) - bend * 0.5
    gap = np.where(mt == _OPEN, 0.13 * open_gain, 0.0) * (1 - t * t) ** 0.8
    upper = _stackxy(x, centre - 0.004 * (1 - t * t))
    lower = _stackxy(x, centre + gap)
    return upper, lower


# ------------------------------------------------------------------------------------------ numpy helpers
@functools.lru_cache(maxsize=16)
def _grid(size: int):
    c = _frozen((np.arange(size, dtype=np.float32) + 0.5) / size)
    return c[None, None, :], c[None, :, None]  # x (1, 1, s), y (1, s, 1)


@functools.lru_cache(maxsize=32)
def _cubic_matrix(size: int, k: int) -> np.ndarray:
    """(size, k) Catmull-Rom weights from k samples at cell centres to ``size`` pixel centres (clamped)."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * k - 0.5
    i = np.floor(pos).astype(int)
    t = pos - i
    ws = ((-t ** 3 + 2 * t ** 2 - t) / 2, (3 * t ** 3 - 5 * t ** 2 + 2) / 2, (-3 * t ** 3 + 4 * t ** 2 + t) / 2,
          (t ** 3 - t ** 2) / 2)
    m = np.zeros((size, k))
    rows = np.arange(size)
    for off, w in zip((-1, 0, 1, 2), ws):
        np.add.at(m, (rows, np.clip(i + off, 0, k - 1)), w)
    return _frozen(m.astype(np.float32))


@functools.lru_cache(maxsize=32)
def _linear_taps(size: int, k: int, cell: float):
    """Linear interpolation taps from k samples spaced ``cell`` pixels apart (first at cell / 2) to pixel
    centres: (i0, weight), clamped at the borders."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / cell - 0.5
    i0 = np.clip(np.floor(pos), 0, k - 2).astype(np.intp)
    return _frozen(i0), _frozen(np.clip(pos - i0, 0.0, 1.0).astype(np.float32))


def _upsample(low: np.ndarray, size: int, cell: float | None = None) -> np.ndarray:
    """Bilinear upsampling of (m, k, k, ...) to (m, size, size, ...): slices for an integer factor, else
    separable gathers (no BLAS: small multithreaded gemms are pathologically slow on busy machines)."""
    k = low.shape[1]
    cell = float(cell if cell is not None else size / k)
    if cell == int(cell) and k * int(cell) == size:
        return _upsample_int(_upsample_int(low, int(cell), 1), int(cell), 2)
    i0, w = _linear_taps(size, k, cell)
    extra = (1,) * (low.ndim - 3)
    a, b = low[:, i0], low[:, i0 + 1]
    t = a + (b - a) * w.reshape((1, size, 1) + extra)
    a, b = t[:, :, i0], t[:, :, i0 + 1]
    return a + (b - a) * w.reshape((1, 1, size) + extra)


def _upsample_int(a: np.ndarray, f: int, axis: int) -> np.ndarray:
    """Bilinear (pixel-centre aligned, edge-clamped) upsampling of ``a`` by the integer ``f`` along ``axis``."""
    if f == 1:
        return a
    k = a.shape[axis]
    pre = (slice(None),) * axis
    pad = np.concatenate([a[pre + (slice(0, 1),)], a, a[pre + (slice(k - 1, k),)]], axis)
    out = np.empty(a.shape[:axis] + (k, f) + a.shape[axis + 1:], a.dtype)
    for j in range(f):
        d = (j + 0.5) / f - 0.5
        nb = pad[pre + ((slice(2, None) if d > 0 else slice(0, k)),)]
        o = out[pre + (slice(None), j)]
        np.multiply(nb, abs(d) / (1.0 - abs(d)), out=o)  # (no temporaries: o = (1-|d|) * (a + nb * ...))
        o += a
        o *= 1.0 - abs(d)
    return out.reshape(a.shape[:axis] + (k * f,) + a.shape[axis + 1:])


def _gauss_rows(k: int, sigma: float, shift: np.ndarray) -> np.ndarray:
    """(m, k, k) row-normalised gaussians; row i reads input j = i - shift (content moves by +shift)."""
    i = np.arange(k, dtype=np.float32)
    d = (i[:, None] - i[None, :])[None] - np.asarray(shift, np.float32)[:, None, None]
    g = np.exp(-0.5 * (d / sigma) ** 2)
    return g / np.maximum(g.sum(-1, keepdims=True), 1e-6)


def _soft_fields(alpha: np.ndarray, sigma_frac: float, shadow_sigma_frac: float, shadow_shift: np.ndarray,
                 out_size: int):
    """Blurred copies of the coverage ``alpha`` (m, s, s), computed on a coarse grid and upsampled to
    ``out_size``: (rounded body height field, drop shadow shifted by ``shadow_shift`` (m, 2) in output
    pixels)."""
    m, s = alpha.shape[0], alpha.shape[-1]
    f = max(1, s // 16)
    k = s // f
    low = alpha[:, :k * f, :k * f].reshape(m, k, f, k, f).mean(axis=(2, 4))
    g = _gauss_rows(k, max(0.35, sigma_frac * k), np.zeros(m, np.float32))
    cell = f * out_size / s
    body = _upsample(g @ low @ np.swapaxes(g, 1, 2), out_size, cell)  # (tiny gemms: k <= 16)
    sh = np.asarray(shadow_shift, np.float32) / cell
    gx = _gauss_rows(k, max(0.35, shadow_sigma_frac * k), sh[:, 0])
    gy = _gauss_rows(k, max(0.35, shadow_sigma_frac * k), sh[:, 1])
    shadow = _upsample(gy @ low @ np.swapaxes(gx, 1, 2), out_size, cell)
    return body, shadow


@functools.lru_cache(maxsize=16)
def _grain_bank(size: int) -> np.ndarray:
    """(2 size, 2 size) film grain (std 3 levels, +0.5 so that truncating to uint8 rounds)."""
    return _frozen(3.0 * np.random.default_rng(20240613).standard_normal((2 * size, 2 * size)).astype(np.float32) + 0.5)


@functools.lru_cache(maxsize=16)
def _curl_bank(size: int) -> np.ndarray:
    """A (2 size, 2 size) texture of small blobs in [-1, 1] (curly hair)."""
    t = np.random.default_rng(4242).standard_normal((2 * size, 2 * size))
    for _ in range(2):
        t = 0.5 * t + 0.125 * (np.roll(t, 1, 0) + np.roll(t, -1, 0) + np.roll(t, 1, 1) + np.roll(t, -1, 1))
    t = np.abs(t) - np.abs(t).mean()
    return _frozen((t / np.abs(t).max()).astype(np.float32))


@functools.lru_cache(maxsize=1)
def _strand_table() -> np.ndarray:
    t = np.random.default_rng(777).uniform(-1.0, 1.0, 4096)
    t = 0.25 * np.roll(t, 1) + 0.5 * t + 0.25 * np.roll(t, -1)
    return _frozen((t / np.abs(t).max()).astype(np.float32))


def _face_uv(p, size):
    """Face-frame coordinates (u, v) of every pixel centre: (n, s, s) each."""
    x, y = _grid(size)
    dx = x - _col(p["cx"])[:, :, None]
    dy = y - _col(p["cy"])[:, :, None]
    th = np.asarray(p["tilt"], np.float32)[:, None, None]
    c, s = np.cos(th), np.sin(th)
    ry = np.asarray(p["ry"], np.float32)[:, None, None]
    return (dx * c + dy * s) / ry, (-dx * s + dy * c) / ry


def face_mask(params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """bool [n, size, size]: pixel centres inside the (tilted, egg-shaped) head outline, as drawn by both
    renderers (hair may cover part of it)."""
    u, v = _face_uv(params, int(size))
    rx = np.asarray(params["aspect"], np.float32)[:, None, None]
    jaw = np.asarray(params["jaw"], np.float32)[:, None, None]
    vv = np.clip(v, -1.0, 1.0)
    half = rx * np.sqrt(1.0 - vv * vv) * (1.0 - jaw * np.maximum(vv, 0.0) ** 2)
    return (np.abs(v) <= 1.0) & (np.abs(u) <= half)


# -------------------------------------------------------------------------------------------- drawing
def _flat(a) -> list:
    """(n, k, 2) float -> per-image flat coordinate lists."""
    return np.asarray(a, np.float32).reshape(a.shape[0], -1).tolist()


class _LazyFlat(dict):
    """name -> per-image flat coordinate lists; the hair shapes (one style per image) convert one image at a
    time, on demand."""

    def __init__(self, g, names=None):
        super().__init__()
        self._g = g
        for k, v in g.items():
            if not k.startswith(("_", "cap_", "back_")) and isinstance(v, np.ndarray) and v.ndim == 3 \
                    and (names is None or k in names):
                self[k] = _flat(v)

    def __missing__(self, name):
        return _LazyRows(self._g[name])


class _LazyRows:
    def __init__(self, a):
        self._a = a

    def __getitem__(self, i):
        return self._a[i].ravel().tolist()


def _rgb(a) -> list:
    return [tuple(c) for c in np.clip(np.rint(a), 0, 255).astype(np.int64).tolist()]


def _dilate(pts: np.ndarray, d: float) -> np.ndarray:
    """Offset closed polygons (n, k, 2) outwards by ``d`` pixels along their vertex normals (the sign of the
    offset is chosen from the polygon's orientation)."""
    prev = np.roll(pts, 1, axis=1)
    nxt = np.roll(pts, -1, axis=1)
    tang = nxt - prev
    nrm = np.stack([tang[..., 1], -tang[..., 0]], -1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-6)
    x, y = pts[..., 0], pts[..., 1]
    area = 0.5 * np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1)  # >0: clockwise on screen
    sign = np.where(area > 0, 1.0, -1.0)[:, None, None]
    return pts + sign * d * nrm


def _torso(p, canvas):
    """Shoulders (canvas pixels, (n, k, 2)): an upright bust under the neck base."""
    base = _to_px(p, _stackxy(_col(p["yaw"]) * 0.2, 1.28 + 0 * _col(p["ry"])), canvas)[:, 0]  # (n, 2)
    ry = np.asarray(p["ry"], np.float32)[:, None] * canvas
    rx = _col(p["aspect"])
    xs = np.array([-0.45, -0.9, -1.45, -1.95, -2.25, -2.45, -2.6, 2.6, 2.45, 2.25, 1.95, 1.45, 0.9, 0.45],
                  np.float32)[None, :]
    ys = np.array([-0.02, 0.06, 0.14, 0.28, 0.5, 0.9, 3.0, 3.0, 0.9, 0.5, 0.28, 0.14, 0.06, -0.02],
                  np.float32)[None, :]
    xs = xs * np.where(np.abs(xs) < 1.0, rx / 0.8, 1.0)
    return _stackxy(base[:, :1] + xs * ry, base[:, 1:] + ys * ry)


def _neck(p):
    rx = _col(p["aspect"])
    w = 0.40 * rx
    c, s = _unit_circle(9, 0.0, math.pi, True)
    bottom = _stackxy(w * c + _col(p["yaw"]) * 0.15, 1.36 + 0.16 * s)  # U-shaped collar line, right -> left
    top = _stackxy(np.concatenate([-w, w], 1), 0.45 + 0 * np.concatenate([w, w], 1))
    return np.concatenate([top, bottom], 1)


def _geometry(p, canvas, eye_w=1.0, eye_h=1.0, cartoon=False):
    """All canvas-pixel polygons shared by the renderers: dict name -> (n, k, 2)."""
    g = {}
    g["head"] = _to_px(p, _head_outline(p), canvas)
    g["neck"] = _to_px(p, _neck(p), canvas)
    g["torso"] = _torso(p, canvas)
    rx = _col(p["aspect"])
    ear_y = _col(p["eye_y"]) + 0.12
    yaw = _col(p["yaw"])
    g["ear_l"] = _to_px(p, _ellipse(-rx + 0.02 - 0.3 * yaw, ear_y, 0.09, 0.16, 12), canvas)
    g["ear_r"] = _to_px(p, _ellipse(rx - 0.02 - 0.3 * yaw, ear_y, 0.09, 0.16, 12), canvas)
    for k, v in _hair_shapes(p).items():
        g[k] = _to_px(p, v, canvas)
    f = _features(p, eye_w, eye_h)
    g["_f"] = f
    for side in (0, 1):
        ex, ey = f["eye_x"][:, side:side + 1], f["eye_y"][:, side:side + 1]
        ew, eh = f["eye_w"][:, side:side + 1], f["eye_h"][:, side:side + 1]
        if cartoon:
            g[f"eye{side}"] = _to_px(p, _ellipse(ex, ey, ew, eh, 20), canvas)
            out_dir = 1.0 if side == 1 else -1.0  # the lash line flicks up at the outer corner
            c, s = _unit_circle(11, math.pi, 2 * math.pi, True)
            lash = _stackxy(ex + ew * 1.04 * c, ey + eh * 1.04 * s)
            tip = _stackxy(ex + out_dir * ew * 1.28, ey - eh * 0.35)
            g[f"lash{side}"] = _to_px(p, np.concatenate([tip, lash] if side == 0 else [lash, tip], 1), canvas)
        else:
            g[f"eye{side}"] = _to_px(p, _almond(ex, ey, ew, eh), canvas)
            c, s = _unit_circle(9, math.pi, 2 * math.pi, True)
            upper = _stackxy(ex + ew * c * 1.06, ey + eh * s * 1.0)
            crease = _stackxy(ex + ew * c[::-1] * 1.1, ey + eh * s[::-1] * 2.0 - 0.01)
            g[f"lid{side}"] = _to_px(p, np.concatenate([upper, crease], 1), canvas)
            lower = _stackxy(ex + ew * c * 1.06, ey - eh * s * 0.75)
            lower2 = _stackxy(ex + ew * c[::-1] * 1.1, ey - eh * s[::-1] * 1.5)
            g[f"lowlid{side}"] = _to_px(p, np.concatenate([lower, lower2], 1), canvas)
            g[f"lash{side}"] = _to_px(p, upper, canvas)
        # iris: centre, radius (canvas px); gaze moves it sideways
        icx = ex + _col(p["gaze"]) * 0.25 * ew + 0.3 * f["fx"] * ew
        ic = _to_px(p, _stackxy(icx, ey + (0.1 * eh if not cartoon else 0.05 * eh)), canvas)[:, 0]
        g[f"iris_c{side}"] = ic
        g[f"iris_r{side}"] = (eh[:, 0] * (0.95 if not cartoon else 0.78) * np.asarray(p["ry"]) * canvas)
        g[f"brow{side}"] = _to_px(p, _brow(p, f, side, raise_=0.0 if not cartoon else 0.05), canvas)
    return g


def _iris_box(c, r):
    return [c[0] - r, c[1] - r, c[0] + r, c[1] + r]


# the body's polygons in drawing order, with their palette entries
_BODY = (("torso", "shirt"), ("neck", "neck"), ("ear_l", "ear"), ("ear_r", "ear"), ("head", "skin"))


def _draw_person(shape, face, i, s, c) -> None:
    """The drawing order both renderers share for image ``i``: the hair behind the head, the body, the face's
    features (``face()``), the hair in front; ``shape(name, fill)`` draws one named polygon. ``s``: the
    renderer's shapes (``_photo_shapes`` / ``_cartoon_shapes``), ``c``: its palette."""
    back, front = _STYLE_PARTS[s["style"][i]]
    for name in back:
        shape(name, c["hair"][i])
    for name, key in _BODY:
        shape(name, c[key][i])
    face()
    for name in front:
        shape(name, c["hair"][i])


# --------------------------------------------------------------------------------------------- faces
def _bump(u, v, cx, cy, sx, sy):
    """A smooth compact bump (1 - r^2)^2 of radii (sx, sy) at (cx, cy) (cheaper than a gaussian)."""
    r = ((u - cx) / sx) ** 2 + ((v - cy) / sy) ** 2
    b = np.maximum(1.0 - r, 0.0)
    return b * b


def _c3(a):
    return np.asarray(a, np.float32)[:, None, None]


def _background(p, k):
    """Textured backgrounds on a k x k grid (m, k, k, 3) float: a gradient by type + low-frequency colour
    noise (a 5x5 grid, Catmull-Rom interpolated) + a light falloff towards ``light``."""
    x, y = _grid(k)
    bt = np.asarray(p["bg_type"])[:, None, None]
    U5 = _cubic_matrix(k, _BG_GRID)
    noise = np.asarray(p["bg_noise"], np.float32).transpose(0, 3, 1, 2)  # (m, 3, 5, 5)
    noise = (U5 @ noise @ U5.T).transpose(0, 2, 3, 1)  # (tiny gemms)
    lum = noise.mean(-1)
    r = np.sqrt((x - 0.5) ** 2 + (y - 0.42) ** 2) * 1.6
    t = np.where(bt == 0, y + 0 * x, np.where(bt == 1, r, np.where(bt == 2, 0.5 * (x + y), 0.5 + 0.35 * lum)))
    t = np.clip(t + 0.08 * lum, 0.0, 1.0)[..., None]
    bg = _c3(p["bg0"]) * (1 - t) + _c3(p["bg1"]) * t + 12.0 * noise
    L = np.asarray(p["light"], np.float32)
    fall = 1.0 + 0.35 * (L[:, 0, None, None] * (x - 0.5) + L[:, 1, None, None] * (y - 0.5))
    return bg * fall[..., None]


@functools.lru_cache(maxsize=64)
def _shade_res(size: int) -> int:
    """Resolution of the photo's smooth fields: size / f for the smallest integer f (>= 2 from 64 px up)
    giving at most _SHADE_RES pixels (then the upsampling is plain slicing), else _SHADE_RES / 2 .. size."""
    for f in range(2 if size >= 64 else 1, size + 1):
        r, rem = divmod(size, f)
        if r < _SHADE_RES // 2:
            break
        if rem == 0 and r <= _SHADE_RES:
            return r
    return min(size, _SHADE_RES * 3 // 4)


def _height_field(p, u, v, rx):
    """The photo's relief (units of ry) on the grid (u, v): a dome for the head plus bumps and dents for the
    features. Returns (height, q), q the dome's squared radius (q < 1 inside the head)."""
    q = (u / (rx * 1.1)) ** 2 + ((v + 0.04) * (1.0 / 1.12)) ** 2
    h = np.sqrt(np.maximum(1.0 - q, 0.0))
    f = _features(p)
    for side in (0, 1):
        exs, eys = _c3(f["eye_x"][:, side]), _c3(f["eye_y"][:, side])
        h -= 0.10 * _bump(u, v, exs, eys - 0.02, 0.30, 0.21)  # eye socket
        h += 0.05 * _bump(u, v, exs, eys + 0.32, 0.30, 0.25)  # cheek
    nx, ntop, ntip = _c3(f["nose_x"][:, 0]), _c3(f["nose_top"][:, 0]), _c3(f["nose_tip"][:, 0])
    t = np.clip((v - ntop) / np.maximum(ntip - ntop, 1e-3), 0.0, 1.0)
    w = (u - nx * (0.7 + 0.3 * t)) / (0.07 + 0.09 * t)
    ridge = np.maximum(1.0 - w * w, 0.0) ** 2 * (0.04 + 0.16 * t * np.sqrt(t))
    below = np.maximum(v - ntip, 0.0) * (1.0 / 0.07)
    ridge *= np.maximum(1.0 - below * below, 0.0) * (v > ntop - 0.05)
    h += ridge
    mx, my = _c3(f["mouth_x"][:, 0]), _c3(f["mouth_y"][:, 0])
    h += 0.04 * _bump(u, v, mx, my + 0.02, 0.34, 0.12)  # lips
    h += 0.05 * _bump(u, v, mx * 0.8, 0.82, 0.34, 0.17)  # chin
    return h, q


def _slopes(hf, step):
    """Central-difference slopes (gx, gy) of the height field hf (m, r, r) in units of ``step`` (pixels per
    ry / 2), and 1 / |(-gx, -gy, 1)| (the normal's normalisation)."""
    gx = np.zeros_like(hf)
    gy = np.zeros_like(hf)
    gx[:, :, 1:-1] = hf[:, :, 2:] - hf[:, :, :-2]
    gy[:, 1:-1, :] = hf[:, 2:, :] - hf[:, :-2, :]
    gx *= step
    gy *= step
    return gx, gy, 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)


def _chin_shadow(u, v, rx, head_w, ly):
    """Strength in [0, 1] of the chin's shadow on the neck (longer when the light comes from above)."""
    below = np.clip((v - 0.9) * 6.0, 0.0, 1.0) * (1.0 - head_w)
    cv = (v - 1.05 - 0.15 * np.maximum(-ly, 0)) * (1.0 / 0.3)
    cu = u / (rx * 0.85)
    return np.maximum(1.0 - cv * cv, 0.0) * np.maximum(1.0 - cu * cu, 0.0) * below


def _specular(L, gx, gy, inv):
    """Blinn-Phong highlight (n.h)^24 * 255 of the slopes lit from the unit vectors L (m, 3)."""
    hv = L + np.array([0, 0, 1], np.float32)
    hv /= np.linalg.norm(hv, axis=1, keepdims=True)
    ndh = np.clip((hv[:, 2, None, None] - gx * hv[:, 0, None, None] - gy * hv[:, 1, None, None]) * inv, 0, 1)
    ndh *= ndh
    ndh *= ndh
    ndh *= ndh
    return ndh * ndh * ndh * 255.0


def _smooth_fields(p, alpha, size):
    """The photo's smooth fields (m, 6, size, size), computed at ``_shade_res(size)`` and upsampled bilinearly
    in one go: shade (diffuse light with the chin's shadow), specular, the hair strands' coordinate, and the
    background RGB with the person's drop shadow."""
    m = alpha.shape[0]
    r = _shade_res(size)
    u, v = _face_uv(p, r)
    rx = _c3(p["aspect"])
    L = np.asarray(p["light"], np.float32)
    lx, ly, lz = L[:, 0, None, None], L[:, 1, None, None], L[:, 2, None, None]
    h, q = _height_field(p, u, v, rx)
    head_w = np.clip((1.02 - q) * 8.0, 0.0, 1.0)
    body, shadow = _soft_fields(alpha, 0.035, 0.05, -L[:, :2] * r * 0.06, r)
    gx, gy, inv = _slopes(0.9 * h * head_w + 0.35 * body, r * _c3(p["ry"]) * 0.5)
    fields = np.empty((m, 6, r, r), np.float32)
    diffuse = np.clip((lz - gx * lx - gy * ly) * inv, 0.0, 1.0)
    fields[:, 0] = (0.42 + 0.72 * diffuse) * (1.0 - 0.4 * _chin_shadow(u, v, rx, head_w, ly))
    fields[:, 1] = _specular(L, gx, gy, inv)
    fields[:, 2] = (u - _c3(p["hair_part"]) * 0.3) / (v + 1.9)  # strands radiate from above the crown
    fields[:, 3:] = (_background(p, r) * (1.0 - 0.35 * shadow)[..., None]).transpose(0, 3, 1, 2)
    if r != size:  # (channels first: the upsampling's inner loops run along x)
        fields = _upsample(fields.reshape(m * 6, r, r), size).reshape(m, 6, size, size)
    return fields


def _hair_mask(p, fg):
    """(m, s, s) bool: the opaque pixels of the hair's key colour (``_photo_palette``)."""
    key = np.zeros((fg.shape[0], 4), np.uint8)
    key[:, :3] = p["_hair_key"]
    key[:, 3] = 255
    return fg.view(np.uint32)[..., 0] == key.view(np.uint32)[:, :, None]


def _hair_texture(p, coord, size):
    """(m, s, s) in [-1, 1]: streaks (a 1-D noise lookup along the strand coordinate ``coord``), curls for
    the afro."""
    off = (np.asarray(p["tex_seed"], np.int64) % 4096).astype(np.int32)[:, None, None]
    idx = (coord * (30.0 + 0.9 * size)).astype(np.int32)
    idx += off
    idx &= 4095
    strands = _strand_table()[idx]
    afro = np.flatnonzero(np.asarray(p["hair_style"]) == _AFRO)
    if afro.size:
        curls = _curl_bank(size)
        seeds = np.asarray(p["tex_seed"], np.int64)
        for i in afro:
            oy, ox = int(seeds[i] // 7 % size), int(seeds[i] // 11 % size)
            strands[i] = curls[oy:oy + size, ox:ox + size]
    return strands


def _blur121(out, axis):
    """In place: half a [1 2 1] blur (0.75 x + 0.125 (left + right), edges clamped) along ``axis`` (1 or 2)."""
    pre = (slice(None),) * axis
    nb = np.empty_like(out)
    nb[pre + (slice(1, -1),)] = out[pre + (slice(None, -2),)]
    nb[pre + (slice(1, -1),)] += out[pre + (slice(2, None),)]
    nb[pre + (0,)] = out[pre + (1,)]
    nb[pre + (-1,)] = out[pre + (-2,)]
    nb[pre + (0,)] += out[pre + (0,)]
    nb[pre + (-1,)] += out[pre + (-1,)]
    out *= 0.75
    nb *= 0.125
    out += nb


def _add_grain(out, p, size):
    """In place: each image's window of the shared film grain, placed by its ``tex_seed``."""
    bank = _grain_bank(size)
    seeds = np.asarray(p["tex_seed"], np.int64)
    for i in range(out.shape[0]):
        oy, ox = int(seeds[i] % size), int((seeds[i] // size) % size)
        out[i] += bank[oy:oy + size, ox:ox + size, None]


def _post_faces(p, fg, size):
    """Light, texture and composite one chunk: fg (m, s, s, 4) uint8 (premultiplied RGB + coverage) ->
    (uint8 (m, s, s, 3), alpha (m, s, s)).

    The smooth fields (``_smooth_fields``) come from a coarse grid; colours, strands and grain stay at full
    resolution."""
    alpha = fg[..., 3].astype(np.float32) * (1.0 / 255.0)
    hair_mask = _hair_mask(p, fg)
    fields = _smooth_fields(p, alpha, size)
    shade = fields[:, 0]
    if hair_mask.any():
        shade = shade * (1.0 + hair_mask * (0.3 * _hair_texture(p, fields[:, 2], size) - 0.06))
    spec = fields[:, 1] * alpha * (0.10 + 0.15 * hair_mask)  # a stronger sheen on the hair
    out = fg[..., :3] * shade[..., None]
    out += spec[..., None]
    out += fields[:, 3:].transpose(0, 2, 3, 1) * (1.0 - alpha)[..., None]
    if size >= 48:  # photo-ish softness
        _blur121(out, 1)
        _blur121(out, 2)
    _add_grain(out, p, size)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8), alpha


def _photo_palette(p) -> dict:
    """The photo's fill colours, RGBA tuples per image. The hair colour doubles as a colour key for the strand
    texture (``_hair_mask``): its blue is odd, every other colour's even."""
    style = np.asarray(p["hair_style"])
    skin = np.asarray(p["skin"], np.float32)
    hair = np.asarray(p["hair"], np.float32)
    hair_draw = np.where((style == _BUZZ)[:, None], 0.55 * hair + 0.45 * skin, hair)
    hair_key = np.clip(np.rint(hair_draw), 0, 255).astype(np.uint8)
    hair_key[:, 2] |= 1

    def even(a):
        a = np.clip(np.rint(a), 0, 254).astype(np.uint8)
        a[:, 2] &= 0xFE
        return [tuple(c) + (255,) for c in a.tolist()]

    return {"hair_key": hair_key, "hair": [tuple(c) + (255,) for c in hair_key.tolist()], "skin": even(skin),
            "ear": even(skin * 0.93), "lid": even(skin * 0.9), "neck": even(skin * 0.9), "shirt": even(p["shirt"]),
            "brow": even(hair * 0.75 + 10), "lash": even(np.minimum(hair, 70) * 0.5 + 10), "iris": even(p["iris"]),
            "lip": even(p["lip"]), "gap": even(np.asarray(p["lip"]) * 0.25), "nostril": even(skin * 0.5)}


def _photo_mouth(p, f, C) -> dict:
    """The photo's mouth as per-image flat polygons: lips ``up`` / ``lo``, the ``open`` gap, ``teeth``, and the
    closed mouth's ``line``."""
    up, lo = _mouth(p, f)
    up_px, lo_px = _to_px(p, up, C), _to_px(p, lo, C)
    k = up.shape[1]
    bow = (1 - np.linspace(-1, 1, k, dtype=np.float32) ** 2)[None, :, None]
    lip_th = 0.045
    upper_lip = np.concatenate([_to_px(p, up + np.array([0, -lip_th], np.float32) * bow, C), up_px[:, ::-1]], 1)
    lower_lip = np.concatenate([lo_px, _to_px(p, lo + np.array([0, 1.3 * lip_th], np.float32) * bow ** 0.7,
                                              C)[:, ::-1]], 1)
    mouth_open = np.concatenate([up_px, lo_px[:, ::-1]], 1)
    teeth = np.concatenate([up_px, _to_px(p, up + np.array([0, 0.045], np.float32) * bow ** 0.5, C)[:, ::-1]], 1)
    return {k2: _flat(v) for k2, v in (("up", upper_lip), ("lo", lower_lip), ("open", mouth_open),
                                       ("teeth", teeth), ("line", up_px))}


def _photo_shapes(p, C) -> dict:
    """Everything the photo's flat stage draws, per image (canvas ``C`` px): the named polygons (``flat``), the
    mouth, the nostrils, the irises (centre, radius), the light's direction and the line width."""
    g = _geometry(p, C)
    f = g["_f"]
    nx, ntip, nw = f["nose_x"], f["nose_tip"], f["nose_w"]
    return {"flat": _LazyFlat(g), "style": np.asarray(p["hair_style"]).tolist(),
            "mouth_type": np.asarray(p["mouth_type"]).tolist(), "mouth": _photo_mouth(p, f, C),
            "nostrils": [_flat(_to_px(p, _ellipse(nx + sgn * nw * 0.55, ntip + 0.01, nw * 0.32, nw * 0.18, 8), C))
                         for sgn in (-1, 1)],
            "iris": [(g[f"iris_c{s_}"].tolist(), g[f"iris_r{s_}"].tolist()) for s_ in (0, 1)],
            "light": np.asarray(p["light"], np.float32)[:, :2].tolist(),
            "line_w": np.maximum(1, np.rint(0.022 * C * np.asarray(p["ry"], np.float32))).astype(int).tolist()}


def _draw_photo_eyes(d, i, s, c) -> None:
    """Both eyes of photo ``i``: sclera, iris, pupil, the catch light (towards the light), lids, lashes, brow."""
    poly, flat = d.polygon, s["flat"]
    lx, ly = s["light"][i]
    for side in (0, 1):
        poly(flat[f"eye{side}"][i], fill=(238, 232, 226, 255))
        cen, r = s["iris"][side][0][i], s["iris"][side][1][i]
        d.ellipse(_iris_box(cen, r), fill=c["iris"][i])
        d.ellipse(_iris_box(cen, r * 0.42), fill=(12, 8, 8, 255))
        hc = (cen[0] + lx * r * 0.45 - r * 0.1, cen[1] + ly * r * 0.45 - r * 0.15)
        d.ellipse(_iris_box(hc, max(r * 0.24, 0.7)), fill=(252, 252, 252, 255))
        poly(flat[f"lid{side}"][i], fill=c["lid"][i])
        poly(flat[f"lowlid{side}"][i], fill=c["skin"][i])
        d.line(flat[f"lash{side}"][i], fill=c["lash"][i], width=s["line_w"][i], joint="curve")
        poly(flat[f"brow{side}"][i], fill=c["brow"][i])


def _draw_photo_mouth(d, i, s, c) -> None:
    """Nostrils and mouth of photo ``i`` (an open mouth shows its gap and teeth, a closed one a line)."""
    poly, mouth = d.polygon, s["mouth"]
    poly(s["nostrils"][0][i], fill=c["nostril"][i])
    poly(s["nostrils"][1][i], fill=c["nostril"][i])
    is_open = s["mouth_type"][i] == _OPEN
    if is_open:
        poly(mouth["open"][i], fill=c["gap"][i])
        poly(mouth["teeth"][i], fill=(236, 232, 222, 255))
    poly(mouth["up"][i], fill=c["lip"][i])
    poly(mouth["lo"][i], fill=c["lip"][i])
    if not is_open:
        d.line(mouth["line"][i], fill=c["gap"][i], width=s["line_w"][i], joint="curve")


def _draw_photo(d, i, s, c) -> None:
    """Photo ``i``'s flat stage, back to front."""
    flat = s["flat"]

    def shape(name, fill):
        d.polygon(flat[name][i], fill=fill)

    def face():
        _draw_photo_eyes(d, i, s, c)
        _draw_photo_mouth(d, i, s, c)

    _draw_person(shape, face, i, s, c)


def render_faces(params: dict[str, np.ndarray], size: int, *, return_alpha: bool = False):
    """Photo-like faces: uint8 [n, size, size, 3] (and the foreground coverage float32 [n, size, size] in
    [0, 1] with ``return_alpha=True``). Deterministic in ``params``.

    Shapes are drawn flat (PIL, supersampled, box-downsampled); then a height field (the head as a dome,
    the eye sockets, nose, cheeks, lips and chin as bumps, the rest of the person rounded from its blurred
    silhouette) is lit from ``light`` (diffuse + specular), hair gets strand streaks, the chin casts a
    shadow on the neck and the person a soft shadow on the textured background; a mild blur and grain
    finish it."""
    p = params
    size = _checked_size(size)
    n = _n(p)
    if n == 0:
        empty = np.zeros((0, size, size, 3), np.uint8)
        return (empty, np.zeros((0, size, size), np.float32)) if return_alpha else empty
    ss = _supersample(size)
    C = size * ss
    colours = _photo_palette(p)
    shapes = _photo_shapes(p, C)
    fg = np.empty((n, size, size, 4), np.uint8)
    for i in range(n):
        im = Image.new("CMYK", (C, C), (0, 0, 0, 0))  # 4 plain 8-bit bands: R, G, B, coverage
        _draw_photo(ImageDraw.Draw(im), i, shapes, colours)
        fg[i] = im.reduce(ss)  # a box filter; transparent pixels are 0, so RGB comes out premultiplied
    out = np.empty((n, size, size, 3), np.uint8)
    alpha = np.empty((n, size, size), np.float32) if return_alpha else None
    p = dict(p, _hair_key=colours["hair_key"])
    chunk = max(1, _CHUNK_PIXELS // (size * size))  # keep the float temporaries cache-sized
    for a in range(0, n, chunk):
        sl = slice(a, min(n, a + chunk))
        o, al = _post_faces({k2: np.asarray(v)[sl] for k2, v in p.items()}, fg[sl], size)
        out[sl] = o
        if return_alpha:
            alpha[sl] = al
    return (out, alpha) if return_alpha else out


# -------------------------------------------------------------------------------------------- cartoon
_OUTLINE = (34, 24, 30)


def _pastel(rgb):
    rgb = np.asarray(rgb, np.float32)
    return 0.42 * rgb + 0.58 * 248.0


def _checked_size(size) -> int:
    size = int(size)
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    return size


def _cartoon_palette(p) -> dict:
    """The cartoon's fill colours, RGB tuples per image: brighter skin and hair (a buzz cut half skin), pastel
    backgrounds, vivid irises, a pink blush."""
    style = np.asarray(p["hair_style"])
    skin = np.asarray(p["skin"], np.float32)
    hair = np.asarray(p["hair"], np.float32)
    skin_t = np.clip(skin * 1.04 + 6, 0, 255)
    hair_t = np.where((style == _BUZZ)[:, None], 0.5 * hair + 0.5 * skin_t, hair * 1.05)
    skin_c = _rgb(skin_t)
    return {"bg": _rgb(_pastel(p["bg0"])), "skin": skin_c, "neck": skin_c, "ear": skin_c, "hair": _rgb(hair_t),
            "shirt": _rgb(np.clip(p["shirt"] * 1.1 + 10, 0, 255)),
            "iris": _rgb(np.clip(np.asarray(p["iris"]) * 1.25 + 10, 0, 255)),
            "iris_ring": _rgb(np.asarray(p["iris"]) * 0.55),
            "blush": _rgb(0.75 * skin_t + 0.25 * np.array([255, 90, 110], np.float32))}


def _cartoon_mouth(p, f, C, ow) -> dict:
    """The cartoon's mouth as per-image flat polygons: the closed mouth's ``line``, the ``open`` mouth and its
    ``open_outline`` (``ow`` px wider), ``teeth`` and ``tongue``. Smiles are exaggerated: wider, corners
    higher."""
    up, lo = _mouth(p, f, smile_gain=2.0, open_gain=1.5)
    sm = np.asarray(p["mouth_type"]) == _SMILE
    up = up.copy()
    up[..., 0] = np.where(sm[:, None], f["mouth_x"] + (up[..., 0] - f["mouth_x"]) * 1.2, up[..., 0])
    up_px, lo_px = _to_px(p, up, C), _to_px(p, lo, C)
    open_poly = np.concatenate([up_px, lo_px[:, ::-1]], 1)
    kk = up.shape[1]
    teeth = np.concatenate([up_px, _to_px(p, up + np.array([0, 1], np.float32) * 0.04
                                          * (1 - np.linspace(-1, 1, kk) ** 2)[None, :, None] ** 0.5, C)[:, ::-1]], 1)
    tongue = _to_px(p, _ellipse(f["mouth_x"], lo[:, kk // 2:kk // 2 + 1, 1] - 0.05, f["mouth_w"] * 0.5, 0.045, 12),
                    C)
    return {"line": _flat(up_px), "open": _flat(open_poly), "open_outline": _flat(_dilate(open_poly, ow)),
            "teeth": _flat(teeth), "tongue": _flat(tongue)}


def _cartoon_shapes(p, C, ss) -> dict:
    """Everything the cartoon draws, per image (canvas ``C`` px, supersampled ``ss`` times): the named polygons
    (``flat``) and their outlines (dilated copies drawn under them), the mouth, the nose hook, the blushes, the
    irises (centre, radius) and the line widths."""
    g = _geometry(p, C, eye_w=1.35, eye_h=1.85, cartoon=True)  # bigger, rounder eyes
    ow = max(ss * 0.75, C / 44.0)  # outline width (canvas px)
    outlined = ["torso", "neck", "ear_l", "ear_r", "head"] + [k for k in g if k.startswith(("cap_", "back_"))]
    f = g["_f"]
    # nose: a small hook on the side away from the yaw
    nx, ntip, nw = f["nose_x"], f["nose_tip"], f["nose_w"]
    sgn = np.where(np.asarray(p["yaw"]) >= 0, -1.0, 1.0)[:, None].astype(np.float32)
    nose = _to_px(p, _stackxy(np.concatenate([nx + sgn * nw * 0.1, nx + sgn * nw * 0.7, nx - sgn * nw * 0.1], 1),
                              np.concatenate([ntip - 0.08, ntip - 0.01, ntip + 0.02], 1)), C)
    blush = [_to_px(p, _ellipse(f["eye_x"][:, s_:s_ + 1] + (0.05 if s_ else -0.05), f["eye_y"][:, s_:s_ + 1]
                                + 0.24, 0.09, 0.045, 12), C) for s_ in (0, 1)]
    return {"flat": _LazyFlat(g, ["torso", "neck", "ear_l", "ear_r", "head", "brow0", "brow1", "eye0", "eye1",
                                  "lash0", "lash1"]),
            "outline": {k: (_LazyRows if k.startswith(("cap_", "back_")) else _flat)(_dilate(g[k], ow))
                        for k in outlined},
            "eye_outline": [_flat(_dilate(g[f"eye{s_}"], ow * 0.45)) for s_ in (0, 1)],
            "iris": [(g[f"iris_c{s_}"].tolist(), g[f"iris_r{s_}"].tolist()) for s_ in (0, 1)],
            "mouth": _cartoon_mouth(p, f, C, ow), "nose": _flat(nose), "blush": [_flat(b) for b in blush],
            "style": np.asarray(p["hair_style"]).tolist(), "mouth_type": np.asarray(p["mouth_type"]).tolist(),
            "ss": ss, "line_w": int(round(ow)), "lash_w": max(1, int(round(ow * 1.5))),
            "nose_w": max(1, int(round(ow * 0.8)))}


def _draw_cartoon_eyes(d, i, s, c) -> None:
    """Both eyes of cartoon ``i``: outline, white, iris ring, iris, pupil, two catch lights, lashes, brow."""
    flat, ss = s["flat"], s["ss"]
    for side in (0, 1):
        d.polygon(s["eye_outline"][side][i], fill=_OUTLINE)
        d.polygon(flat[f"eye{side}"][i], fill=(255, 255, 255))
        cen, r = s["iris"][side][0][i], s["iris"][side][1][i]
        d.ellipse(_iris_box(cen, r), fill=c["iris_ring"][i])
        d.ellipse(_iris_box(cen, r * 0.8), fill=c["iris"][i])
        d.ellipse(_iris_box(cen, r * 0.45), fill=(20, 14, 18))
        d.ellipse(_iris_box((cen[0] - r * 0.32, cen[1] - r * 0.34), max(r * 0.3, ss * 0.6)), fill=(255, 255, 255))
        d.ellipse(_iris_box((cen[0] + r * 0.35, cen[1] + r * 0.3), max(r * 0.12, ss * 0.3)), fill=(255, 255, 255))
        d.line(flat[f"lash{side}"][i], fill=_OUTLINE, width=s["lash_w"], joint="curve")
        d.polygon(flat[f"brow{side}"][i], fill=_OUTLINE)


def _draw_cartoon_mouth(d, i, s) -> None:
    """Nose hook and mouth of cartoon ``i`` (an open mouth outlined, with tongue and teeth; a closed one a
    line, thicker for a smile)."""
    mouth = s["mouth"]
    d.line(s["nose"][i], fill=_OUTLINE, width=s["nose_w"], joint="curve")
    m = s["mouth_type"][i]
    if m == _OPEN:
        d.polygon(mouth["open_outline"][i], fill=_OUTLINE)
        d.polygon(mouth["open"][i], fill=(120, 30, 42))
        d.polygon(mouth["tongue"][i], fill=(232, 104, 112))
        d.polygon(mouth["teeth"][i], fill=(255, 255, 255))
    else:
        d.line(mouth["line"][i], fill=_OUTLINE, width=s["line_w"] + (s["ss"] if m == _SMILE else 0), joint="curve")


def _draw_cartoon(d, i, s, c) -> None:
    """Cartoon ``i``, back to front, each body and hair shape over its outline."""
    flat, outline = s["flat"], s["outline"]

    def shape(name, fill):
        d.polygon(outline[name][i], fill=_OUTLINE)
        d.polygon(flat[name][i], fill=fill)

    def face():
        d.polygon(s["blush"][0][i], fill=c["blush"][i])
        d.polygon(s["blush"][1][i], fill=c["blush"][i])
        _draw_cartoon_eyes(d, i, s, c)
        _draw_cartoon_mouth(d, i, s)

    _draw_person(shape, face, i, s, c)


def render_cartoon(params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """The same faces as ``render_faces`` drawn as cartoons: flat colours, dark outlines, bigger eyes with a
    white highlight, exaggerated smiles, plain pastel backgrounds. uint8 [n, size, size, 3]."""
    p = params
    size = _checked_size(size)
    n = _n(p)
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    ss = _supersample(size)
    C = size * ss
    colours = _cartoon_palette(p)
    shapes = _cartoon_shapes(p, C, ss)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        im = Image.new("RGB", (C, C), colours["bg"][i])
        _draw_cartoon(ImageDraw.Draw(im), i, shapes, colours)
        out[i] = np.asarray(im.reduce(ss))
    return out


# ------------------------------------------------------------------------------------------- registry
def faces(seed: int, n: int, size: int) -> np.ndarray:
    """``synthetic:faces``: photo-like faces, ``render_faces(sample_face_params(default_rng(seed), n), size)``."""
    return render_faces(sample_face_params(np.random.default_rng(int(seed)), int(n)), int(size))


def cartoon(seed: int, n: int, size: int) -> np.ndarray:
    """``synthetic:cartoon``: the same faces as ``synthetic:faces`` (same seed) drawn as cartoons."""
    return render_cartoon(sample_face_params(np.random.default_rng(int(seed)), int(n)), int(size))


if __name__ != "__main__":  # (under ``python -m`` the package has registered its own copy already)
    register_synthetic("faces", faces)
    register_synthetic("cartoon", cartoon)


# ----------------------------------------------------------------------------------------------- CLI
def save_grid(images: np.ndarray, path: str, cols: int | None = None, pad: int = 2) -> str:
    """Tile uint8 [n, h, w, 3] into one PNG (``cols`` defaults to ~sqrt(n))."""
    images = np.asarray(images)
    n, h, w, _ = images.shape
    cols = int(cols or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    Image.fromarray(grid).save(path)
    return path


def _bench(sizes=(32, 64, 128), n=64, reps=8) -> None:
    """images/s of each domain in this one thread: the best of ``reps`` batches of ``n`` by wall clock, and
    by this thread's CPU time (less sensitive to other processes on a busy machine)."""
    for dom, fn in (("faces", faces), ("cartoon", cartoon)):
        for size in sizes:
            fn(0, 8, size)  # warm the caches
            wall, cpu = [], []
            for rep in range(reps):
                t0, c0 = time.perf_counter(), time.thread_time()
                fn(rep + 1, n, size)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
            print(f"{dom:8s} {size:4d} px  {n / min(wall):7.0f} images/s wall (best of {reps} batches of {n}), "
                  f"{n / float(np.median(cpu)):7.0f} images/s per CPU-second (median)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tf_cartoon.data.faces", description=__doc__.split("\n\n")[0])
    ap.add_argument("--domain", choices=("faces", "cartoon"), default="faces")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for <domain>_<i>.png and grid.png")
    ap.add_argument("--bench", action="store_true", help="measure images/s at 32/64/128 px and exit")
    a = ap.parse_args(argv)
    if a.bench:
        _bench()
        return 0
    if not a.out:
        ap.error("--out is required (or --bench)")
    imgs = (faces if a.domain == "faces" else cartoon)(a.seed, a.n, a.size)
    os.makedirs(a.out, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(os.path.join(a.out, f"{a.domain}_{i:04d}.png"))
    print(save_grid(imgs, os.path.join(a.out, "grid.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
