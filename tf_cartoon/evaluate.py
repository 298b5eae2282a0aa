"""Evaluate generators and image sets: FID, KID, PPL and the judge's structure metrics.

    python -m tf_cartoon.evaluate --metrics fid,kid --real /data/cartoon --fake workdir/ckpt.pt \\
        --inception pt_inception-2015-12-05-6726825d.pth --n 50000
    python -m tf_cartoon.evaluate --metrics ppl --fake builtin:source_synthetic \\
        --vgg16_weights vgg16-397923af.pth --n 5000
    python -m tf_cartoon.evaluate --metrics structure,domain,judge_fd --fake runs/quickstart \\
        --source builtin:source_synthetic [--swap_layer 2]

``--real`` / ``--fake``: an image folder (recursive), a TFRecord file / pattern / folder of shards
(``python -m tf_cartoon.prepare_data``), ``synthetic:NAME``, or a checkpoint (a .pt, NVlabs .pkl,
converted directory, training workdir or ``builtin:NAME``) whose g_ema draws ``--n`` images: seed
``--seed + i`` gives z = ``RandomState(seed + i).randn(style_dim)`` (as tf_cartoon.generate) and, from the
same stream, the image's noise maps; w is truncated by ``--truncation`` toward the generator's own mean.
Folders and TFRecords contribute all their images, ``synthetic:NAME`` and checkpoints ``--n``.

Every image goes through uint8 (as if saved as PNG; StyleGAN2-ADA's metrics quantise alike) at its source's
resolution: checkpoints at their own, folders / TFRecords / synthetic domains at ``--size`` (default: the
resolution of a checkpoint among the sources, else 256; folders are LANCZOS-resized and centre-cropped as
for training). The FID Inception then resizes to 299x299 itself.

Metrics (tf_cartoon.metrics): ``fid`` and ``kid`` (from 2048-d FID Inception pool features; ``--inception``:
pytorch-fid's pt_inception-2015-12-05-6726825d.pth), ``ppl`` (of the ``--fake`` checkpoint, W space, end
points t and t + 1e-4, LPIPS-VGG; ``--vgg16_weights``, and the lpips package's v0.1 linear layers or
``--lpips``). ``--n`` defaults to 50000 for fid / kid and 5000 (the reference ppl.py's) for ppl.

The judge's metrics (tf_cartoon.metrics.judge: a small CNN shipped in the package that reads the built-in
domains synthetic:faces / synthetic:cartoon; ``--judge`` another judge folder; ``--n`` defaults to 1000):
``structure`` (structure_error between ``--source`` and ``--fake``, two checkpoints rendering the same seeds
with the same noise maps; 0 = the same faces, ~1 = unrelated; the row also gives the judge's floor, measured
on true render pairs), ``domain`` (domain_rate: the share of ``--fake`` images judged cartoon; with
``--source``, a row for it too) and ``judge_fd`` (Frechet distance of the judge's features from ``--fake`` to
``--real``, default synthetic:cartoon; with ``--source``, from it to synthetic:faces).

With ``--source`` a checkpoint ``--fake`` (the fine-tuned target) renders each seed as tf_cartoon.generate
renders it beside its source: the latents pair as ``--pairing`` says (generate.PAIRINGS; default shared_w),
each generator truncates toward its own mean, and both take the seed's noise maps. ``--swap_layer L[,L...]``
scores layer-swapped outputs instead (the target with the source's feature at layer L, Generator.synthesis's
swap), every metric of ``--fake`` once per layer (``swap_layer`` in the JSON lines).

Output: one JSON line per metric on stdout, a table on stderr. Inception and judge features are cached under
``--cache_dir`` (default ``$TF_CARTOON_CACHE/features`` or ``~/.cache/tf_cartoon/features``) keyed by a
hash of the source (image file bytes, TFRecord bytes, checkpoint bytes; a paired target's also its source's,
the pairing and swap layer), the sampling settings and the network's weights' bytes, so a second run against
the same real set only computes the fake side.
Bad input: one ``error: ...`` line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import sys

import numpy as np

from tf_cartoon import cli, latent
from tf_cartoon.progress import Progress

METRICS = ("fid", "kid", "ppl", "structure", "domain", "judge_fd")
FEATURE_METRICS = ("fid", "kid")
JUDGE_METRICS = ("structure", "domain", "judge_fd")
DEFAULT_N = {"fid": 50000, "kid": 50000, "ppl": 5000, "judge": 1000}
JUDGE_REFERENCE = {"fake": "synthetic:cartoon", "source": "synthetic:faces"}  # judge_fd's default real sets
DEFAULT_SIZE = 256
FEATURES_VERSION = 1  # bump when the feature pipeline changes, so stale cache entries are not used

# Counts feature computations per source role (tests read it to tell a cache hit from a recomputation).
FEATURE_COMPUTATIONS: collections.Counter = collections.Counter()


UsageError = cli.UsageError


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

class Source:
    """One --real / --fake: kind "checkpoint", "folder", "tfrecord" or "synthetic"."""

    def __init__(self, role: str, spec: str):
        from tf_cartoon import assets
        from tf_cartoon import data
        from tf_cartoon.io.store import WORKDIR_CONFIG

        self.role, self.spec = role, spec
        self._g = None
        self.partner, self.swap_layer, self.pairing = None, None, None
        if not spec:
            raise UsageError(f"--{role} is empty")
        if spec.startswith(data.SYNTHETIC_PREFIX):
            try:
                data.resolve_spec(spec)
            except ValueError as e:
                raise UsageError(f"--{role} {spec}: {e}") from None
            self.kind, self.target = "synthetic", spec
            return
        if assets.is_builtin(spec):
            try:
                self.kind, self.target = "checkpoint", assets.resolve(spec)
            except FileNotFoundError as e:
                raise UsageError(f"--{role}: {e}") from None
            return
        if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, f)) for f in ("config.json", WORKDIR_CONFIG)):
            self.kind, self.target = "checkpoint", spec
            return
        if os.path.isfile(spec) and not spec.lower().endswith(data.TFRECORD_EXTENSIONS):
            self.kind, self.target = "checkpoint", spec
            return
        try:
            kind, target = data.resolve_spec(spec)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--{role} {spec}: {e}") from None
        self.kind, self.target = kind, target
        if kind == "folder":
            try:
                self.files = data.scan_images(spec)
            except (FileNotFoundError, NotADirectoryError, ValueError) as e:
                raise UsageError(f"--{role}: {e}") from None

    @classmethod
    def live(cls, role: str, label: str, generator) -> "Source":
        """A generator in memory (e.g. the trainer's g_ema) as a checkpoint source named ``label``. Its weights
        change as it trains, so its features are never cached."""
        source = cls.__new__(cls)
        source.role, source.spec, source.kind, source.target, source.files = role, label, "checkpoint", None, None
        source._g, source.partner, source.swap_layer, source.pairing = generator, None, None, None
        return source

    @property
    def is_live(self) -> bool:
        return self.kind == "checkpoint" and self.target is None

    @property
    def is_checkpoint(self) -> bool:
        return self.kind == "checkpoint"

    def paired(self, partner: "Source", pairing: str, swap_layer: int | None = None) -> "Source":
        """This checkpoint as the target of ``partner`` (the source): same seeds and noise maps, latents paired
        by ``pairing``, and with ``swap_layer`` the source's feature swapped in (a new Source; generators shared)."""
        twin = Source.__new__(Source)
        twin.__dict__.update(self.__dict__)
        twin.partner, twin.pairing, twin.swap_layer = partner, pairing, swap_layer
        return twin

    def generator(self):
        if self._g is None:
            import tf_cartoon

            g = tf_cartoon.load(self.target, models=("g_ema",)).g_ema
            if g is None:
                raise UsageError(f"--{self.role} {self.spec} holds no g_ema generator")
            self._g = g
        return self._g

    def identity(self) -> dict:
        """What the features depend on besides the settings: a digest of the source's bytes."""
        from tf_cartoon.metrics.inception import file_digest

        h = hashlib.sha256()
        if self.is_live:
            raise ValueError(f"{self.spec} is a generator in memory: its features are not cached")
        if self.kind == "synthetic":
            h.update(self.target.encode())
        elif self.kind == "folder":
            for f in self.files:
                h.update(os.path.relpath(f, self.spec).encode() + b"\0" + file_digest(f).encode())
        elif self.kind == "tfrecord":
            for f in self.target:
                h.update(file_digest(f).encode())
        elif os.path.isdir(self.target):  # converted dir / workdir: every file's name, size and mtime
            for root, dirs, files in os.walk(self.target):
                dirs.sort()
                for name in sorted(files):
                    p = os.path.join(root, name)
                    st = os.stat(p)
                    h.update(f"{os.path.relpath(p, self.target)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(file_digest(self.target).encode())
        out = {"kind": self.kind, "digest": h.hexdigest()}
        if self.partner is not None:
            out.update(partner=self.partner.identity(), pairing=self.pairing, swap_layer=self.swap_layer)
        return out

    def count(self, n: int) -> int | None:
        if self.kind == "folder":
            return len(self.files)
        if self.kind == "tfrecord":
            return None  # unknown until read
        return int(n)

    def batches(self, n: int, size: int, batch: int, truncation: float, truncation_samples: int, seed: int):
        """Yield float32 NHWC batches in [-1, 1], quantised to uint8 levels."""
        if self.kind == "checkpoint":
            yield from self._generated(n, batch, truncation, truncation_samples, seed)
        elif self.kind == "folder":
            yield from self._folder(size, batch)
        else:
            yield from self._dataset(n, size, batch, seed)

    def _generated(self, n, batch, truncation, truncation_samples, seed):
        from tf_cartoon import generate

        g = self.generator()
        src = self.partner.generator() if self.partner is not None else None
        t_mean, s_mean = generate.mean_latents(truncation, truncation_samples, g, src)
        for start in range(0, n, batch):
            seeds = range(seed + start, seed + min(n, start + batch))
            # a paired target's z is the source's draw (shared_w) or one of the same length (own_z)
            noise = seed_noise(g, seeds, src.z_dim if src is not None else g.z_dim)
            if src is None:
                w = generate.latents(g, seeds, truncation, t_mean)
                out = g.synthesis(generate.to_wplus(g, w), noise=noise, randomize_noise=False)
            else:
                src_w, w = generate.paired_latents(src, g, seeds, truncation, s_mean, t_mean, truncation_samples,
                                                   self.pairing)
                kw = {}
                if self.swap_layer is not None:
                    feat = src.synthesis(generate.to_wplus(src, src_w), noise=noise, randomize_noise=False,
                                         tap_layers=(self.swap_layer,), stop_after_layer=self.swap_layer)
                    kw = dict(swap_layer=self.swap_layer, swap_feature=feat.features[self.swap_layer])
                out = g.synthesis(generate.to_wplus(g, w), noise=noise, randomize_noise=False, **kw)
            yield quantise(np.asarray(out.image, np.float32))

    def _folder(self, size, batch):
        from tf_cartoon.data import load_image

        buf = []
        for f in self.files:
            try:
                buf.append(load_image(f, size))
            except Exception as e:  # PIL raises many types for corrupt files; they are skipped, as in training
                print(f"warning: skipping unreadable image {f}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            if len(buf) == batch:
                yield np.stack(buf).astype(np.float32) / 127.5 - 1.0
                buf = []
        if buf:
            yield np.stack(buf).astype(np.float32) / 127.5 - 1.0

    def _dataset(self, n, size, batch, seed):
        from tf_cartoon.data import make_dataset

        if self.kind == "synthetic":
            ds = make_dataset(self.spec, size, batch, shuffle=False, flip=False, repeat=True, seed=seed)
            left = n
            for x in ds:
                x = quantise(np.asarray(x, np.float32)[:left])
                left -= len(x)
                yield x
                if left <= 0:
                    return
        else:  # tfrecord: one pass, every record (batch 1 so the last partial batch is not dropped)
            ds = make_dataset(self.spec, size, 1, shuffle=False, flip=False, repeat=False).unbatch().batch(batch)
            for x in ds:
                yield quantise(np.asarray(x, np.float32))


def seed_noise(g, seeds, z_dim: int) -> list[np.ndarray]:
    """The noise maps of each seed for ``g``: drawn from ``RandomState(seed)`` right after its ``z_dim`` values
    of z (generate.seed_z), so a source and a target of one resolution take the same maps for the same seed."""
    noise = [[] for _ in range(g.num_layers)]
    for s in seeds:
        rs = np.random.RandomState(int(s))
        rs.randn(int(z_dim))
        for i in range(g.num_layers):
            r = g.noise_resolution(i)
            noise[i].append(rs.randn(r, r, 1))
    return [np.asarray(maps, np.float32) for maps in noise]


def quantise(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> the nearest of the 256 uint8 levels, back in [-1, 1] (clipped)."""
    u8 = np.clip(np.rint((images + 1.0) * 127.5), 0, 255)
    return (u8 / 127.5 - 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# Features (cached)
# ---------------------------------------------------------------------------

def default_cache_dir() -> str:
    root = os.environ.get("TF_CARTOON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tf_cartoon")
    return os.path.join(root, "features")


def feature_key(source: Source, settings: dict, inception_digest: str, network: str = "inception") -> str:
    blob = json.dumps({"version": FEATURES_VERSION, "source": source.identity(), "settings": settings,
                       network: inception_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def source_features(source: Source, args, size: int, inception_path: str | None, cache_dir: str | None,
                    judge=None):
    """(features [N, D], "hit" | "miss" | "off") for one source: FID Inception pool features, or with ``judge``
    (a tf_cartoon.metrics.judge.Judge) the judge's raw outputs (features and heads, ``Judge.decode``)."""
    from tf_cartoon.metrics.inception import file_digest, get_inception

    n = args.n_features
    settings = {"size": size}
    if source.kind in ("checkpoint", "synthetic"):
        settings.update(n=n, seed=args.seed)
    if source.kind == "checkpoint":
        settings.update(truncation=args.truncation, truncation_samples=args.truncation_samples)
        settings.pop("size")  # generated at the checkpoint's own resolution
    live = source.is_live or (source.partner is not None and source.partner.is_live)
    cache_dir = None if live else cache_dir  # a generator in memory changes as it trains
    if cache_dir is None:
        key = None
    elif judge is None:
        key = feature_key(source, settings, file_digest(inception_path))
    else:
        key = feature_key(source, settings, judge.digest, network="judge")
    path = os.path.join(cache_dir, key + ".npy") if key else None
    if path and os.path.isfile(path):
        try:
            return np.load(path), "hit"
        except (OSError, ValueError):
            pass  # an unreadable entry is recomputed and rewritten
    network = judge.raw if judge is not None else get_inception(inception_path)
    what = "judge features" if judge is not None else "features"
    progress = Progress(f"{source.role} {what} ({source.spec})", source.count(n), quiet=args.quiet)
    feats, done = [], 0
    for images in source.batches(n, size, args.batch, args.truncation, args.truncation_samples, args.seed):
        feats.append(network(images))
        done += len(images)
        progress.update(done)
    progress.finish(done)
    if not feats:
        raise UsageError(f"--{source.role} {source.spec}: no images")
    features = np.concatenate(feats).astype(np.float32)
    FEATURE_COMPUTATIONS[source.role] += 1
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.npy"
        np.save(tmp, features)
        os.replace(tmp, path)
    return features, ("miss" if path else "off")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m tf_cartoon.evaluate", __doc__.split("\n\n")[0])
    p.add_argument("--metrics", default="fid", help="comma-separated, of: " + ", ".join(METRICS) + " (default fid)")
    p.add_argument("--real", help="reference images: folder, TFRecords, synthetic:NAME or checkpoint (fid, kid)")
    p.add_argument("--fake", help="evaluated images: a checkpoint (needed for ppl), or folder / TFRecords / "
                                  "synthetic:NAME (fid, kid)")
    cli.add_role(p, "source", help="the pretrained generator the --fake checkpoint was fine-tuned from (needed for "
                                   "structure and --swap_layer; pairs the fake's seeds with it)")
    p.add_argument("--swap_layer", default=None, help="score the --fake target with the --source's feature swapped "
                                                      "in at layer L (comma-separated: each)")
    p.add_argument("--pairing", default="shared_w", help="how --source and --fake pair their latents: shared_w "
                                                         "(default; z through the source's mapping) or own_z")
    p.add_argument("--judge", default=None, help="judge folder (judge.json + judge.npz) for structure, domain, "
                                                 "judge_fd (default: the shipped tf_cartoon/assets/judge)")
    p.add_argument("--inception", help="pytorch-fid's FID Inception weights pt_inception-2015-12-05-6726825d.pth "
                                       "(fid, kid)")
    p.add_argument("--vgg16_weights", help="VGG16 weights for ppl's LPIPS: torchvision's vgg16-397923af.pth (exact "
                                           "LPIPS) or a keras.applications VGG16 include_top=False .h5")
    p.add_argument("--lpips", help="the lpips package's weights/v0.1/vgg.pth (default: found in an installed lpips)")
    p.add_argument("--n", type=int, default=None, help="images per checkpoint / synthetic source (default 50000 "
                                                       "for fid/kid, 1000 for the judge's metrics), path pairs for "
                                                       "ppl (default 5000)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi of generated images for fid/kid "
                                                                 "(default 1: none; ppl never truncates)")
    p.add_argument("--truncation_samples", type=int, default=4096, help="z samples behind the mean latent")
    p.add_argument("--seed", type=int, default=0, help="first seed of generated images; seed of ppl and kid draws")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass")
    p.add_argument("--size", type=int, default=None, help="resolution of folder / TFRecord / synthetic images "
                                                          "(default: a checkpoint source's, else 256)")
    p.add_argument("--cache_dir", default=None, help="feature cache folder (default $TF_CARTOON_CACHE/features "
                                                     "or ~/.cache/tf_cartoon/features)")
    p.add_argument("--no_cache", action="store_true", help="neither read nor write cached features")
    p.add_argument("--kid_subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid_subset_size", type=int, default=1000, help="KID max subset size (default 1000)")
    p.add_argument("--eps", type=float, default=1e-4, help="ppl step in t (default 1e-4)")
    p.add_argument("--crop", action="store_true", help="ppl on the face crop (rows 3/8-7/8, columns 2/8-6/8)")
    cli.add_quiet(p)
    return p


def _check(args) -> list[str]:
    metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UsageError(f"unknown metric(s) {unknown or [args.metrics]}; choose from {', '.join(METRICS)}")
    metrics = list(dict.fromkeys(metrics))
    for name in ("batch", "truncation_samples", "kid_subsets", "kid_subset_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.n is not None and args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size must be >= 1, got {args.size}")
    if not (math.isfinite(args.truncation) and math.isfinite(args.eps) and args.eps > 0):
        raise UsageError("--truncation must be finite and --eps finite and > 0")
    if any(m in FEATURE_METRICS for m in metrics):
        if not args.inception:
            raise UsageError("fid / kid need --inception PATH (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
        if not os.path.isfile(args.inception):
            raise UsageError(f"--inception {args.inception} does not exist or is not a file")
        for role in ("real", "fake"):
            if not getattr(args, role):
                raise UsageError(f"fid / kid need --{role}")
    if any(m in JUDGE_METRICS for m in metrics) and not args.fake:
        raise UsageError("structure / domain / judge_fd need --fake")
    if "structure" in metrics and not args.source:
        raise UsageError("structure needs --source CHECKPOINT (the generator --fake was fine-tuned from)")
    if args.swap_layer is not None and not args.source:
        raise UsageError("--swap_layer needs --source CHECKPOINT (whose feature is swapped in)")
    from tf_cartoon.generate import PAIRINGS

    if args.pairing not in PAIRINGS:
        raise UsageError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {args.pairing!r}")
    args.swap_layers = None
    if args.swap_layer is not None:
        try:
            args.swap_layers = list(dict.fromkeys(int(v) for v in args.swap_layer.split(",") if v.strip()))
        except ValueError:
            args.swap_layers = []
        if not args.swap_layers:
            raise UsageError(f"--swap_layer must be integers like 2 or 1,2, got {args.swap_layer!r}")
        if "ppl" in metrics:
            raise UsageError("ppl scores the --fake generator's own paths; it does not take --swap_layer")
    if args.judge and not os.path.isdir(args.judge):
        raise UsageError(f"--judge {args.judge} is not a folder")
    if "ppl" in metrics:
        if not args.fake:
            raise UsageError("ppl needs --fake CHECKPOINT")
        if not args.vgg16_weights:
            raise UsageError("ppl needs --vgg16_weights PATH (torchvision's vgg16-397923af.pth or a keras VGG16 .h5)")
        if not os.path.isfile(args.vgg16_weights):
            raise UsageError(f"--vgg16_weights {args.vgg16_weights} does not exist or is not a file")
        if args.lpips and not os.path.isfile(args.lpips):
            raise UsageError(f"--lpips {args.lpips} does not exist or is not a file")
        if not args.lpips:
            from tf_cartoon.metrics.lpips import find_lpips_weights

            if find_lpips_weights() is None:
                raise UsageError("ppl needs the LPIPS v0.1 linear weights: pip install --no-deps lpips, or --lpips "
                                 "PATH to its weights/v0.1/vgg.pth")
    return metrics


def _table(rows: list[dict]) -> str:
    lines = [f"{'metric':<16}{'value':>12}  {'n':>8}  details"]
    for r in rows:
        details = ", ".join(f"{k}={v}" for k, v in r.items()
                            if k not in ("metric", "value", "n") and not isinstance(v, dict))
        lines.append(f"{r['metric']:<16}{r['value']:>12.6g}  {r['n']:>8}  {details}")
    return "\n".join(lines)


def _fake_sets(args, sources) -> list[tuple[int | None, Source]]:
    """(swap layer or None, Source) of each --fake set to score: the fake itself; with --source, the target
    paired with it (seeds, noise, latents), once per --swap_layer when given."""
    fake, src = sources["fake"], sources.get("source")
    if src is None:
        return [(None, fake)]
    if not src.is_checkpoint:
        raise UsageError(f"--source must be a checkpoint, got {args.source} ({src.kind})")
    if not fake.is_checkpoint:
        if args.swap_layers or "structure" in args.metric_list:
            raise UsageError(f"structure and --swap_layer need --fake to be a checkpoint, got {args.fake} "
                             f"({fake.kind})")
        return [(None, fake)]
    layers = latent.check_pair(src.generator(), fake.generator(), args.swap_layers or (),
                            flag_name="--swap_layer" if args.swap_layers else cli.flag(args, "source"))
    return [(layer, fake.paired(src, args.pairing, layer)) for layer in (layers or (None,))]


def _default_size(sources, fallback: int) -> int:
    ckpts = [s for s in (sources["fake"], sources.get("source"), sources.get("real")) if s and s.is_checkpoint]
    return ckpts[0].generator().size if ckpts else fallback


def run(args, live: dict | None = None) -> list[dict]:
    """The rows of every metric ``args`` asks for. ``live``: {role: generator} for roles whose generator is in
    memory (``args.<role>`` is then only its label)."""
    metrics = _check(args)
    args.metric_list = metrics
    live = live or {}
    sources = {role: Source.live(role, getattr(args, role), live[role]) if role in live
               else Source(role, getattr(args, role)) for role in ("real", "fake", "source") if getattr(args, role)}
    if "ppl" in metrics and not sources["fake"].is_checkpoint:
        raise UsageError(f"ppl needs --fake to be a checkpoint, got {args.fake} ({sources['fake'].kind})")
    fake_sets = _fake_sets(args, sources) if "fake" in sources else []
    paired = {"source": args.source, "pairing": args.pairing} if "source" in sources else {}
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    results = []
    wanted = [m for m in metrics if m in FEATURE_METRICS]
    if wanted:
        from tf_cartoon.metrics.inception import file_digest
        from tf_cartoon.metrics.stats import fid_from_features, kid_from_features

        size = args.size if args.size is not None else _default_size(sources, DEFAULT_SIZE)
        args.n_features = args.n if args.n is not None else DEFAULT_N["fid"]
        real, real_cache = source_features(sources["real"], args, size, args.inception, cache_dir)
        for layer, fake_set in fake_sets:
            fake, fake_cache = source_features(fake_set, args, size, args.inception, cache_dir)
            common = {"n": len(fake), "n_real": len(real), "real": args.real, "fake": args.fake, **paired,
                      **({"swap_layer": layer} if layer is not None else {}),
                      "size": size, "truncation": args.truncation, "seed": args.seed,
                      "inception": file_digest(args.inception)[:16], "cache": {"real": real_cache, "fake": fake_cache}}
            for m in wanted:
                if min(len(real), len(fake)) < 2:
                    raise UsageError(f"{m} needs at least 2 images on each side")
                if m == "fid":
                    value = fid_from_features(real, fake)
                    results.append({"metric": "fid", "value": value, **common})
                else:
                    value = kid_from_features(real, fake, args.kid_subsets, args.kid_subset_size, seed=args.seed)
                    results.append({"metric": "kid", "value": value, **common, "num_subsets": args.kid_subsets,
                                    "max_subset_size": args.kid_subset_size})
    if "ppl" in metrics:
        from tf_cartoon.metrics.lpips import LPIPS
        from tf_cartoon.metrics.ppl import ppl

        n = args.n if args.n is not None else DEFAULT_N["ppl"]
        lp = LPIPS(args.vgg16_weights, args.lpips)
        g = sources["fake"].generator()
        progress = Progress(f"ppl ({args.fake})", n, unit="pairs", quiet=args.quiet)
        value = ppl(g, lp, n=n, batch=args.batch, eps=args.eps, crop=args.crop, seed=args.seed,
                    progress=lambda done, total: progress.update(done))
        progress.finish(n)
        results.append({"metric": "ppl", "value": value, "n": n, "fake": args.fake, "space": "w",
                        "sampling": "end", "eps": args.eps, "crop": args.crop, "seed": args.seed,
                        "lpips": "exact" if lp.exact else "keras-vgg16"})
    if any(m in JUDGE_METRICS for m in metrics):
        results += _judge_metrics(args, metrics, sources, fake_sets, paired, cache_dir)
    return results


def _judge_metrics(args, metrics, sources, fake_sets, paired, cache_dir) -> list[dict]:
    """structure_error, domain_rate and judge_fd rows (tf_cartoon.metrics.judge), judge outputs cached."""
    from tf_cartoon.metrics import judge as J

    jd = J.load(args.judge)
    size = args.size if args.size is not None else _default_size(sources, J.JUDGE_SIZE)
    args.n_features = args.n if args.n is not None else DEFAULT_N["judge"]

    def judged(source: Source):
        raw, cache = source_features(source, args, size, None, cache_dir, judge=jd)
        if len(raw) == 0:
            raise UsageError(f"--{source.role} {source.spec}: no images")
        return jd.decode(raw), cache

    def reference(role: str):
        spec = args.real if role == "fake" and args.real else JUDGE_REFERENCE[role]
        return spec, judged(sources["real"] if spec == args.real else Source("real", spec))

    common = {"seed": args.seed, "truncation": args.truncation, "size": size, "judge": jd.digest[:16]}
    rows = []
    src_out = judged(sources["source"]) if "source" in sources else None
    for layer, fake_set in fake_sets:
        out, cache = judged(fake_set)
        base = {"n": len(out), "fake": args.fake, **paired, **({"swap_layer": layer} if layer is not None else {}),
                **common}
        if "structure" in metrics:
            if len(src_out[0]) != len(out):
                raise UsageError(f"structure needs as many --source as --fake images, got {len(src_out[0])} and "
                                 f"{len(out)}")
            value, per = J.structure_error(src_out[0], out, jd.spreads, jd.config["structure"])
            rows.append({"metric": "structure_error", "value": value, **base, "floor": jd.floor,
                         "cache": {"source": src_out[1], "fake": cache}, "per_param": per})
        if "domain" in metrics:
            rows.append({"metric": "domain_rate", "value": J.domain_rate(out), "set": "fake", **base,
                         "cache": {"fake": cache}})
        if "judge_fd" in metrics:
            spec, (ref, ref_cache) = reference("fake")
            rows.append({"metric": "judge_fd", "value": J.judge_fd(ref, out), "set": "fake", "real": spec,
                         "n_real": len(ref), **base, "cache": {"real": ref_cache, "fake": cache}})
    if src_out is not None:
        base = {"n": len(src_out[0]), "source": args.source, **common}
        if "domain" in metrics:
            rows.append({"metric": "domain_rate", "value": J.domain_rate(src_out[0]), "set": "source", **base,
                         "cache": {"source": src_out[1]}})
        if "judge_fd" in metrics:
            spec, (ref, ref_cache) = reference("source")
            rows.append({"metric": "judge_fd", "value": J.judge_fd(ref, src_out[0]), "set": "source", "real": spec,
                         "n_real": len(ref), **base, "cache": {"real": ref_cache, "source": src_out[1]}})
    return rows


def evaluate(argv: list[str], live: dict | None = None) -> list[dict]:
    """The metrics the command line ``argv`` asks for, as the rows ``main`` prints (for other tools:
    tf_cartoon.compare, the trainer's --metrics). ``live``: {"fake" / "source": generator} in memory, named by
    ``--fake`` / ``--source`` in ``argv``."""
    with cli.user_input():
        return run(_parser().parse_args(argv), live)


@cli.command(setup="generate")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with cli.user_input():  # image sources and weight files report bad input as ValueError / OSError
        results = run(args)
    for r in results:
        print(json.dumps(r), flush=True)
    print(_table(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
