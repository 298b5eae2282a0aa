"""Export a generator as a TF Serving SavedModel (deterministic signatures, plain TF ops).

    python -m tf_cartoon.export --target TARGET [--source SOURCE] --out export/cartoon \
        [--version N] [--truncation_samples 4096] [--seed 0] [--precision fp32|bf16|auto]

TARGET / SOURCE: anything ``tf_cartoon.load`` reads (a reference .pt, a converted
directory, a training workdir, builtin:<name>); their ``g_ema`` is exported
(``--ckpt`` is an older spelling of ``--target``). With a source, the pair must
pass tf_cartoon.latent.check_pair at every swap layer (the swap signature serves all). The SavedModel goes
to ``<out>/<version>/`` (TF Serving's layout: one integer folder per version);
the version defaults to 1 + the largest integer folder already there (or 1). It
is written into a hidden temporary folder under ``<out>`` and renamed into place,
so a server watching ``<out>`` never sees half a model; an existing version is
never overwritten. ``<out>/<version>/assets.extra/tf_cartoon_export.json``
describes the export (signatures, sizes, checkpoints, conventions, precision), and
``<out>/<version>/assets.extra/tf_serving_warmup_requests`` holds one request per signature (and per swap
layer) that TF Serving replays when it loads the version (tf_cartoon.serving_warmup), so that no user's first
request pays for the model's lazy start. The stages (mean latents and tracing, writing) report their times on
stderr; ``--quiet`` drops them.

Precision (``--precision``, default fp32): ``bf16`` exports a variant that computes in bfloat16 (the
generators are built under Keras' mixed_bfloat16 policy: float32 weights, bfloat16 compute), fast on CPUs with
AVX512_BF16 / AMX; its signatures, input and output dtypes are the fp32 export's (float32 in, uint8 out), and
its mean latents are stored in float32. ``auto``: bf16 where this machine's CPU computes bfloat16 natively and no
GPU is visible, else fp32. The metadata's ``precision`` says which.

Signatures (batch size free; every one is deterministic):

  serving_default  z float32 [B, z_dim], truncation_psi float32 [B]   (z_dim = style_dim but for some NVlabs nets)
                   -> image uint8 [B, H, W, 3]
  from_latent      wplus float32 [B, n_latent, style_dim] -> image uint8 [B, H, W, 3]
  png              z, truncation_psi -> png_bytes string [B] (one PNG file per image)
  swap             z, truncation_psi, swap_layer int32 [] (a scalar: one layer per request)
                   -> image uint8 [B, H, W, 3] (target with the source's feature swapped in),
                      source_image uint8 [B, H, W, 3]          (only with --source)

Conventions:
  * Noise: the generators' stored noise buffers (the reference's randomize_noise=False).
  * Truncation, per sample: w' = t + psi * (w - t) with t the generator's own mean
    latent (mean of the mapping over ``--truncation_samples`` N(0, 1) latents drawn
    with the stateless seed ``--seed``, computed once at export and stored in the
    SavedModel as the variables ``mean_latents``). psi = 1 means no truncation.
    In ``swap`` the source is truncated toward ITS mean, the target toward its own,
    and each maps z with its own mapping network.
  * uint8 images: ``clip((x + 1) * 127.5 + 0.5, 0, 255)`` truncated to an integer,
    i.e. [-1, 1] -> [0, 255] rounded half up (torchvision's save_image convention).
  * swap_layer L (1..n_blocks) replaces the target's feature after convs.{2L-1}
    (the block at resolution 2^(L+2)) by the source's; an L outside that range fails
    with an InvalidArgumentError naming swap_layer and the valid range.
  * The PNG output is named ``png_bytes`` because TF Serving's REST API base64-encodes
    (``{"b64": ...}``) exactly the string outputs whose name ends in ``_bytes``.
  * Shapes are checked inside the graph (EnsureShape: "Shape of tensor z [2,5] is not
    compatible with expected shape [?,512]"; z and truncation_psi must agree on the batch
    size), since ``tf.saved_model.load(...).signatures[...]`` feeds tensors without checking
    them against the signature's TensorSpecs (and a server may too).

Only plain TF ops are exported (tf_cartoon.ops runs its plain paths during the
export: ``tf_cartoon.ops.dispatch.plain_ops``), so stock TF Serving / ``saved_model_cli``
load the model without this package.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile

from tf_cartoon import cli, latent, serving_warmup
from tf_cartoon import precision as prec
from tf_cartoon.cli import UsageError
from tf_cartoon.progress import stage

FORMAT = "tf_cartoon_export/1"
EXPORT_PRECISIONS = ("auto", "fp32", "bf16")  # fp16 is a GPU training precision, not an export's
METADATA_FILE = "tf_cartoon_export.json"
METADATA_DIR = "assets.extra"

log = logging.getLogger("tf_cartoon.export")

WARMUP_BATCH = 1  # rows per warm-up request: the lazy start does not depend on the batch size
WARMUP_PSI = 0.7


class ExportError(UsageError):
    """A user error (bad arguments, existing version, incompatible checkpoints)."""


# ---------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------

def _version_folders(base: str) -> list[int]:
    if not os.path.isdir(base):
        return []
    return sorted(int(n) for n in os.listdir(base) if n.isdigit() and os.path.isdir(os.path.join(base, n)))


def incomplete_reason(version_dir: str) -> str | None:
    """None when ``version_dir`` holds a whole SavedModel, else what is wrong (naming the file).

    Our exports are renamed into place only when complete, so an incomplete version comes from elsewhere: a
    copy cut short, a full disk under another writer, a storage fault. Checked: saved_model.pb parses and the
    variables checkpoint verifies (io/integrity: index readable, data files as long as it says)."""
    pb = os.path.join(version_dir, "saved_model.pb")
    if not os.path.exists(pb):
        return f"{pb} is missing"
    try:
        from tensorflow.core.protobuf import saved_model_pb2

        with open(pb, "rb") as f:
            saved_model_pb2.SavedModel.FromString(f.read())
    except Exception as e:  # noqa: BLE001 - a torn protobuf fails in several ways
        return f"{pb} is unreadable ({type(e).__name__})"
    variables = os.path.join(version_dir, "variables")
    if os.path.isdir(variables):
        from tf_cartoon.io import integrity

        return integrity.verify_checkpoint(os.path.join(variables, "variables"))
    return None


def incomplete_versions(base: str) -> dict[int, str]:
    """{version: reason} for the integer subfolders of ``base`` that are not whole SavedModels."""
    out = {}
    for v in _version_folders(base):
        reason = incomplete_reason(os.path.join(base, str(v)))
        if reason is not None:
            out[v] = reason
    return out


def existing_versions(base: str) -> list[int]:
    """Integer subfolders of ``base`` (TF Serving's model versions) that hold a whole SavedModel, sorted.

    An incomplete version is never counted (a warning names it)."""
    bad = incomplete_versions(base)
    for v, reason in bad.items():
        log.warning("skipping the incomplete SavedModel version %s: %s", os.path.join(base, str(v)), reason)
    return [v for v in _version_folders(base) if v not in bad]


def next_version(base: str) -> int:
    """1 + the largest integer folder, complete or not (a new export never takes an incomplete one's name)."""
    versions = _version_folders(base)
    return versions[-1] + 1 if versions else 1


def set_aside_incomplete(base: str) -> list[str]:
    """Rename incomplete versions to hidden ``.incomplete-<v>`` folders, which TF Serving ignores (so it never
    tries to serve them); nothing is deleted. Returns the new paths."""
    moved = []
    for v, reason in incomplete_versions(base).items():
        src, dest, i = os.path.join(base, str(v)), os.path.join(base, f".incomplete-{v}"), 1
        while os.path.exists(dest):
            i += 1
            dest = os.path.join(base, f".incomplete-{v}-{i}")
        os.replace(src, dest)
        log.warning("SavedModel version %s is incomplete (%s); moved it to %s", src, reason, dest)
        moved.append(dest)
    return moved


# ---------------------------------------------------------------------------
# The serving graph
# ---------------------------------------------------------------------------

def to_uint8(image):
    """[-1, 1] float image -> uint8: clip((x + 1) * 127.5 + 0.5, 0, 255), truncated."""
    import tensorflow as tf

    x = tf.cast(image, tf.float32)
    return tf.cast(tf.clip_by_value((x + 1.0) * 127.5 + 0.5, 0.0, 255.0), tf.uint8)


class CartoonServing:
    """The exported computations as plain methods (usable eagerly too).

    ``target`` / ``source`` are Generators; their mean latents are computed here, once,
    and kept as non-trainable variables ``target_mean`` / ``source_mean`` ([1, style_dim];
    the SavedModel's ``mean_latents`` list).
    """

    def __init__(self, target, source=None, truncation_samples: int = 4096, seed: int = 0,
                 pairing: str = "shared_w"):
        import tensorflow as tf

        from tf_cartoon.generate import PAIRINGS

        if pairing not in PAIRINGS:
            raise ExportError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
        self.target, self.source, self.pairing = target, source, pairing
        if source is not None:  # the swap signature serves every layer
            latent.check_pair(source, target, "all", same_z=pairing == "own_z")
        self.size, self.style_dim, self.z_dim = int(target.size), int(target.style_dim), int(target.z_dim)
        self.n_latent, self.n_blocks = int(target.n_latent), int(target.n_blocks)
        self.truncation_samples, self.seed = int(truncation_samples), int(seed)
        self.precision = prec.of_layer(target)
        # float32 whatever the compute precision: the variables' dtype is part of what the export promises
        self.target_mean = tf.Variable(tf.cast(target.mean_latent(self.truncation_samples, seed=self.seed),
                                               tf.float32), trainable=False, name="target_mean_latent")
        self.source_mean = None
        if source is not None:
            self.source_mean = tf.Variable(tf.cast(source.mean_latent(self.truncation_samples, seed=self.seed),
                                                   tf.float32), trainable=False, name="source_mean_latent")
        # The target's synthesis W+ -> float image, traced once and called by serving_default,
        # from_latent and png (one copy in the graph, a third of the tracing time).
        wplus_spec = tf.TensorSpec([None, self.n_latent, self.style_dim], tf.float32)
        self._synthesize = tf.function(self._target_synthesis, input_signature=[wplus_spec], autograph=False)

    def _target_synthesis(self, wplus):
        return self.target.synthesis(wplus, noise=None, randomize_noise=False).image

    # -- input specs -------------------------------------------------------------------------------
    def specs(self) -> dict:
        import tensorflow as tf

        z = tf.TensorSpec([None, self.z_dim], tf.float32, name="z")
        psi = tf.TensorSpec([None], tf.float32, name="truncation_psi")
        out = {"serving_default": [z, psi],
               "from_latent": [tf.TensorSpec([None, self.n_latent, self.style_dim], tf.float32, name="wplus")],
               "png": [z, psi]}
        if self.source is not None:
            out["swap"] = [z, psi, tf.TensorSpec([], tf.int32, name="swap_layer")]
        return out

    def functions(self) -> dict:
        fns = {"serving_default": self.generate, "from_latent": self.from_latent, "png": self.png}
        if self.source is not None:
            fns["swap"] = self.swap
        return fns

    # -- helpers -----------------------------------------------------------------------------------
    def _check_z(self, z, truncation_psi):
        import tensorflow as tf

        z = tf.ensure_shape(tf.convert_to_tensor(z, tf.float32), [None, self.z_dim],
                            name="check_z_shape")
        psi = tf.ensure_shape(tf.convert_to_tensor(truncation_psi, tf.float32), [None],
                              name="check_truncation_psi_shape")
        check = tf.debugging.assert_equal(
            tf.shape(psi)[0], tf.shape(z)[0],
            message=f"truncation_psi must hold one value per row of z (z is [batch, {self.z_dim}], "
                    "truncation_psi is [batch])")
        with tf.control_dependencies([check]):
            return tf.identity(z), tf.identity(psi)

    @staticmethod
    def _wplus(g, z, psi, mean):
        # Per-sample truncation t + psi * (w - t) toward ``mean`` (psi = 1: no truncation).
        return g.make_wplus(z, input_is_latent=False, truncation=psi, truncation_latent=mean)

    def _image(self, z, truncation_psi):
        import tensorflow as tf

        z, psi = self._check_z(z, truncation_psi)
        # _synthesize takes float32 W+ (from_latent's input); a bf16 mapping's W+ converts exactly
        return self._synthesize(tf.cast(self._wplus(self.target, z, psi, self.target_mean), tf.float32))

    # -- signatures --------------------------------------------------------------------------------
    def generate(self, z, truncation_psi):
        return {"image": to_uint8(self._image(z, truncation_psi))}

    def from_latent(self, wplus):
        import tensorflow as tf

        wplus = tf.ensure_shape(tf.convert_to_tensor(wplus, tf.float32), [None, self.n_latent, self.style_dim],
                                name="check_wplus_shape")
        return {"image": to_uint8(self._synthesize(wplus))}

    def png(self, z, truncation_psi):
        import tensorflow as tf

        images = to_uint8(self._image(z, truncation_psi))
        encoded = tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.TensorSpec([], tf.string))
        return {"png_bytes": encoded}

    def swap(self, z, truncation_psi, swap_layer):
        import tensorflow as tf

        if self.source is None:
            raise ValueError("swap needs a source generator")
        z, psi = self._check_z(z, truncation_psi)
        n = self.n_blocks
        layer = tf.convert_to_tensor(swap_layer, tf.int32)
        valid = tf.debugging.Assert(
            tf.logical_and(layer >= 1, layer <= n),
            [f"swap_layer must be an integer in 1..{n} (the synthesis blocks of this {self.size} px "
             f"generator: L swaps the feature after convs.{{2L-1}}), got", layer])
        with tf.control_dependencies([valid]):
            index = tf.identity(layer) - 1
        # One source pass gives its image and the feature at every swap point.
        src = self.source.synthesis(self._wplus(self.source, z, psi, self.source_mean), noise=None,
                                    randomize_noise=False, tap_layers=tuple(range(1, n + 1)))
        if self.pairing == "shared_w":  # the source's w, truncated toward the target's own mean (tf_cartoon.generate)
            tgt_wplus = self.target.make_wplus(self.source.mapping(z), input_is_latent=True, truncation=psi,
                                               truncation_latent=self.target_mean)
        else:
            tgt_wplus = self._wplus(self.target, z, psi, self.target_mean)

        def branch(L):
            return lambda: self.target.synthesis(tgt_wplus, noise=None, randomize_noise=False, swap_layer=L,
                                                 swap_feature=src.features[L]).image

        image = tf.switch_case(index, [branch(L) for L in range(1, n + 1)], name="swap_layer_case")
        return {"image": to_uint8(image), "source_image": to_uint8(src.image)}

    # -- warm-up -----------------------------------------------------------------------------------
    def warmup_requests(self) -> list:
        """[(signature_name, {input: numpy array})]: one valid request per signature and, for swap, per swap
        layer (each layer is its own branch of the graph): z drawn with the export's seed, truncation_psi
        WARMUP_PSI, wplus the target's mean latent in every row."""
        import numpy as np

        b = WARMUP_BATCH
        z = np.random.default_rng(self.seed).standard_normal([b, self.z_dim]).astype(np.float32)
        psi = np.full([b], WARMUP_PSI, np.float32)
        wplus = np.broadcast_to(self.target_mean.numpy()[:, None, :], [b, self.n_latent, self.style_dim])
        out = [("serving_default", {"z": z, "truncation_psi": psi}),
               ("from_latent", {"wplus": np.ascontiguousarray(wplus, np.float32)}),
               ("png", {"z": z, "truncation_psi": psi})]
        if self.source is not None:
            out += [("swap", {"z": z, "truncation_psi": psi, "swap_layer": np.array(L, np.int32)})
                    for L in range(1, self.n_blocks + 1)]
        return out

    # -- description -------------------------------------------------------------------------------
    def describe(self) -> dict:
        h = self.size
        img = {"dtype": "uint8", "shape": [None, h, h, 3]}
        z = {"dtype": "float32", "shape": [None, self.z_dim]}
        psi = {"dtype": "float32", "shape": [None]}
        sigs = {
            "serving_default": {
                "inputs": {"z": z, "truncation_psi": psi}, "outputs": {"image": img},
                "description": "target image from z, truncated per sample toward the target's mean latent"},
            "from_latent": {
                "inputs": {"wplus": {"dtype": "float32", "shape": [None, self.n_latent, self.style_dim]}},
                "outputs": {"image": img}, "description": "target image from a W+ latent (no truncation)"},
            "png": {
                "inputs": {"z": z, "truncation_psi": psi},
                "outputs": {"png_bytes": {"dtype": "string", "shape": [None]}},
                "description": "serving_default's images, each PNG-encoded (REST: {\"b64\": ...})"},
        }
        if self.source is not None:
            sigs["swap"] = {
                "inputs": {"z": z, "truncation_psi": psi, "swap_layer": {"dtype": "int32", "shape": []}},
                "outputs": {"image": img, "source_image": img},
                "description": f"layer swapping: the target with the source's feature after convs.{{2L-1}} "
                               f"swapped in at swap_layer L (a scalar, 1..{self.n_blocks}); each generator maps "
                               "z with its own mapping and truncates toward its own mean latent"}
        return sigs


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------

def build_archive(serving: CartoonServing):
    """A keras.export.ExportArchive with every signature of ``serving``."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(serving.target)
    if serving.source is not None:
        archive.track(serving.source)
    specs = serving.specs()
    for name, fn in serving.functions().items():  # serving_default first
        archive.add_endpoint(name, fn, input_signature=specs[name])
    means = [serving.target_mean] + ([serving.source_mean] if serving.source_mean is not None else [])
    archive.add_variable_collection("mean_latents", means)
    return archive


def export(ckpt: str, out: str, source: str | None = None, version: int | None = None,
           truncation_samples: int = 4096, seed: int = 0, target_flag: str = "--target",
           pairing: str = "shared_w", quiet: bool = True, precision: str = "fp32") -> str:
    """Write ``<out>/<version>/`` (SavedModel + assets.extra/tf_cartoon_export.json and
    tf_serving_warmup_requests); returns its path. ``quiet=False``: the stages (mean latents and tracing,
    writing) with their times on stderr. ``precision``: fp32, bf16 or auto (tf_cartoon.precision; the
    generators compute in it, the signatures stay float32 in, uint8 out).

    ``ckpt`` / ``source``: checkpoint specs (paths or builtin:<name>). Raises FileExistsError (version
    exists), ExportError (bad arguments) or cli.UsageError (a missing, unreadable or incompatible
    checkpoint, the message naming ``target_flag`` / --source).
    """
    if truncation_samples < 1:
        raise ExportError(f"--truncation_samples must be >= 1, got {truncation_samples}")
    if version is not None and version < 1:
        raise ExportError(f"--version must be a positive integer, got {version}")
    from tf_cartoon.ops.dispatch import plain_ops

    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    concrete = prec.resolve(precision)
    out = os.path.abspath(out)
    set_aside_incomplete(out)  # this writer owns ``out``: a torn version must not be what a server picks up
    if version is None:
        version = next_version(out)
    final = os.path.join(out, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"version {version} already exists at {final}; refusing to overwrite "
                              "(pick another --version or leave it out for the next free one)")

    with plain_ops():  # no compiled op, no nested XLA cluster: what stock TF Serving runs
        target = cli.load_generator(ckpt, target_flag, precision=concrete)  # built computing in ``concrete``
        src = cli.load_generator(source, "--source", precision=concrete) if source is not None else None
        if src is not None:
            latent.check_pair(src, target, "all", "--source", same_z=pairing == "own_z")
        with stage(f"mean latents ({truncation_samples} samples) and tracing the signatures", quiet=quiet):
            serving = CartoonServing(target, src, truncation_samples, seed, pairing)
            archive = build_archive(serving)
        os.makedirs(out, exist_ok=True)
        # Hidden, non-integer name: TF Serving ignores it while it is being written.
        tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=out)
        try:
            try:
                with stage("writing the SavedModel", quiet=quiet):
                    archive.write_out(tmp, verbose=False)
            except tf_errors().OpError as e:  # e.g. ResourceExhaustedError "No space left on device"
                from tf_cartoon.io.errors import StorageError
                from tf_cartoon.io.integrity import one_line

                raise StorageError(f"cannot write the SavedModel version {final} ({one_line(e)}); nothing was "
                                   "left under that name") from None
            meta = _metadata(serving, ckpt, source, version, os.path.basename(out))
            os.makedirs(os.path.join(tmp, METADATA_DIR), exist_ok=True)
            with open(os.path.join(tmp, METADATA_DIR, METADATA_FILE), "w") as f:
                json.dump(meta, f, indent=2)
            serving_warmup.write(tmp, os.path.basename(out), serving.warmup_requests())
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            if os.path.exists(final):  # appeared while we were writing
                raise FileExistsError(f"version {version} already exists at {final}; refusing to overwrite")
            try:
                os.rename(tmp, final)  # atomic; fails if a non-empty folder took the name meanwhile
            except OSError:
                if os.path.exists(final):
                    raise FileExistsError(f"version {version} already exists at {final}; "
                                          "refusing to overwrite") from None
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def tf_errors():
    import tensorflow as tf

    return tf.errors


def _metadata(serving: CartoonServing, ckpt: str, source: str | None, version: int, model_name: str) -> dict:
    import keras
    import tensorflow as tf

    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "version": version,
        "target": cli.checkpoint_record(ckpt),
        "source": cli.checkpoint_record(source) if source is not None else None,
        "size": serving.size, "height": serving.size, "width": serving.size, "channels": 3,
        "style_dim": serving.style_dim, "z_dim": serving.z_dim, "n_latent": serving.n_latent,
        "n_blocks": serving.n_blocks,
        "swap_layers": list(range(1, serving.n_blocks + 1)) if serving.source is not None else [],
        "pairing": serving.pairing if serving.source is not None else None,
        "truncation": {"formula": "w' = t + truncation_psi * (w - t), per sample; psi = 1: none",
                       "mean_latent": "the checkpoint's stored w_avg where it has one, else the mean of the "
                                      "mapping of truncation_samples stateless N(0, 1) z (seed), per generator; "
                                      "stored as the variables mean_latents",
                       "truncation_samples": serving.truncation_samples, "seed": serving.seed},
        "noise": "stored noise buffers (deterministic)",
        "precision": serving.precision,
        "warmup": {"file": f"{serving_warmup.DIR}/{serving_warmup.FILE}", "model_name": model_name,
                   "requests": [name for name, _ in serving.warmup_requests()]},
        "image_encoding": "uint8 = clip((x + 1) * 127.5 + 0.5, 0, 255) truncated, x the [-1, 1] NHWC image",
        "signatures": serving.describe(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

@cli.command(setup="generate")
def main(argv=None) -> int:
    p = cli.parser("python -m tf_cartoon.export", __doc__)
    cli.add_role(p, "target", "--ckpt", required=True,
                 help="target (fine-tuned) checkpoint: .pt, converted dir, training workdir or builtin:<name>")
    cli.add_role(p, "source", default=None, help="source (pretrained) checkpoint; adds the 'swap' signature")
    cli.add_role(p, "out", required=True, help="model base path (TF Serving --model_base_path)")
    p.add_argument("--version", type=int, default=None, help="version folder (default: 1 + the largest existing)")
    p.add_argument("--truncation_samples", type=int, default=4096, help="latents averaged for each mean latent")
    p.add_argument("--seed", type=int, default=0, help="seed of those latents")
    p.add_argument("--pairing", choices=("shared_w", "own_z"), default="shared_w",
                   help="the swap signature's target latent: shared_w (default, as the reference's demos): z "
                        "through the source's mapping; own_z: through the target's own")
    cli.add_precision(p, default="fp32")
    cli.add_quiet(p)
    args = p.parse_args(argv)

    path = export(args.target, args.out, source=args.source, version=args.version,
                  truncation_samples=args.truncation_samples, seed=args.seed, target_flag=cli.flag(args, "target"),
                  pairing=args.pairing, quiet=args.quiet, precision=args.precision)
    with open(os.path.join(path, METADATA_DIR, METADATA_FILE)) as f:
        meta = json.load(f)
    print(f"wrote {path}: signatures {', '.join(meta['signatures'])}; {meta['size']} px, style_dim "
          f"{meta['style_dim']}, n_latent {meta['n_latent']}; {meta['precision']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
