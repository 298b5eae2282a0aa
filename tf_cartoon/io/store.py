"""Checkpoints: every format, one loader (``load``).

Read: reference ``.pt`` files (torch zip or legacy format, ``io/torch_pickle``), NVlabs network pickles
(stylegan2-ada-pytorch and TensorFlow stylegan2 ``.pkl``, ``io/network_pickle`` + ``io/nvlabs``), our
converted directories, training workdirs and ``builtin:<name>``. Every file is read as data; nothing in
it runs.

A converted directory holds:
  config.json             architecture of each network, the reference args, ada_aug_p, latent_avg (where the
                          source stored a truncation centre)
  weights/ckpt-1.*        tf.train.Checkpoint(g_ema=..., g=..., d=...) (whichever exist)
  optimizer_states.npz    optional: the reference Adam states, reference names and layouts

Directories are written into a temporary sibling and renamed into place, so a
crash mid-write never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np

from tf_cartoon.io import integrity
from tf_cartoon.io import reference_keys as rk
from tf_cartoon.io import torch_pickle
from tf_cartoon.io.errors import CheckpointFormatError

FORMAT = "tf_cartoon/1"
MODEL_NAMES = ("g_ema", "g", "d")


@dataclasses.dataclass
class Checkpoint:
    """What ``tf_cartoon.load`` returns. Models are None when the file lacks them."""

    config: dict
    g_ema: Any = None
    g: Any = None
    d: Any = None
    args: dict = dataclasses.field(default_factory=dict)
    ada_aug_p: float = 0.0
    optimizer_states: dict | None = None  # {"g_optim": {...}, "d_optim": {...}} reference names/layouts
    path: str = ""
    latent_avg: np.ndarray | None = None  # [style_dim]: the stored truncation centre (NVlabs w_avg), if any

    def models(self) -> dict:
        return {n: m for n in MODEL_NAMES if (m := getattr(self, n)) is not None}


# ---------------------------------------------------------------------------
# Building networks from a config
# ---------------------------------------------------------------------------

def build_generator(cfg: dict, **overrides):
    from tf_cartoon.networks import Generator

    cfg = {k: v for k, v in cfg.items() if k != "name"}
    return Generator(**{**cfg, **overrides})


# Architecture settings the reference's state dict cannot express, kept in a .pt's args (flat keys, so that
# torch.load(weights_only=True) reads them) and restored from there: NVlabs networks have them.
ARCH_ARGS = {"generator": ("z_dim", "conv_clamp"), "discriminator": ("conv_clamp", "stddev_group", "stddev_features")}


def build_discriminator(cfg: dict, **overrides):
    from tf_cartoon.networks import Discriminator

    cfg = {k: v for k, v in cfg.items() if k in ("size", "channel_multiplier", "channels", "blur_kernel",
                                                  "stddev_group", "stddev_features", "conv_clamp")}
    return Discriminator(**{**cfg, **overrides})


# ---------------------------------------------------------------------------
# Reference .pt
# ---------------------------------------------------------------------------

def read_reference(path: str, models=MODEL_NAMES, fused_modconv: bool = False) -> Checkpoint:
    """Load a reference-format ``.pt`` (torch zip or legacy format; no torch needed) into Keras models."""
    return from_reference_object(torch_pickle.load(path), path, models, fused_modconv)


def read_nvlabs(path: str, models=MODEL_NAMES, fused_modconv: bool = False) -> Checkpoint:
    """Load an NVlabs network pickle (stylegan2-ada-pytorch or TensorFlow stylegan2) into Keras models."""
    from tf_cartoon.io import network_pickle, nvlabs

    obj = network_pickle.load(path)
    if not nvlabs.is_nvlabs(obj):
        raise rk.CheckpointMismatchError(f"{path}: a pickle, but not an NVlabs network pickle (no persistent "
                                         "G / G_ema / D networks, no dnnlib.tflib networks)")
    return from_reference_object(nvlabs.to_reference(obj, path), path, models, fused_modconv)


def from_reference_object(obj, path: str, models=MODEL_NAMES, fused_modconv: bool = False) -> Checkpoint:
    """A reference-format object (dict of state dicts, args, ada_aug_p, latent_avg) -> Checkpoint.

    ``obj.extras`` (io/nvlabs.Converted) carries what NVlabs networks add to the architecture."""
    if not isinstance(obj, dict):
        raise rk.CheckpointMismatchError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    if "style.1.weight" in obj:  # a bare generator state dict
        obj = {"g_ema": obj}
    present = [n for n in MODEL_NAMES if n in obj]
    if not present:
        raise rk.CheckpointMismatchError(
            f"{path}: no 'g_ema', 'g' or 'd' state dict (top-level keys: {sorted(map(str, obj))})")
    args = _args_dict(obj.get("args"))
    lr_mlp = float(args.get("lr_mlp", 0.01)) if isinstance(args.get("lr_mlp", 0.01), (int, float)) else 0.01
    extras = getattr(obj, "extras", None) or {k: {n: args[n] for n in names if args.get(n) is not None}
                                              for k, names in ARCH_ARGS.items()}
    config = {"format": FORMAT}
    gen_sd = obj.get("g_ema", obj.get("g"))
    if gen_sd is not None:
        config["generator"] = rk.infer_generator_config(gen_sd, source=path, lr_mlp=lr_mlp)
        config["generator"].update({k: v for k, v in extras.get("generator", {}).items() if v is not None})
    if "d" in obj:
        config["discriminator"] = rk.infer_discriminator_config(obj["d"], source=path)
        config["discriminator"].update({k: v for k, v in extras.get("discriminator", {}).items() if v is not None})
    _check_size_arg(args, config, path)
    latent_avg = _latent_avg(obj.get("latent_avg"), config.get("generator"), path)
    ckpt = Checkpoint(config=config, args=args, ada_aug_p=float(np.asarray(obj.get("ada_aug_p", 0.0))),
                      path=str(path), latent_avg=latent_avg)
    for name in present:
        if name not in models:
            continue
        sd = obj[name]
        if name == "d":
            model = build_discriminator(config["discriminator"])
            rk.load_state_dict(model, sd, rk.discriminator_table, "d", str(path))
        else:
            model = build_generator(config["generator"], fused_modconv=fused_modconv, name=name)
            rk.load_state_dict(model, sd, rk.generator_table, name, str(path))
            model.stored_mean_latent = latent_avg
        setattr(ckpt, name, model)
    opt = {k: obj[k] for k in ("g_optim", "d_optim") if isinstance(obj.get(k), dict)}
    ckpt.optimizer_states = opt or None
    return ckpt


def _latent_avg(value, gen_config, path):
    """The stored truncation centre as float32 [style_dim], or None (checked against the generator)."""
    if value is None or gen_config is None:
        return None
    arr = np.asarray(value, np.float32).reshape(-1)
    if arr.shape != (gen_config["style_dim"],) or not np.isfinite(arr).all():
        raise rk.CheckpointMismatchError(f"{path}: latent_avg has shape {np.shape(value)} (or non-finite values); "
                                         f"the generator's style_dim is {gen_config['style_dim']}")
    return arr


def write_reference(ckpt: Checkpoint, path: str) -> None:
    """Write a reference-format ``.pt`` (g, g_ema, d, optimizer states if known, args as a
    plain dict so that ``torch.load(weights_only=True)`` accepts the file)."""
    obj: dict[str, Any] = {}
    for name in ("g", "d", "g_ema"):
        model = getattr(ckpt, name)
        if model is None:
            continue
        if name == "d":
            obj[name] = rk.state_dict(model, rk.discriminator_table)
        else:
            obj[name] = rk.state_dict(model, rk.generator_table)
    if ckpt.optimizer_states:
        obj.update(ckpt.optimizer_states)
    obj["args"] = dict(ckpt.args)
    for kind, names in ARCH_ARGS.items():
        cfg = ckpt.config.get(kind) or {}
        obj["args"].update({n: cfg[n] for n in names if cfg.get(n) is not None})
    if ckpt.latent_avg is not None:
        obj["latent_avg"] = np.asarray(ckpt.latent_avg, np.float32)  # where rosinality's convert_weight puts it
    obj["ada_aug_p"] = float(ckpt.ada_aug_p)
    stem = os.path.splitext(os.path.basename(path))[0] or "archive"
    torch_pickle.save(obj, path, archive_name=stem)


def _args_dict(args) -> dict:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return {}
    return {str(k): v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v)
            for k, v in args.items()}


def _check_size_arg(args, config, path):
    size = args.get("size")
    gen = config.get("generator")
    if isinstance(size, int) and gen is not None and size != gen["size"]:
        raise rk.CheckpointMismatchError(f"{path}: args.size={size} but the generator weights are for "
                                         f"{gen['size']} px")


# ---------------------------------------------------------------------------
# Converted directories
# ---------------------------------------------------------------------------

def write_converted(ckpt: Checkpoint, out_dir: str, overwrite: bool = False) -> str:
    """Write ``ckpt`` as a converted directory (atomically)."""
    import tensorflow as tf  # here, not at the top: reading a file and its errors start no TensorFlow

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        models = ckpt.models()
        config = dict(ckpt.config, format=FORMAT, models=sorted(models), args=ckpt.args,
                      ada_aug_p=float(ckpt.ada_aug_p))
        if ckpt.latent_avg is not None:
            config["latent_avg"] = [float(v) for v in np.asarray(ckpt.latent_avg).reshape(-1)]
        tf.train.Checkpoint(**models).write(os.path.join(tmp, "weights", "ckpt"))
        if ckpt.optimizer_states:
            np.savez(os.path.join(tmp, "optimizer_states.npz"), **_flatten_optim(ckpt.optimizer_states))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        old = f"{out_dir}.old-{os.getpid()}"
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_converted(path: str, models=MODEL_NAMES, fused_modconv: bool = False) -> Checkpoint:
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: unknown format {config.get('format')!r}, expected {FORMAT!r}")
    present = [n for n in config.get("models", []) if n in models]
    prefix = os.path.join(path, "weights", "ckpt")
    reason = integrity.verify_checkpoint(prefix)
    if reason is not None:
        raise CheckpointFormatError(f"{path}: the converted checkpoint is damaged: {reason}")
    built = _restore_networks(config, present, fused_modconv, prefix, path)
    latent_avg = _latent_avg(config.get("latent_avg"), config.get("generator"), cfg_path)
    for name in ("g_ema", "g"):
        if name in built:
            built[name].stored_mean_latent = latent_avg
    ckpt = Checkpoint(config={k: v for k, v in config.items()
                              if k not in ("args", "ada_aug_p", "models", "latent_avg")},
                      args=config.get("args", {}), ada_aug_p=float(config.get("ada_aug_p", 0.0)), path=str(path),
                      latent_avg=latent_avg, **built)
    opt_path = os.path.join(path, "optimizer_states.npz")
    if os.path.exists(opt_path):
        with np.load(opt_path) as data:
            ckpt.optimizer_states = _unflatten_optim(dict(data))
    return ckpt


def _restore_networks(config: dict, names, fused_modconv: bool, prefix: str, path: str) -> dict:
    """Build the named networks from ``config`` and restore them from the TF checkpoint ``prefix``.

    Whatever else the checkpoint holds (networks not asked for, optimizers, step, ADA state) stays
    unread on purpose; everything we built must be found in it.
    """
    import tensorflow as tf  # here, not at the top: reading a file and its errors start no TensorFlow

    built = {name: build_discriminator(config["discriminator"]) if name == "d"
             else build_generator(config["generator"], fused_modconv=fused_modconv, name=name) for name in names}
    try:
        status = tf.train.Checkpoint(**built).read(prefix)
        status.assert_existing_objects_matched()
        status.expect_partial()
    except (tf.errors.OpError, IndexError, AssertionError, ValueError) as e:  # missing, truncated, corrupt
        raise ValueError(f"{path}: cannot restore the TF checkpoint {prefix}: {e}") from None
    return built


def _flatten_optim(states: dict) -> dict:
    """Adam state dicts -> flat npz entries: '<opt>/state/<i>/<field>' and '<opt>/group/<field>'."""
    flat = {}
    for opt, sd in states.items():
        for idx, st in sd.get("state", {}).items():
            for field, v in st.items():
                flat[f"{opt}/state/{idx}/{field}"] = np.asarray(v)
        for g, group in enumerate(sd.get("param_groups", [])):
            for field, v in group.items():
                if isinstance(v, (int, float, bool, list, tuple)) and not isinstance(v, str):
                    flat[f"{opt}/group{g}/{field}"] = np.asarray(v)
    return flat


def _unflatten_optim(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        opt, kind, *rest = key.split("/")
        sd = out.setdefault(opt, {"state": {}, "param_groups": []})
        if kind == "state":
            idx, field = int(rest[0]), rest[1]
            sd["state"].setdefault(idx, {})[field] = v
        else:
            g = int(kind[len("group"):])
            while len(sd["param_groups"]) <= g:
                sd["param_groups"].append({})
            val = v.tolist()
            sd["param_groups"][g][rest[0]] = val
    for sd in out.values():
        sd["state"] = dict(sorted(sd["state"].items()))
    return out


# ---------------------------------------------------------------------------
# Training workdirs (tf_cartoon.train): model_config.json + checkpoints/ckpt-N
# ---------------------------------------------------------------------------

WORKDIR_CONFIG = "model_config.json"


def write_workdir_config(workdir: str, generator: dict, discriminator: dict, args: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, WORKDIR_CONFIG + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, "generator": generator, "discriminator": discriminator, "args": args}, f,
                      indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(workdir, WORKDIR_CONFIG))
    except BaseException:  # e.g. a full disk: no torn temporary left beside the config
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_workdir(path: str, models=MODEL_NAMES, fused_modconv: bool = False) -> Checkpoint:
    """The newest intact checkpoint of a training workdir (g, g_ema, d; with g and d also the Adam states).

    A torn newer checkpoint (cut short by a full disk or an interrupted copy) is skipped with a warning
    naming it; it is left where it is (the training run moves it aside when it resumes)."""
    with open(os.path.join(path, WORKDIR_CONFIG)) as f:
        config = json.load(f)
    directory = os.path.join(path, "checkpoints")
    bad = []
    for prefix in integrity.candidates(directory):
        reason = integrity.verify_checkpoint(prefix)
        if reason is None:
            try:
                built = _restore_networks(config, models, fused_modconv, prefix, path)
            except ValueError as e:
                reason = str(e)
        if reason is not None:
            integrity.log.warning("skipping the torn checkpoint %s: %s", prefix, reason)
            bad.append(reason)
            continue
        if bad:
            integrity.log.warning("%s: using %s, its newest intact checkpoint", path, prefix)
        optim = _workdir_adam_states(config, built, prefix, path) if {"g", "d"} <= set(built) else None
        return Checkpoint(config={k: config[k] for k in ("generator", "discriminator")},
                          args=config.get("args", {}), path=str(path), optimizer_states=optim, **built)
    if bad:
        raise CheckpointFormatError(f"{path}: no intact checkpoint in the training workdir: {'; '.join(bad)}")
    raise ValueError(f"{path}: training workdir without a checkpoint yet (checkpoints/ is empty)")


def _workdir_adam_states(config: dict, built: dict, prefix: str, path: str) -> dict | None:
    """The run's Adam states (g_optim, d_optim) in the reference's layout, for ``convert --to-torch``: Keras
    Adams built on g's and d's variables as the trainer builds them, restored from the checkpoint. Every
    stored state gets the run's step count (the per-parameter counts of frozen parameters are not kept; after
    the hundreds of thousands of steps of a pretrained model, bias correction is 1 either way)."""
    import tensorflow as tf  # here, not at the top: reading a file and its errors start no TensorFlow

    import keras

    from tf_cartoon.training import adam_states

    opts = {name: keras.optimizers.Adam() for name in ("g_optim", "d_optim")}
    opts["g_optim"].build(built["g"].trainable_variables)
    opts["d_optim"].build(built["d"].trainable_variables)
    try:
        status = tf.train.Checkpoint(**opts).read(prefix)
        status.assert_existing_objects_matched()
        status.expect_partial()
    except (tf.errors.OpError, AssertionError, ValueError):  # an older workdir or another optimizer: no states
        return None
    return {name: adam_states.to_reference(opts[name], built["g" if name == "g_optim" else "d"],
                                           rk.generator_table if name == "g_optim" else rk.discriminator_table)
            for name in opts}


# ---------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------

def load(path: str, models=MODEL_NAMES, fused_modconv: bool = False) -> Checkpoint:
    """Load a reference ``.pt``, a converted directory or a training workdir into ready Keras models.

    ``models`` restricts which networks are built (e.g. ``("g_ema",)``). ``builtin:<name>`` loads a
    checkpoint shipped with the package (tf_cartoon/assets; unknown names: FileNotFoundError listing them).
    """
    from tf_cartoon import assets

    path = assets.resolve(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    models = tuple(models)
    unknown = set(models) - set(MODEL_NAMES)
    if unknown:
        raise ValueError(f"models must be among {MODEL_NAMES}, got {sorted(unknown)}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return read_converted(path, models, fused_modconv)
        if os.path.exists(os.path.join(path, WORKDIR_CONFIG)):
            return read_workdir(path, models, fused_modconv)
        raise ValueError(f"{path} is a directory without config.json or {WORKDIR_CONFIG}: neither a converted "
                         "checkpoint (python -m tf_cartoon.convert SRC.pt OUT_DIR) nor a training workdir")
    try:
        kind = torch_pickle.sniff(path)
    except OSError as e:
        raise rk.CheckpointFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    if kind in ("torch_zip", "torch_legacy"):
        return read_reference(path, models, fused_modconv)
    if kind == "pickle":
        return read_nvlabs(path, models, fused_modconv)
    if path.endswith((".pt", ".pth")):  # let the torch reader name what is wrong with it
        return read_reference(path, models, fused_modconv)
    raise rk.CheckpointFormatError(f"{path}: not a checkpoint: neither a torch .pt (zip or legacy format), an "
                                   "NVlabs .pkl, a converted directory nor a training workdir")

