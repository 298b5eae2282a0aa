"""The judge: a small CNN that reads the built-in domains, and the structure metrics computed from it.

    from tf_cartoon.metrics import judge
    j = judge.load()                          # the shipped judge (tf_cartoon/assets/judge)
    out = j(images)                           # NHWC uint8, or float in [-1, 1]; any size (resized to 32 px)
    out.domain_prob, out.params["cx"], out.features
    judge.structure_error(j(source_images), j(target_images), j.spreads)   # -> (value, per-parameter)
    judge.domain_rate(out), judge.judge_fd(out, j(real_cartoons))

``synthetic:faces`` and ``synthetic:cartoon`` (tf_cartoon.data.faces) draw the same structural parameters
(``sample_face_params``) in two styles. The judge, trained on renders of both (infinite data: every step
renders fresh faces), predicts for any image

* the domain: P(cartoon);
* the structural parameters it can see at 32 px (``CONTINUOUS``: head centre, half-height, width / height,
  yaw, tilt; ``CATEGORICAL``: hair style, mouth type, skin tone, hair colour), continuous ones in the
  parameter's own units, categorical ones as classes;
* ``features``: its penultimate layer (``FEATURE_DIM`` values), the space of ``judge_fd``.

Metrics (``python -m tf_cartoon.evaluate --metrics structure,domain,judge_fd``):

* ``structure_error(a, b)``: a source and a target image of the same seed and noise should show the same face.
  Per parameter in ``STRUCTURE``: the mean disagreement of the two predictions (|a - b| for continuous ones,
  a != b for classes) divided by the parameter's spread, the disagreement of two independent draws of
  ``sample_face_params`` (E|X - X'|; for classes 1 - sum p_c^2), then averaged over the parameters: 0 is the
  same structure, about 1 unrelated faces. Even true pairs (faces(p) vs cartoon(p)) do not reach 0, since the
  judge reads each domain with its own errors: that floor is measured on held-out render pairs at training
  time and recorded beside the weights (``floor``).
* ``domain_rate(out)``: the share of images judged cartoon (P(cartoon) > 0.5).
* ``judge_fd(a, b)``: the Frechet distance (tf_cartoon.metrics.stats) between the judge's features of two sets.

Training (reproducible; ``configs/judge.cfg`` holds the settings and the expected runtime):

    python -m tf_cartoon.metrics.judge --flagfile=configs/judge.cfg

writes ``judge.npz`` (the weights, read with ``allow_pickle=False``) and ``judge.json`` (architecture,
target normalisation, spreads, the floor and the held-out accuracy per parameter) into ``--out``.
``docs/judge_table.md`` shows the shipped judge's figures; ``tests/test_judge.py`` checks them on fresh renders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from typing import NamedTuple

import numpy as np

from tf_cartoon.data import faces as F

JUDGE_SIZE = 32
FEATURE_DIM = 128
FORMAT = "tf_cartoon.judge/1"
# Eye height / distance, nose length and mouth size vary by less than a pixel at 32 px (e.g. eye_sep spans
# 0.02 head half-heights, 0.2 px): no 32 px judge reads them, so they are not judged; the eyes' and the mouth's
# place in the image follows from the head's centre, size, tilt and yaw, which are.
CONTINUOUS = ("cx", "cy", "ry", "aspect", "yaw", "tilt")
CATEGORICAL = {"hair_style": len(F.HAIR_STYLES), "mouth_type": len(F.MOUTH_TYPES),
               "skin_tone": len(F.SKIN_TONES), "hair_colour": len(F.HAIR_COLOURS)}
# What structure_error averages: the structure the judge reads in BOTH domains (held-out R^2 >= 0.5 or accuracy
# well above chance on photo-like faces and cartoons): where the head is, its size, shape and tilt, the hair
# style. Yaw (R^2 0.13) and the mouth type (accuracy 0.38, chance 0.33) are readable on cartoons only, so on a
# photo-like source they would add noise of the judge's, not the generator's; they are predicted and reported,
# as are skin tone and hair colour (colours, not structure).
STRUCTURE = ("cx", "cy", "ry", "aspect", "tilt", "hair_style")
SPREAD_SAMPLES, SPREAD_SEED = 200_000, 12345  # the draws behind the normalisation and the spreads
CHANNELS = (32, 48, 96)  # per resolution 16, 8, 4 px, after a 2x2 space-to-depth of the 32 px input


def default_dir() -> str:
    from tf_cartoon.assets import ASSETS_DIR

    return os.path.join(ASSETS_DIR, "judge")


# ---------------------------------------------------------------------------------------------- targets
def targets(params: dict) -> dict[str, np.ndarray]:
    """The judged parameters of ``sample_face_params`` output: float32 continuous, int64 classes."""
    out = {k: np.asarray(params[k], np.float32) for k in CONTINUOUS}
    out.update({k: np.asarray(params[k], np.int64) for k in CATEGORICAL})
    return out


def parameter_statistics(n: int = SPREAD_SAMPLES, seed: int = SPREAD_SEED) -> dict:
    """Mean / std (the regression targets' normalisation) and spread of every judged parameter, from ``n`` draws.

    spread: the mean disagreement of two independent draws, E|X - X'| (continuous) or P(X != X') (classes);
    for continuous ones from the sorted sample (Gini's mean difference, exact for the sample)."""
    t = targets(F.sample_face_params(np.random.default_rng(seed), n))
    stats = {}
    for k in CONTINUOUS:
        x = np.sort(t[k].astype(np.float64))
        i = np.arange(1, n + 1)
        gmd = 2.0 * np.sum((2 * i - n - 1) * x) / (n * (n - 1))
        stats[k] = {"mean": float(x.mean()), "std": float(x.std()), "spread": float(gmd)}
    for k, c in CATEGORICAL.items():
        p = np.bincount(t[k], minlength=c) / n
        stats[k] = {"classes": c, "spread": float(1.0 - np.sum(p * p))}
    return stats


# ---------------------------------------------------------------------------------------------- network
def build_model(channels=CHANNELS, feature_dim: int = FEATURE_DIM):
    """The judge: [N, 32, 32, 3] in [-1, 1] -> (features [N, feature_dim], one raw output vector per image).

    The raw vector is [domain logit | standardised continuous predictions | class logits of each categorical]
    (``Judge.decode`` splits it); one vector per image is what evaluate caches."""
    import keras
    from keras import layers

    inp = keras.Input((JUDGE_SIZE, JUDGE_SIZE, 3))
    # 2x2 pixel blocks as 12 channels: no pixel is lost and the convolutions run at 16 px (a quarter of the cost)
    x = layers.Reshape((JUDGE_SIZE // 2, 2, JUDGE_SIZE // 2, 2, 3))(inp)
    x = layers.Permute((1, 3, 2, 4, 5))(x)
    x = layers.Reshape((JUDGE_SIZE // 2, JUDGE_SIZE // 2, 12))(x)
    for i, c in enumerate(channels):
        x = layers.Conv2D(c, 3, padding="same", activation="relu", name=f"conv{i}a")(x)
        if i < len(channels) - 1:  # 16 -> 8 -> 4 px; the flatten keeps where things are
            x = layers.Conv2D(c, 3, strides=2, padding="same", activation="relu", name=f"conv{i}b")(x)
    x = layers.Flatten()(x)
    feats = layers.Dense(feature_dim, activation="relu", name="features")(x)
    width = 1 + len(CONTINUOUS) + sum(CATEGORICAL.values())
    raw = layers.Dense(width, name="heads")(feats)
    return keras.Model(inp, [feats, raw], name="judge")


class JudgeOutput(NamedTuple):
    domain_prob: np.ndarray  # [N] P(cartoon)
    params: dict  # name -> [N]: continuous in the parameter's units, categorical as class indices
    probs: dict  # categorical name -> [N, classes]
    features: np.ndarray  # [N, FEATURE_DIM]

    def __len__(self):
        return len(self.domain_prob)

    def subset(self, index) -> "JudgeOutput":
        """The judgements of images ``index`` (a slice or index array)."""
        return JudgeOutput(self.domain_prob[index], {k: np.asarray(v)[index] for k, v in self.params.items()},
                           {k: v[index] for k, v in self.probs.items()}, self.features[index])


def prepare(images) -> np.ndarray:
    """NHWC uint8 or float in [-1, 1], any square-or-not size -> float32 [N, 32, 32, 3] in [-1, 1].

    Larger images are box-averaged (``area``, as the renderer's supersampling), smaller ones bilinear."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"the judge takes NHWC RGB images, got shape {x.shape}")
    x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.shape[1:3] != (JUDGE_SIZE, JUDGE_SIZE):
        import tensorflow as tf

        down = x.shape[1] >= JUDGE_SIZE and x.shape[2] >= JUDGE_SIZE
        x = tf.image.resize(x, (JUDGE_SIZE, JUDGE_SIZE), method="area" if down else "bilinear").numpy()
    return x


class Judge:
    """A trained judge: ``Judge(folder)`` reads ``judge.json`` + ``judge.npz`` (weights as plain arrays)."""

    def __init__(self, folder: str | None = None):
        folder = folder or default_dir()
        cfg_path, w_path = os.path.join(folder, "judge.json"), os.path.join(folder, "judge.npz")
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"judge file {p} does not exist (train one: python -m "
                                        "tf_cartoon.metrics.judge --flagfile=configs/judge.cfg)")
        with open(cfg_path) as f:
            self.config = json.load(f)
        if self.config.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: not a judge of format {FORMAT}")
        self.folder = folder
        self.stats = self.config["stats"]
        self.floor = self.config.get("floor")
        self.model = build_model(tuple(self.config["channels"]), int(self.config["feature_dim"]))
        with np.load(w_path, allow_pickle=False) as z:
            weights = [z[f"w{i}"] for i in range(len(z.files))]
        expected = [tuple(v.shape) for v in self.model.weights]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"{w_path}: weight shapes do not fit the judge in {cfg_path}")
        self.model.set_weights(weights)
        h = hashlib.sha256()
        for p in (cfg_path, w_path):
            with open(p, "rb") as f:
                h.update(f.read())
        self.digest = h.hexdigest()

    @property
    def spreads(self) -> dict:
        return {k: self.stats[k]["spread"] for k in self.stats}

    def raw(self, images, batch: int = 256) -> np.ndarray:
        """[N, FEATURE_DIM + raw width]: features and the raw head outputs of each image (what evaluate caches)."""
        x = prepare(images)
        out = []
        for i in range(0, len(x), batch):
            feats, raw = self.model(x[i:i + batch], training=False)
            out.append(np.concatenate([np.asarray(feats), np.asarray(raw)], 1))
        width = int(self.config["feature_dim"]) + 1 + len(CONTINUOUS) + sum(CATEGORICAL.values())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, width), np.float32)

    def decode(self, raw) -> JudgeOutput:
        raw = np.asarray(raw, np.float32)
        d = int(self.config["feature_dim"])
        feats, head = raw[:, :d], raw[:, d:].astype(np.float64)
        prob = 1.0 / (1.0 + np.exp(-head[:, 0]))
        params, probs = {}, {}
        for i, k in enumerate(CONTINUOUS):
            params[k] = head[:, 1 + i] * self.stats[k]["std"] + self.stats[k]["mean"]
        at = 1 + len(CONTINUOUS)
        for k, c in CATEGORICAL.items():
            logits = head[:, at:at + c]
            at += c
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs[k] = e / e.sum(1, keepdims=True)
            params[k] = np.argmax(logits, 1)
        return JudgeOutput(prob, params, probs, feats)

    def __call__(self, images, batch: int = 256) -> JudgeOutput:
        return self.decode(self.raw(images, batch))


_LOADED: dict = {}


def load(folder: str | None = None) -> Judge:
    """The judge in ``folder`` (default: the shipped one), loaded once per process."""
    key = os.path.abspath(folder or default_dir())
    if key not in _LOADED:
        _LOADED[key] = Judge(key)
    return _LOADED[key]


# ---------------------------------------------------------------------------------------------- metrics
def structure_error(a: JudgeOutput, b: JudgeOutput, spreads: dict, names=STRUCTURE) -> tuple[float, dict]:
    """Mean over ``names`` of the normalised disagreement between paired judgements (see module doc).

    Returns (value, {name: normalised disagreement})."""
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"structure_error needs two non-empty sets of paired images, got {len(a)} and {len(b)}")
    per = {}
    for k in names:
        if k in CATEGORICAL:
            diff = np.mean(a.params[k] != b.params[k])
        else:
            diff = np.mean(np.abs(np.asarray(a.params[k]) - np.asarray(b.params[k])))
        per[k] = float(diff / spreads[k])
    return float(np.mean(list(per.values()))), per


def domain_rate(out: JudgeOutput) -> float:
    """The share of images the judge calls cartoons."""
    if len(out) == 0:
        raise ValueError("domain_rate needs at least one image")
    return float(np.mean(out.domain_prob > 0.5))


def judge_fd(a: JudgeOutput, b: JudgeOutput) -> float:
    """Frechet distance between the judge's features of two image sets."""
    from tf_cartoon.metrics.stats import fid_from_features

    return fid_from_features(a.features, b.features)


def heldout_params(seed: int, n: int) -> dict:
    """The held-out faces: ``sample_face_params(default_rng(seed), n)`` (training draws from
    ``default_rng([seed', step])``, a different stream)."""
    return F.sample_face_params(np.random.default_rng(int(seed)), int(n))


def accuracy(judge: Judge, params: dict) -> dict:
    """Held-out figures of ``judge`` on the faces ``params`` rendered in both domains.

    Per domain: domain accuracy; per continuous parameter MAE (its units), its standard error and R^2; per
    categorical one the accuracy; the structure floor (faces(p) vs cartoon(p)): its value over ``STRUCTURE``
    and the normalised disagreement of every judged parameter; and ``unrelated``: structure_error of faces(p)
    vs cartoon(q) for a fixed shuffle q of p (what a target that kept nothing of its source scores)."""
    t = targets(params)
    outs = {"faces": judge(F.render_faces(params, JUDGE_SIZE)), "cartoon": judge(F.render_cartoon(params, JUDGE_SIZE))}
    n = len(t["cx"])
    rep: dict = {"n": n}
    for dom, out in outs.items():
        truth = 1.0 if dom == "cartoon" else 0.0
        r = {"domain": float(np.mean((out.domain_prob > 0.5) == truth))}
        for k in CONTINUOUS:
            err = np.asarray(out.params[k]) - t[k]
            r[k] = {"mae": float(np.mean(np.abs(err))), "mae_se": float(np.std(np.abs(err)) / math.sqrt(n)),
                    "r2": float(1.0 - np.mean(err ** 2) / np.var(t[k]))}
        for k in CATEGORICAL:
            r[k] = float(np.mean(out.params[k] == t[k]))
        rep[dom] = r
    value, _ = structure_error(outs["faces"], outs["cartoon"], judge.spreads)
    _, per = structure_error(outs["faces"], outs["cartoon"], judge.spreads, CONTINUOUS + tuple(CATEGORICAL))
    rep["floor"] = {"value": value, "per_param": per}
    shuffle = np.random.default_rng(0).permutation(n)
    rep["unrelated"] = structure_error(outs["faces"], outs["cartoon"].subset(shuffle), judge.spreads)[0]
    return rep


# ---------------------------------------------------------------------------------------------- training
def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild blur, grain and brightness / contrast jitter (float [-1, 1] NHWC): generated images are softer and
    noisier than renders, and the judge should read them the same."""
    n = len(x)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(pad[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0
    mix = (rng.uniform(0, 1, n) * (rng.uniform(0, 1, n) < 0.4)).astype(np.float32)[:, None, None, None]
    x = x + mix * (blur - x)
    sigma = (rng.uniform(0, 0.05, n) * (rng.uniform(0, 1, n) < 0.5)).astype(np.float32)[:, None, None, None]
    x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    gain = rng.uniform(0.92, 1.08, (n, 1, 1, 1)).astype(np.float32)
    bias = rng.uniform(-0.06, 0.06, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(x * gain + bias, -1.0, 1.0)


def _batch(seed: int, step: int, pairs: int, stats: dict, augment: bool):
    """Step ``step``'s training batch: ``pairs`` fresh faces, each rendered in both domains."""
    rng = np.random.default_rng([int(seed), int(step)])
    p = F.sample_face_params(rng, pairs)
    x = np.concatenate([F.render_faces(p, JUDGE_SIZE), F.render_cartoon(p, JUDGE_SIZE)]).astype(np.float32)
    x = x / 127.5 - 1.0
    if augment:
        x = _augment(x, rng)
    t = targets(p)
    y = {"domain": np.repeat(np.array([0.0, 1.0], np.float32), pairs)}
    cont = np.stack([(t[k] - stats[k]["mean"]) / stats[k]["std"] for k in CONTINUOUS], 1).astype(np.float32)
    y["cont"] = np.concatenate([cont, cont])
    for k in CATEGORICAL:
        y[k] = np.concatenate([t[k], t[k]])
    return x, y


def train(out_dir: str, steps: int, pairs: int, lr: float, seed: int, heldout_seed: int, heldout_n: int,
          augment: bool = True, log_every: int = 100, max_minutes: float = 0.0, stream=None) -> dict:
    """Train a judge from scratch and write it (judge.npz, judge.json) into ``out_dir``; returns the config."""
    import concurrent.futures

    import keras
    import tensorflow as tf

    stream = stream or sys.stderr
    keras.utils.set_random_seed(seed)
    stats = parameter_statistics()
    model = build_model()
    sched = keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.02)
    opt = keras.optimizers.Adam(sched)
    nc = len(CONTINUOUS)

    @tf.function
    def step_fn(x, y):
        with tf.GradientTape() as tape:
            _, raw = model(x, training=True)
            losses = {"domain": tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y["domain"], raw[:, 0])),
                      "cont": tf.reduce_mean(tf.square(raw[:, 1:1 + nc] - y["cont"])) * nc}
            at = 1 + nc
            for k, c in CATEGORICAL.items():
                losses[k] = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[k], raw[:, at:at + c]))
                at += c
            total = tf.add_n(list(losses.values()))
        grads = tape.gradient(total, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return total, losses

    t0 = time.monotonic()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the next batch renders while this one trains
        nxt = pool.submit(_batch, seed, 0, pairs, stats, augment)
        for step in range(steps):
            x, y = nxt.result()
            if step + 1 < steps:
                nxt = pool.submit(_batch, seed, step + 1, pairs, stats, augment)
            total, losses = step_fn(tf.constant(x), {k: tf.constant(v) for k, v in y.items()})
            done = step + 1
            elapsed = time.monotonic() - t0
            if done % log_every == 0 or done == steps:
                parts = " ".join(f"{k}={float(v):.3f}" for k, v in losses.items())
                print(f"judge step {done}/{steps} loss={float(total):.3f} ({parts}) {elapsed:.0f}s", file=stream,
                      flush=True)
            if max_minutes and elapsed > max_minutes * 60:
                print(f"judge: stopping at step {done}: --max_minutes {max_minutes} reached", file=stream)
                break
    train_s = time.monotonic() - t0
    config = {"format": FORMAT, "size": JUDGE_SIZE, "channels": list(CHANNELS), "feature_dim": FEATURE_DIM,
              "continuous": list(CONTINUOUS), "categorical": CATEGORICAL, "structure": list(STRUCTURE),
              "stats": stats, "spread_samples": SPREAD_SAMPLES, "spread_seed": SPREAD_SEED,
              "train": {"steps": done, "pairs_per_step": pairs, "lr": lr, "seed": seed, "augment": augment,
                        "seconds": round(train_s, 1)},
              "heldout": {"seed": heldout_seed, "n": heldout_n}}
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "judge.npz"), **{f"w{i}": np.asarray(w, np.float32)
                                                    for i, w in enumerate(model.get_weights())})
    with open(os.path.join(out_dir, "judge.json"), "w") as f:
        json.dump(config, f, indent=1)
    return write_report(out_dir)


