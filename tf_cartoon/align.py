"""Face alignment the way FFHQ was made: find the face and five landmarks, cut FFHQ's oriented crop.

    python -m tf_cartoon.align photo.jpg more/*.png --out aligned --size 256

Landmarks come from MTCNN (Zhang et al. 2016: P-Net on an image pyramid, R-Net, O-Net, with non-maximum
suppression and bounding-box regression between the stages), run in TensorFlow. Its weights are the
``pnet.pt`` / ``rnet.pt`` / ``onet.pt`` files inside the ``facenet-pytorch`` wheel, read as data by our
torch-free reader (tf_cartoon.io.torch_pickle); nothing is downloaded and no torch is needed. Install them with
``pip install --no-deps facenet-pytorch`` (its torch / torchvision / numpy<2 requirements are not needed for the
weight files, and numpy<2 would clash with TensorFlow's), or ``pip install "tf_cartoon[align]"``.
The detector follows facenet-pytorch's MTCNN (its stage thresholds 0.6 / 0.7 / 0.7, pyramid factor 0.709,
smallest face 20 px, NMS thresholds, area resampling); the largest face in a photo is aligned.

The crop is FFHQ's (NVlabs/ffhq-dataset, recreate_aligned_images) with the five points standing in for the
68 dlib ones (the eye centres for the means of the eye contours, the mouth corners for points 48 / 54):
an oriented square around the eyes and mouth (:func:`ffhq_quad`), the photo shrunk first when the square is
much larger than the output, reflect-padded where the square leaves it (the padding blurred and faded to the
median colour), cut out with a quad transform at 4x the output size, then resized down (Lanczos).

Per photo, ``<out>/<name>.png``; a photo without a face is reported on one line and skipped; the exit
status is 2 when no photo was aligned.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from typing import NamedTuple

import numpy as np

from tf_cartoon import cli

# facenet-pytorch's MTCNN defaults
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
NET_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
ALIGN_MODES = ("auto", "mtcnn", "none")
SUPERSAMPLE = 4  # FFHQ transforms to 4096 px for its 1024 px output


class NoFaceError(cli.UsageError):
    """No face was found in a photo (a user-input problem: one line, exit status 2 in the tools)."""


class AlignUnavailable(cli.UsageError):
    """MTCNN's weight files are not installed."""


# ---------------------------------------------------------------------------
# FFHQ's crop
# ---------------------------------------------------------------------------

def ffhq_quad(landmarks) -> tuple[np.ndarray, float]:
    """FFHQ's oriented square from five landmarks [eye_left, eye_right, nose, mouth_left, mouth_right]
    (x, y image coordinates; "left" as seen in the image).

    Returns (quad [4, 2]: top-left, bottom-left, bottom-right, top-right corners, PIL's QUAD order; side).
    x = eye_to_eye - perp(eye_to_mouth) normalised and scaled to max(2 |eye_to_eye|, 1.8 |eye_to_mouth|),
    y = x turned by 90 degrees, centre = eye_avg + 0.1 eye_to_mouth; the side is 2 |x|.
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"landmarks must be 5 finite (x, y) points, got {lm.shape}")
    eye_left, eye_right, _, mouth_left, mouth_right = lm
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = math.hypot(*x)
    if norm == 0:
        raise ValueError("degenerate landmarks: the eyes and the mouth coincide")
    x = x / norm * max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]), math.hypot(*x) * 2.0


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian over H and W of float [H, W, C] (taps to 4 sigma, mirrored edges: scipy.ndimage's
    gaussian_filter with mode="reflect", which FFHQ's script uses)."""
    if sigma <= 0:
        return image
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        # numpy's "symmetric" repeats the edge sample, as scipy's "reflect"; a pad wider than the image
        # mirrors back and forth
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for k, t in enumerate(taps):
            acc += t * np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc
    return out


