"""tf_cartoon.align: MTCNN in TensorFlow against facenet-pytorch's torch modules, landmarks on a real photo,
FFHQ's crop geometry, the command line."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

from tests.helpers import one_line_error
from tf_cartoon import align

needs_weights = pytest.mark.skipif(align.weights_dir() is None,
                                   reason="MTCNN weights need facenet-pytorch (pip install --no-deps facenet-pytorch)")


def _astronaut_path():
    spec = importlib.util.find_spec("skimage")  # finds the package without importing it (its deps may be absent)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "data", "astronaut.png")
    return path if os.path.isfile(path) else None


ASTRONAUT = _astronaut_path()
needs_astronaut = pytest.mark.skipif(ASTRONAUT is None, reason="astronaut.png ships with scikit-image "
                                                               "(pip install --no-deps scikit-image)")
# Hand-read from a 8x enlargement of astronaut.png with a 10 px grid: pupil centres, nose tip, mouth corners.
ASTRONAUT_POINTS = np.array([[203, 101], [245, 104], [223, 127], [202, 140], [244, 141]], np.float64)


def _batched_nms(torch):
    """torchvision.ops.boxes.batched_nms for the test's stand-in torchvision: greedy IoU suppression (areas
    x2 - x1, no +1) within each index, indices of kept boxes by decreasing score."""
    def batched_nms(boxes, scores, idxs, iou_threshold):
        keep = []
        for i in torch.unique(idxs):
            sel = torch.nonzero(idxs == i).flatten()
            order = sel[torch.argsort(scores[sel], descending=True)]
            while order.numel():
                k, order = order[0], order[1:]
                keep.append(int(k))
                b, rest = boxes[k], boxes[order]
                iw = (torch.minimum(b[2], rest[:, 2]) - torch.maximum(b[0], rest[:, 0])).clamp(min=0)
                ih = (torch.minimum(b[3], rest[:, 3]) - torch.maximum(b[1], rest[:, 1])).clamp(min=0)
                inter = iw * ih
                union = (b[2] - b[0]) * (b[3] - b[1]) + (rest[:, 2] - rest[:, 0]) * (rest[:, 3] - rest[:, 1]) - inter
                order = order[inter / union <= iou_threshold]
        keep = torch.tensor(keep, dtype=torch.long)
        return keep[torch.argsort(scores[keep], descending=True)]
    return batched_nms


@pytest.fixture(scope="module")
def facenet():
    """facenet-pytorch's mtcnn.py and detect_face.py, loaded from the wheel's files with a stand-in torchvision
    (the real one does not load beside this CPU torch; detect_face needs only batched_nms from it)."""
    torch = pytest.importorskip("torch")
    if align.weights_dir() is None:
        pytest.skip("facenet-pytorch is not installed")
    base = os.path.dirname(align.weights_dir())
    stubs = {name: types.ModuleType(name) for name in (
        "torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
        "torchvision.ops.boxes", "facenet_pytorch", "facenet_pytorch.models", "facenet_pytorch.models.utils")}
    stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]
    stubs["torchvision.ops.boxes"].batched_nms = _batched_nms(torch)
    stubs["facenet_pytorch"].__path__ = [base]
    stubs["facenet_pytorch.models"].__path__ = [os.path.join(base, "models")]
    stubs["facenet_pytorch.models.utils"].__path__ = [os.path.join(base, "models", "utils")]
    saved = {name: sys.modules.get(name) for name in [*stubs, "facenet_pytorch.models.utils.detect_face",
                                                       "facenet_pytorch.models.mtcnn"]}
    sys.modules.update(stubs)
    try:
        mods = {}
        for name, rel in (("facenet_pytorch.models.utils.detect_face", "models/utils/detect_face.py"),
                          ("facenet_pytorch.models.mtcnn", "models/mtcnn.py")):
            spec = importlib.util.spec_from_file_location(name, os.path.join(base, rel))
            mods[name] = importlib.util.module_from_spec(spec)
            sys.modules[name] = mods[name]
            spec.loader.exec_module(mods[name])
        m = mods["facenet_pytorch.models.mtcnn"]
        nets = types.SimpleNamespace(torch=torch, pnet=m.PNet().eval(), rnet=m.RNet().eval(), onet=m.ONet().eval(),
                                     detect_face=mods["facenet_pytorch.models.utils.detect_face"].detect_face)
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    return nets


@pytest.fixture(scope="module")
def ours():
    if align.weights_dir() is None:
        pytest.skip("facenet-pytorch is not installed")
    return align.MTCNN()


@pytest.mark.parametrize("net, shape", [("pnet", (2, 37, 45)), ("pnet", (1, 12, 12)), ("rnet", (5, 24, 24)),
                                        ("onet", (4, 48, 48))])
def test_nets_equal_facenet_pytorch(facenet, ours, net, shape):
    torch = facenet.torch
    x = np.random.RandomState(len(net) + shape[1]).uniform(-1, 1, (shape[0], 3, shape[1], shape[2])).astype(np.float32)
    with torch.no_grad():
        want = [o.numpy() for o in getattr(facenet, net)(torch.from_numpy(x))]
    got = [np.asarray(o) for o in getattr(ours.nets, net)(x.transpose(0, 2, 3, 1))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.ndim == 4:
            w = w.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)


def test_area_resize_equals_torch_area_interpolation():
    torch = pytest.importorskip("torch")
    x = np.random.RandomState(0).uniform(0, 255, (37, 53, 3)).astype(np.float32)
    for size in [(12, 17), (24, 24), (37, 53), (50, 60)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(2, 0, 1))[None], size=size, mode="area")
        np.testing.assert_allclose(align.area_resize(x, *size), want[0].numpy().transpose(1, 2, 0),
                                   rtol=1e-5, atol=1e-3)


@needs_astronaut
def test_detection_equals_facenet_pytorch_on_astronaut(facenet, ours):
    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    torch = facenet.torch
    with torch.no_grad():
        boxes, points = facenet.detect_face(photo, align.MIN_FACE_SIZE, facenet.pnet, facenet.rnet, facenet.onet,
                                            list(align.THRESHOLDS), align.PYRAMID_FACTOR, "cpu")
    got = ours.detect(photo)
    assert len(got.boxes) == len(boxes[0]) == 1
    np.testing.assert_allclose(got.boxes, np.asarray(boxes[0], np.float64), rtol=1e-4, atol=0.05)
    np.testing.assert_allclose(got.landmarks, np.asarray(points[0], np.float64), rtol=1e-4, atol=0.05)


@needs_astronaut
@needs_weights
def test_astronaut_landmarks_near_hand_checked_points(ours):
    photo = align.read_photo(ASTRONAUT)
    found = ours.detect(photo)
    assert len(found.boxes) == 1 and found.boxes[0, 4] > 0.99
    err = np.hypot(*(found.landmarks[0] - ASTRONAUT_POINTS).T)
    assert err.max() < 4.0, err


def _dots(points, shape, radius=3.0):
    """A dark image with a bright disc at each point (anti-aliased by 4x4 supersampling). Points are in
    landmark detectors' (and FFHQ's) convention: pixel (i, j) is centred at x = i, y = j."""
    h, w = shape
    yy, xx = np.mgrid[0:h * 4, 0:w * 4] / 4.0 - 0.375
    img = np.zeros((h * 4, w * 4), np.float64)
    for x, y in points:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = 255.0
    img = img.reshape(h, 4, w, 4).mean(axis=(1, 3))
    return np.repeat(np.uint8(np.rint(img))[..., None], 3, axis=-1)


def _centroids(image, expected, window):
    """Brightness-weighted centroid in a window around each expected point."""
    a = image[..., 0].astype(np.float64)
    out = []
    for x, y in expected:
        x0, y0 = int(max(0, x - window)), int(max(0, y - window))
        patch = a[y0:int(y + window) + 1, x0:int(x + window) + 1]
        yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
        out.append([(patch * xx).sum() / patch.sum() + x0 + 0.5, (patch * yy).sum() / patch.sum() + y0 + 0.5])
    return np.array(out)


def test_ffhq_quad_formula():
    # upright face: eyes 60 px apart, mouth 70 px below the eyes' midpoint
    lm = np.array([[170, 200], [230, 200], [200, 240], [175, 270], [225, 270]], np.float64)
    quad, side = align.ffhq_quad(lm)
    s = max(2.0 * 60, 1.8 * 70)  # half the side: max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    c = np.array([200, 200 + 0.1 * 70])
    np.testing.assert_allclose(quad, [c + [-s, -s], c + [-s, s], c + [s, s], c + [s, -s]], atol=1e-9)
    assert side == pytest.approx(2 * s)
    # rotating, scaling and moving the landmarks does the same to the square
    t = math.radians(25)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    quad2, side2 = align.ffhq_quad(lm @ rot.T * 1.5 + [40, -10])
    np.testing.assert_allclose(quad2, quad @ rot.T * 1.5 + [40, -10], atol=1e-9)
    assert side2 == pytest.approx(1.5 * side)


@pytest.mark.parametrize("angle, scale, shift, size", [(0, 1.0, (0, 0), 64), (20, 1.3, (30, 15), 64),
                                                       (-35, 0.8, (-60, 40), 128), (10, 2.5, (0, -60), 32)])
def test_crop_puts_landmarks_where_ffhq_formula_says(angle, scale, shift, size):
    """Landmarks drawn as dots, rotated, scaled, moved (one case near the border: reflect padding; two shrink the
    photo first); in the crop each dot lands where FFHQ's formula puts it. With e = |eye_to_eye|, m =
    |eye_to_mouth| of the upright face and s = max(2 e, 1.8 m), a point p sits at size * (1/2 + (p - centre) /
    (2 s)) in the output, plus, when the photo is shrunk by k first, the offset FFHQ's shrink makes: the photo is
    resized to rint(W / k) x rint(H / k), moving a pixel index p to (p + 1/2) rint(W / k) / W - 1/2, while the
    square is divided by k."""
    base = np.array([[-30, 0], [30, 0], [0, 40], [-25, 70], [25, 70]], np.float64)  # about eye_avg (0, 0)
    s = max(2.0 * 60, 1.8 * 70)
    centre = np.array([0, 0.1 * 70])
    expected = size * (0.5 + (base - centre) / (2 * s))
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    lm = base @ rot.T * scale + np.array([200, 170]) + shift
    wh = np.array([405.0, 360.0])
    k = math.floor(2 * s * scale / size * 0.5)
    if k > 1:
        d = (lm + 0.5) * np.rint(wh / k) / wh - 0.5 - lm / k  # shrunk pixels, image axes
        expected = expected + size * (d @ rot) / (2 * s * scale / k)  # onto the square's axes
    image = _dots(lm, (int(wh[1]), int(wh[0])), radius=5 * scale)
    out = align.ffhq_crop(image, lm, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    got = _centroids(out, expected, window=max(2, size * 5 * 1.5 / (2 * s)))
    np.testing.assert_allclose(got, expected, atol=0.1)  # output pixels


def test_crop_padding_is_blurred_reflection():
    """A square leaving the photo: the area outside comes from reflect padding, blurred toward the median, not
    black."""
    image = np.full((100, 100, 3), 200, np.uint8)
    lm = np.array([[10, 20], [40, 20], [25, 35], [14, 50], [36, 50]], np.float64)  # face at the top-left corner
    out = align.ffhq_crop(image, lm, 32)
    assert out.min() > 150  # a constant photo stays constant under reflection, blur and the median


def test_gaussian_blur_equals_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.RandomState(1).uniform(0, 255, (31, 40, 3)).astype(np.float32)
    for sigma in (0.7, 2.0, 9.0):
        np.testing.assert_allclose(align.gaussian_blur(x, sigma), ndimage.gaussian_filter(x, [sigma, sigma, 0]),
                                   rtol=1e-4, atol=1e-3)


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU of boxes 0 and 1: 81 / 119 = 0.68; box 3 lies inside box 0 (IoU 16 / 100, overlap of the smaller 1)
    np.testing.assert_array_equal(align.nms(boxes, scores, 0.5), [3, 0, 2])
    np.testing.assert_array_equal(align.nms(boxes, scores, 0.7), [3, 0, 1, 2])
    np.testing.assert_array_equal(align.nms(boxes, scores, 0.7, mode="min"), [3, 1, 2])


def test_align_photo_modes():
    square = np.random.RandomState(2).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(align.align_photo(square, 32, "auto"), square)
    wide = np.random.RandomState(3).randint(0, 256, (40, 60, 3)).astype(np.uint8)
    assert align.align_photo(wide, 32, "none").shape == (32, 32, 3)
    with pytest.raises(ValueError, match="align must be one of"):
        align.align_photo(square, 32, "dlib")
    with pytest.raises(ValueError, match="uint8"):
        align.align_photo(square.astype(np.float32), 32, "none")


@needs_weights
def test_no_face_error(ours):
    with pytest.raises(align.NoFaceError, match="no face found"):
        align.align_photo(np.full((80, 100, 3), 128, np.uint8), 32, "mtcnn", ours)


@needs_weights
def test_cli_no_face_one_line_per_photo_exit_2(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((80, 100, 3), 128, np.uint8)).save(blank)
    rc = align.main([str(blank), "--out", str(tmp_path / "out"), "--size", "32"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith(f"skipped {blank}: no face found")
    assert err[-1] == "error: no photo aligned (of 1)"


def test_cli_bad_input(tmp_path, capsys):
    assert align.main([str(tmp_path / "none.png"), "--out", str(tmp_path)]) == 2
    assert "none.png does not exist" in one_line_error(capsys)
    assert align.main([str(tmp_path / "none.png"), "--out", str(tmp_path), "--size", "0"]) == 2
    assert "--size must be >= 1" in one_line_error(capsys)


@needs_astronaut
@needs_weights
def test_cli_aligns_astronaut(tmp_path, capsys):
    rc = align.main([ASTRONAUT, "--out", str(tmp_path), "--size", "64"])
    assert rc == 0
    out = np.asarray(Image.open(tmp_path / "astronaut.png"))
    assert out.shape == (64, 64, 3)


def test_missing_weights_one_line_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(align, "weights_dir", lambda: None)
    with pytest.raises(align.AlignUnavailable, match="pip install --no-deps facenet-pytorch"):
        align.MTCNNNets.load()
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((40, 50, 3), 9, np.uint8)).save(photo)
    assert align.main([str(photo), "--out", str(tmp_path / "out")]) == 2
    assert "facenet-pytorch" in one_line_error(capsys)