def write_report(folder: str) -> dict:
    """Measure the judge in ``folder`` on its held-out faces and record the figures (and ``STRUCTURE``) in its
    judge.json; returns the config. Training ends with it; it only reads the weights."""
    judge = Judge(folder)
    config = dict(judge.config)
    rep = accuracy(judge, heldout_params(config["heldout"]["seed"], config["heldout"]["n"]))
    config["structure"] = list(STRUCTURE)
    config["accuracy"] = {k: v for k, v in rep.items() if k not in ("floor", "unrelated")}
    config["floor"] = rep["floor"]["value"]
    config["unrelated"] = rep["unrelated"]
    config["floor_per_param"] = rep["floor"]["per_param"]
    with open(os.path.join(folder, "judge.json"), "w") as f:
        json.dump(config, f, indent=1)
    _LOADED.pop(os.path.abspath(folder), None)
    return config


def markdown_table(config: dict) -> str:
    """The held-out figures of a judge config as a Markdown table (docs/judge_table.md)."""
    acc, floor, stats = config["accuracy"], config["floor_per_param"], config["stats"]
    mark = lambda k: " *" if k in config["structure"] else ""  # noqa: E731
    lines = ["| parameter | measure | faces | cartoon | spread | floor (faces(p) vs cartoon(p)) |",
             "|---|---|---|---|---|---|",
             f"| domain (cartoon or not) | accuracy | {acc['faces']['domain']:.3f} | {acc['cartoon']['domain']:.3f} "
             "| | |"]
    for k in config["continuous"]:
        f, c = acc["faces"][k], acc["cartoon"][k]
        lines.append(f"| {k}{mark(k)} | MAE (R^2) | {f['mae']:.4f} ({f['r2']:.2f}) | {c['mae']:.4f} ({c['r2']:.2f}) "
                     f"| {stats[k]['spread']:.4f} | {floor[k]:.3f} |")
    for k in config["categorical"]:
        lines.append(f"| {k}{mark(k)} | accuracy | {acc['faces'][k]:.3f} | {acc['cartoon'][k]:.3f} | "
                     f"{stats[k]['spread']:.3f} | {floor[k]:.3f} |")
    lines.append(f"| **structure_error floor** | mean over the {len(config['structure'])} marked * | | | | "
                 f"**{config['floor']:.3f}** |")
    lines.append(f"| structure_error of unrelated pairs (faces(p) vs cartoon(shuffled p)) | | | | | "
                 f"{config['unrelated']:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def _read_flagfiles(argv: list[str]) -> list[str]:
    """``--flagfile=PATH`` (a shipped config's name works too) -> its ``--name=value`` lines, in place."""
    from tf_cartoon.resources import resolve_flagfile_args

    out, args = [], resolve_flagfile_args(argv)
    while args:
        arg = args.pop(0)
        if arg == "--flagfile" and args:
            arg = "--flagfile=" + args.pop(0)
        if arg.startswith("--flagfile="):
            path = arg[len("--flagfile="):]
            if not os.path.isfile(path):
                raise OSError(f"--flagfile {path} does not exist")
            with open(path) as f:
                out += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            out.append(arg)
    return out


def _parser():
    from tf_cartoon import cli

    p = cli.parser("python -m tf_cartoon.metrics.judge", __doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/judge", help="folder for judge.npz + judge.json (the shipped one: "
                                                        "tf_cartoon/assets/judge)")
    p.add_argument("--steps", type=int, default=3000, help="training steps")
    p.add_argument("--pairs", type=int, default=64, help="faces per step, each rendered in both domains")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay to 2%%)")
    p.add_argument("--seed", type=int, default=0, help="training stream and initialisation seed")
    p.add_argument("--heldout_seed", type=int, default=987654321, help="seed of the held-out faces")
    p.add_argument("--heldout_n", type=int, default=2000, help="held-out faces (each rendered in both domains)")
    p.add_argument("--no_augment", action="store_true", help="train on clean renders only")
    p.add_argument("--max_minutes", type=float, default=0.0, help="stop training after this long (0: no limit)")
    p.add_argument("--docs", default=None, help="also write the Markdown table of the held-out figures here")
    return p


def main(argv=None) -> int:
    from tf_cartoon import cli

    @cli.command(setup="none")
    def _main(argv):
        with cli.user_input():
            args = _parser().parse_args(_read_flagfiles(list(sys.argv[1:] if argv is None else argv)))
            for name in ("steps", "pairs", "heldout_n"):
                if getattr(args, name) < 1:
                    raise cli.UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
            if not (math.isfinite(args.lr) and args.lr > 0):
                raise cli.UsageError(f"--lr must be finite and > 0, got {args.lr}")
        config = train(args.out, args.steps, args.pairs, args.lr, args.seed, args.heldout_seed, args.heldout_n,
                       augment=not args.no_augment, max_minutes=args.max_minutes)
        table = markdown_table(config)
        if args.docs:
            with open(args.docs, "w") as f:
                f.write(table + "\n")
        print(table)
        print(f"wrote {args.out}/judge.npz and judge.json ({config['train']['steps']} steps, "
              f"{config['train']['seconds']:.0f} s)")
        return 0

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