def ffhq_crop(image, landmarks, size: int, padding: bool = True) -> np.ndarray:
    """FFHQ's aligned crop of uint8 ``image`` [H, W, 3] at ``size`` px (uint8 [size, size, 3])."""
    from PIL import Image

    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    quad, qsize = ffhq_quad(landmarks)
    img = Image.fromarray(np.asarray(image, np.uint8), "RGB")
    transform_size = SUPERSAMPLE * size

    shrink = int(math.floor(qsize / size * 0.5))  # a much larger square: shrink the photo first
    if shrink > 1:
        img = img.resize((int(round(img.size[0] / shrink)), int(round(img.size[1] / shrink))), Image.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink

    border = max(int(round(qsize * 0.1)), 3)  # keep a margin around the square, drop the rest
    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, img.size[0]),
            min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[:2]

    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0), max(hi[0] - img.size[0] + border, 0),
           max(hi[1] - img.size[1] + border, 0))
    if padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(round(qsize * 0.3)))
        a = np.pad(np.asarray(img, np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = a.shape
        yy, xx = np.ogrid[:h, :w]
        # 0 inside the photo, rising toward 1 at the padded edges
        mask = np.maximum(1.0 - np.minimum(xx / pad[0], (w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(yy / pad[1], (h - 1 - yy) / pad[3]))[..., None].astype(np.float32)
        blur = qsize * 0.02
        a = a + (gaussian_blur(a, blur).astype(np.float32) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        a = a + (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")
        quad = quad + np.asarray(pad[:2])

    img = img.transform((transform_size, transform_size), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    if size < transform_size:
        img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img, np.uint8)


def center_square(image, size: int) -> np.ndarray:
    """The centred square of uint8 ``image`` resized (Lanczos) to ``size`` px: what the projector does to a
    photo that is not aligned."""
    from PIL import Image

    a = np.asarray(image, np.uint8)
    h, w = a.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    a = a[top:top + side, left:left + side]
    if side != size:
        a = np.asarray(Image.fromarray(a, "RGB").resize((size, size), Image.LANCZOS), np.uint8)
    return a


# ---------------------------------------------------------------------------
# MTCNN
# ---------------------------------------------------------------------------

def weights_dir() -> str | None:
    """facenet-pytorch's data folder (found without importing the package, which needs torchvision)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        d = os.path.join(base, "data")
        if all(os.path.isfile(os.path.join(d, f)) for f in NET_FILES):
            return d
    return None


def area_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area (box) resampling of float [H, W, C] to [out_h, out_w, C]: output pixel i averages input pixels
    floor(i H / out_h) .. ceil((i + 1) H / out_h) - 1 (torch's interpolate(mode="area"), i.e. adaptive average
    pooling, which facenet-pytorch's MTCNN resizes with)."""
    h, w = image.shape[:2]
    s = np.zeros((h + 1, w + 1, image.shape[2]), np.float64)
    s[1:, 1:] = np.cumsum(np.cumsum(image, axis=0, dtype=np.float64), axis=1)
    i, j = np.arange(out_h), np.arange(out_w)
    y0, y1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
    x0, x1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
    total = (s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0])
    return (total / ((y1 - y0)[:, None, None] * (x1 - x0)[None, :, None])).astype(np.float32)


def _prelu(x, a):
    import tensorflow as tf

    return tf.maximum(x, 0.0) + a * tf.minimum(x, 0.0)


def _max_pool_ceil(x, k: int, s: int):
    """Max pooling with torch's ceil_mode=True (no padding): the last window may hang over the bottom / right
    edge (it must start inside the input); what hangs over does not count."""
    import tensorflow as tf

    out = []
    for n in (int(x.shape[1]), int(x.shape[2])):
        o = -(-(n - k) // s) + 1
        if (o - 1) * s >= n:
            o -= 1
        out.append((o - 1) * s + k - n)
    x = tf.pad(x, [[0, 0], [0, max(out[0], 0)], [0, max(out[1], 0)], [0, 0]], constant_values=-np.inf)
    return tf.nn.max_pool2d(x, k, s, "VALID")


class MTCNNNets:
    """P-Net, R-Net and O-Net as TensorFlow functions on NHWC float32 input (pixels scaled to about [-1, 1]).

    ``state_dicts``: {"pnet": sd, "rnet": sd, "onet": sd} with facenet-pytorch's parameter names and torch
    layouts (conv [O, I, kh, kw], linear [O, I]); :meth:`load` reads them from the installed wheel.
    Outputs (as facenet-pytorch's modules, channels last): pnet -> (reg [N, h, w, 4], prob [N, h, w, 2]);
    rnet -> (reg [N, 4], prob [N, 2]); onet -> (reg [N, 4], landmarks [N, 10] (x0..x4, y0..y4), prob [N, 2]).
    """

    def __init__(self, state_dicts):
        import tensorflow as tf

        self.w = {}
        for net, sd in state_dicts.items():
            for key, v in sd.items():
                v = np.asarray(v, np.float32)
                if v.ndim == 4:
                    v = v.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
                elif v.ndim == 2:
                    v = v.T
                self.w[f"{net}.{key}"] = tf.constant(v)

    @classmethod
    def load(cls, folder: str | None = None) -> "MTCNNNets":
        from tf_cartoon.io import torch_pickle

        folder = folder or weights_dir()
        if folder is None:
            raise AlignUnavailable("face alignment needs MTCNN's weights from the facenet-pytorch wheel: "
                                   "pip install --no-deps facenet-pytorch (or give --align none)")
        return cls({f[:-3]: torch_pickle.load_state_dict(os.path.join(folder, f), f"MTCNN weights {f}")
                    for f in NET_FILES})

    def _conv(self, x, name):
        import tensorflow as tf

        return tf.nn.conv2d(x, self.w[name + ".weight"], 1, "VALID") + self.w[name + ".bias"]

    def _dense(self, x, name):
        import tensorflow as tf

        return tf.matmul(x, self.w[name + ".weight"]) + self.w[name + ".bias"]

    @staticmethod
    def _flatten_torch(x):
        """Flatten NHWC in the order the torch modules use: they permute NCHW to (N, W, H, C) first."""
        import tensorflow as tf

        x = tf.transpose(x, [0, 2, 1, 3])
        return tf.reshape(x, [tf.shape(x)[0], -1])

    def pnet(self, x):
        import tensorflow as tf

        w = self.w
        x = _prelu(self._conv(x, "pnet.conv1"), w["pnet.prelu1.weight"])
        x = _max_pool_ceil(x, 2, 2)
        x = _prelu(self._conv(x, "pnet.conv2"), w["pnet.prelu2.weight"])
        x = _prelu(self._conv(x, "pnet.conv3"), w["pnet.prelu3.weight"])
        return self._conv(x, "pnet.conv4_2"), tf.nn.softmax(self._conv(x, "pnet.conv4_1"), axis=-1)

    def rnet(self, x):
        import tensorflow as tf

        w = self.w
        x = _max_pool_ceil(_prelu(self._conv(x, "rnet.conv1"), w["rnet.prelu1.weight"]), 3, 2)
        x = _max_pool_ceil(_prelu(self._conv(x, "rnet.conv2"), w["rnet.prelu2.weight"]), 3, 2)
        x = _prelu(self._conv(x, "rnet.conv3"), w["rnet.prelu3.weight"])
        x = _prelu(self._dense(self._flatten_torch(x), "rnet.dense4"), w["rnet.prelu4.weight"])
        return self._dense(x, "rnet.dense5_2"), tf.nn.softmax(self._dense(x, "rnet.dense5_1"), axis=-1)

    def onet(self, x):
        import tensorflow as tf

        w = self.w
        x = _max_pool_ceil(_prelu(self._conv(x, "onet.conv1"), w["onet.prelu1.weight"]), 3, 2)
        x = _max_pool_ceil(_prelu(self._conv(x, "onet.conv2"), w["onet.prelu2.weight"]), 3, 2)
        x = _max_pool_ceil(_prelu(self._conv(x, "onet.conv3"), w["onet.prelu3.weight"]), 2, 2)
        x = _prelu(self._conv(x, "onet.conv4"), w["onet.prelu4.weight"])
        x = _prelu(self._dense(self._flatten_torch(x), "onet.dense5"), w["onet.prelu5.weight"])
        return (self._dense(x, "onet.dense6_2"), self._dense(x, "onet.dense6_3"),
                tf.nn.softmax(self._dense(x, "onet.dense6_1"), axis=-1))


def nms(boxes, scores, threshold: float, mode: str = "union", plus_one: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, highest score first. A box is dropped when its overlap
    with a kept one exceeds ``threshold``: intersection over union, or over the smaller area (``"min"``).
    ``plus_one``: pixel-inclusive areas (x2 - x1 + 1), as MTCNN's last stage; otherwise x2 - x1."""
    boxes = np.asarray(boxes, np.float64)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    one = 1.0 if plus_one else 0.0
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, np.int64)


def _square(boxes):
    """Each box made square around its centre (side = the longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def _regress(boxes, reg):
    """Bounding-box regression with pixel-inclusive sizes (the R-Net / O-Net stages)."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _crops(image, boxes, out: int):
    """The boxes' pixels (1-based inclusive corners, truncated and clipped to the photo) resized to out x out."""
    h, w = image.shape[:2]
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    keep = (ey > y - 1) & (ex > x - 1)
    crops = [area_resize(image[y[k] - 1:ey[k], x[k] - 1:ex[k]], out, out) for k in np.flatnonzero(keep)]
    return (np.stack(crops) if crops else np.zeros((0, out, out, 3), np.float32)), keep


class Detection(NamedTuple):
    boxes: np.ndarray  # [N, 5]: x1, y1, x2, y2, probability
    landmarks: np.ndarray  # [N, 5, 2]: eye_left, eye_right, nose, mouth_left, mouth_right (x, y)


class MTCNN:
    """Face detector with five landmarks (facenet-pytorch's MTCNN pipeline on :class:`MTCNNNets`)."""

    def __init__(self, nets: MTCNNNets | None = None, min_face_size: int = MIN_FACE_SIZE,
                 thresholds=THRESHOLDS, factor: float = PYRAMID_FACTOR):
        self.nets = nets or MTCNNNets.load()
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor

    @staticmethod
    def _normalize(x):
        return (x - 127.5) * 0.0078125

    def detect(self, image) -> Detection:
        """Faces in uint8 [H, W, 3] RGB, largest first."""
        import tensorflow as tf

        img = np.asarray(image, np.float32)
        h, w = img.shape[:2]
        t1, t2, t3 = self.thresholds
        empty = Detection(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))

        # Stage 1: P-Net over a pyramid whose smallest level still holds one 12 px window.
        scale = 12.0 / self.min_face_size
        side = min(h, w) * scale
        found = []
        while side >= 12:
            level = area_resize(img, int(h * scale + 1), int(w * scale + 1))
            reg, prob = (np.asarray(t) for t in self.nets.pnet(tf.constant(self._normalize(level)[None])))
            ys, xs = np.nonzero(prob[0, :, :, 1] >= t1)
            if len(ys):
                q1 = np.floor((2.0 * np.stack([xs, ys], 1) + 1) / scale)
                q2 = np.floor((2.0 * np.stack([xs, ys], 1) + 12) / scale)
                b = np.concatenate([q1, q2, prob[0, ys, xs, 1:2], reg[0, ys, xs]], axis=1)
                found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
            scale *= self.factor
            side *= self.factor
        if not found:
            return empty
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = np.concatenate([boxes[:, :4] + boxes[:, 5:9] * np.stack([bw, bh, bw, bh], 1), boxes[:, 4:5]], 1)
        boxes = _square(boxes)

        # Stage 2: R-Net on 24 px crops.
        crops, keep = _crops(img, boxes, 24)
        boxes = boxes[keep]
        if not len(boxes):
            return empty
        reg, prob = (np.asarray(t) for t in self.nets.rnet(tf.constant(self._normalize(crops))))
        ok = prob[:, 1] > t2
        boxes = np.concatenate([boxes[ok, :4], prob[ok, 1:2]], 1)
        reg = reg[ok]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[pick], reg[pick]))
        if not len(boxes):
            return empty

        # Stage 3: O-Net on 48 px crops: final boxes and the landmarks.
        crops, keep = _crops(img, boxes, 48)
        boxes = boxes[keep]
        if not len(boxes):
            return empty
        reg, points, prob = (np.asarray(t) for t in self.nets.onet(tf.constant(self._normalize(crops))))
        ok = prob[:, 1] > t3
        boxes = np.concatenate([boxes[ok, :4], prob[ok, 1:2]], 1)
        points, reg = points[ok], reg[ok]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        lm = np.stack([bw[:, None] * points[:, :5] + boxes[:, 0:1] - 1,
                       bh[:, None] * points[:, 5:] + boxes[:, 1:2] - 1], axis=-1)
        boxes = _regress(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min", plus_one=True)
        boxes, lm = boxes[pick], lm[pick]
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        return Detection(boxes[order].astype(np.float32), lm[order].astype(np.float32))


# ---------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------

def as_rgb(photo) -> np.ndarray:
    """A photo array as uint8 [H, W, 3]: grey [H, W] is repeated, an alpha channel composited on white."""
    a = np.asarray(photo)
    if a.dtype != np.uint8:
        raise ValueError(f"photo must be a uint8 array, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"photo must be [H, W, 3] (or [H, W] / [H, W, 4]), got {a.shape}")
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = np.uint8(np.rint(a[..., :3] * alpha + 255.0 * (1.0 - alpha)))
    return np.ascontiguousarray(a)


def read_photo(path) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (EXIF rotation applied); OSError / ValueError naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"photo {path} does not exist or is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGBA") if "A" in im.getbands() else im.convert("RGB")
            return as_rgb(np.asarray(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"photo {path} is not a readable image ({type(e).__name__}: {e})") from None


_DETECTOR: MTCNN | None = None


def detector() -> MTCNN:
    """One MTCNN per process (its weights are read once)."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = MTCNN()
    return _DETECTOR


def align_photo(photo, size: int, mode: str = "auto", det: MTCNN | None = None) -> np.ndarray:
    """A photo (uint8 array) as the generator's input, uint8 [size, size, 3].

    mode ``mtcnn``: FFHQ's crop around the largest face MTCNN finds (NoFaceError when none);
    ``none``: the centred square, resized; ``auto``: the photo as it is when it is already a square of
    ``size`` px (e.g. an image a generator rendered; MTCNN finds no face that small), else ``mtcnn``.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {mode!r}")
    a = as_rgb(photo)
    if mode == "none" or (mode == "auto" and a.shape[:2] == (size, size)):
        return center_square(a, size)
    found = (det or detector()).detect(a)
    if not len(found.boxes):
        raise NoFaceError(f"no face found in the {a.shape[1]}x{a.shape[0]} photo (MTCNN; faces of at least "
                          f"{(det or detector()).min_face_size} px)")
    return ffhq_crop(a, found.landmarks[0], size)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser():
    p = cli.parser("python -m tf_cartoon.align", __doc__)
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos (any format PIL reads)")
    cli.add_role(p, "out", required=True, help="output directory (one <name>.png per aligned photo)")
    p.add_argument("--size", type=int, default=256, help="output size in px (the generator's; default 256)")
    p.add_argument("--min_face_size", type=int, default=MIN_FACE_SIZE, help="smallest face MTCNN looks for, px")
    return p


@cli.command(setup="generate")
def main(argv=None) -> int:
    from tf_cartoon.images import save_png
    from tf_cartoon.project import photo_names

    args = _parser().parse_args(argv)
    with cli.user_input():
        if args.size < 1:
            raise ValueError(f"--size must be >= 1, got {args.size}")
        if args.min_face_size < 12:
            raise ValueError(f"--min_face_size must be >= 12 (P-Net's window), got {args.min_face_size}")
        for path in args.photos:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"photo {path} does not exist or is not a file")
        det = MTCNN(min_face_size=args.min_face_size)
    os.makedirs(args.out, exist_ok=True)
    done = 0
    for path, name in zip(args.photos, photo_names(args.photos)):
        try:
            aligned = align_photo(read_photo(path), args.size, "mtcnn", det)
        except (ValueError, OSError) as e:
            print(f"skipped {path}: {cli.one_line(e)}", file=sys.stderr, flush=True)
            continue
        out = save_png(os.path.join(args.out, f"{name}.png"), aligned)
        print(f"{path} -> {out}", file=sys.stderr, flush=True)
        done += 1
    if not done:
        raise cli.UsageError(f"no photo aligned (of {len(args.photos)})")
    print(f"wrote {args.out}: {done} of {len(args.photos)} photo(s) aligned at {args.size} px")
    return 0


if __name__ == "__main__":
    cli.run(main)
