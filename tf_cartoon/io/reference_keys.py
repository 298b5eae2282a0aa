"""Our variables <-> the reference's state-dict names, layouts and architecture.

One table per network lists ``(reference key, our variable, layout)``; the layout
says how the array is transposed between the reference (PyTorch, NCHW, weights
``[out, in, ...]``) and us (NHWC, weights ``[..., in, out]``). Fixed FIR filter
buffers (``*.kernel``) are not variables: we recompute them, check them on load
and write them back on export.

``infer_*_config`` read the architecture off the tensor shapes, so any
checkpoint of the reference's format loads without being told its size,
style_dim, n_mlp or channel table.
"""

from __future__ import annotations

import logging
import re
from typing import Callable

import numpy as np

from tf_cartoon.io.errors import CheckpointMismatchError  # noqa: F401  (re-exported)
from tf_cartoon.arch import make_kernel


log = logging.getLogger(__name__)

# Buffers older or third-party checkpoints may lack; the reference loads those files with
# strict=False and keeps its own. We do the same for these only (and say so): a missing
# PARAMETER is always an error, never a silently random weight.
OPTIONAL_PREFIXES = ("noises.",)




# layout name -> (reference -> ours, ours -> reference)
LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda a: a, lambda a: a),
    # EqualLinear weight [out, in] <-> kernel [in, out]
    "linear": (lambda a: a.T, lambda a: a.T),
    # EqualConv2d weight [out, in, k, k] <-> [k, k, in, out]
    "conv": (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    # ModulatedConv2d weight [1, out, in, k, k] <-> [k, k, in, out]
    "modconv": (lambda a: a[0].transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)[None]),
    # constant input / noise buffers [1, C, H, W] <-> [1, H, W, C]
    "nchw": (lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2)),
    # ToRGB bias [1, 3, 1, 1] <-> [3]
    "rgb_bias": (lambda a: a.reshape(-1), lambda a: a.reshape(1, -1, 1, 1)),
}


def _flatten_linear_layouts(channels: int, h: int = 4, w: int = 4):
    """final_linear.0: the reference flattens NCHW (index c*h*w + y*w + x), we flatten
    NHWC (index (y*w + x)*c + c). Permute the weight's input axis accordingly."""
    idx = np.arange(channels * h * w).reshape(channels, h, w).transpose(1, 2, 0).reshape(-1)  # ours -> theirs
    inv = np.argsort(idx)

    def to_ours(a):  # [out, C*h*w] (NCHW order) -> [h*w*C (NHWC order), out]
        return a[:, idx].T

    def to_ref(a):
        return a.T[:, inv]

    return to_ours, to_ref


def generator_table(g) -> list[tuple[str, object, str]]:
    """(reference key, variable, layout) in the reference's state-dict order.

    Rows with layout "buffer" hold a fixed FIR kernel (a numpy array, not a
    variable); the noise maps are variables (non-trainable) and come last.
    """
    rows = []
    fir = make_kernel(g.blur_kernel, gain=4)
    for i, dense in enumerate(g.style.dense):
        rows += [(f"style.{i + 1}.weight", dense.kernel, "linear"), (f"style.{i + 1}.bias", dense.bias, "same")]
    rows.append(("input.input", g.const_input.const, "nchw"))

    def styled(prefix, layer):
        blur = [(f"{prefix}.conv.blur.kernel", fir, "buffer")] if layer.upsample else []
        return [(f"{prefix}.conv.weight", layer.conv.kernel, "modconv"), *blur,
                (f"{prefix}.conv.modulation.weight", layer.conv.modulation.kernel, "linear"),
                (f"{prefix}.conv.modulation.bias", layer.conv.modulation.bias, "same"),
                (f"{prefix}.noise.weight", layer.noise.strength, "same"),
                (f"{prefix}.activate.bias", layer.activate.bias, "same")]

    def to_rgb(prefix, layer):
        up = [(f"{prefix}.upsample.kernel", fir, "buffer")] if layer.upsample else []
        return [(f"{prefix}.bias", layer.bias, "rgb_bias"), *up,
                (f"{prefix}.conv.weight", layer.conv.kernel, "modconv"),
                (f"{prefix}.conv.modulation.weight", layer.conv.modulation.kernel, "linear"),
                (f"{prefix}.conv.modulation.bias", layer.conv.modulation.bias, "same")]

    rows += styled("conv1", g.conv1) + to_rgb("to_rgb1", g.to_rgb1)
    for j, layer in enumerate(g.convs):
        rows += styled(f"convs.{j}", layer)
    for j, layer in enumerate(g.to_rgbs):
        rows += to_rgb(f"to_rgbs.{j}", layer)
    rows += [(f"noises.noise_{i}", v, "nchw") for i, v in enumerate(g.noise_buffers)]
    return rows


def discriminator_table(d) -> list[tuple[str, object, str]]:
    """(reference key, variable or fixed FIR kernel, layout) in the reference's order."""
    fir = make_kernel(d.blur_kernel)
    rows = [("convs.0.0.weight", d.convs[0].conv.kernel, "conv"), ("convs.0.1.bias", d.convs[0].act.bias, "same")]
    for k, block in enumerate(d.convs[1:], start=1):
        rows += [(f"convs.{k}.conv1.0.weight", block.conv1.conv.kernel, "conv"),
                 (f"convs.{k}.conv1.1.bias", block.conv1.act.bias, "same"),
                 (f"convs.{k}.conv2.0.kernel", fir, "buffer"),
                 (f"convs.{k}.conv2.1.weight", block.conv2.conv.kernel, "conv"),
                 (f"convs.{k}.conv2.2.bias", block.conv2.act.bias, "same"),
                 (f"convs.{k}.skip.0.kernel", fir, "buffer"),
                 (f"convs.{k}.skip.1.weight", block.skip.conv.kernel, "conv")]
    rows += [("final_conv.0.weight", d.final_conv.conv.kernel, "conv"),
             ("final_conv.1.bias", d.final_conv.act.bias, "same"),
             ("final_linear.0.weight", d.final_linear[0].kernel, "flatten_linear"),
             ("final_linear.0.bias", d.final_linear[0].bias, "same"),
             ("final_linear.1.weight", d.final_linear[1].kernel, "linear"),
             ("final_linear.1.bias", d.final_linear[1].bias, "same")]
    return rows


def parameter_keys(table) -> list[str]:
    """Reference names of the trainable parameters, in model.parameters() order
    (= the index order of the reference's Adam states)."""
    return [k for k, _, layout in table if layout != "buffer" and not k.startswith(OPTIONAL_PREFIXES)]


def layout_of(table_layout, var):
    """(reference -> ours, ours -> reference) array functions of a table row's layout."""
    if table_layout == "flatten_linear":
        c = int(var.shape[1])
        return _flatten_linear_layouts(c, 4, 4)
    return LAYOUTS[table_layout]


def load_state_dict(model, state_dict, table_fn, what: str, source: str = "") -> None:
    """Assign a reference state dict to ``model``; strict like torch's load_state_dict,
    except for the buffers listed in OPTIONAL_PREFIXES and the fixed FIR kernels,
    which may be absent (a warning says so).

    Raises CheckpointMismatchError naming missing / unexpected keys or the key and
    both shapes of a mismatch. Nothing is assigned unless every entry fits.
    """
    where = f" in {source}" if source else ""
    table = table_fn(model)
    expected = {k for k, _, _ in table}
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    buffers = {k for k, _, layout in table if layout == "buffer"}
    optional = [k for k in missing if k in buffers or k.startswith(OPTIONAL_PREFIXES)]
    if optional:
        log.warning("%s%s lacks buffers %s: keeping this network's own (fixed FIR kernels / stored noise)",
                    what, where, _short(optional))
        missing = [k for k in missing if k not in optional]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointMismatchError(f"{what} state dict{where} does not match the network: " + "; ".join(parts))
    values = []
    for key, var, layout in table:
        if key not in state_dict:  # an optional buffer, reported above
            continue
        arr = np.asarray(state_dict[key])
        if layout == "buffer":
            if arr.shape != var.shape or not np.allclose(arr.astype(np.float32), var, rtol=1e-6, atol=1e-7):
                raise CheckpointMismatchError(
                    f"{what}{where}: FIR buffer '{key}' {arr.tolist()} differs from the kernel this network "
                    f"uses {var.tolist()} (blur_kernel={model.blur_kernel})")
            continue
        want = reference_shape(var, layout)
        if tuple(arr.shape) != want:
            raise CheckpointMismatchError(f"{what}{where}: '{key}' has shape {tuple(arr.shape)}, "
                                          f"the network expects {want}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise CheckpointMismatchError(f"{what}{where}: '{key}' has dtype {arr.dtype}, expected floating point")
        values.append((var, layout_of(layout, var)[0](arr.astype(np.float32))))
    for var, value in values:
        var.assign(value)


def state_dict(model, table_fn) -> dict[str, np.ndarray]:
    """The reference state dict of ``model`` (the reference's key order)."""
    out = {}
    for key, var, layout in table_fn(model):
        if layout == "buffer":
            out[key] = var.copy()
        else:
            out[key] = np.ascontiguousarray(layout_of(layout, var)[1](np.asarray(var.numpy())), dtype=np.float32)
    return out


def reference_shape(var, layout):
    """The reference's shape of a variable stored with ``layout``."""
    dummy = np.empty(tuple(var.shape), np.float32)
    return tuple(layout_of(layout, var)[1](dummy).shape)


def _short(keys, n=8):
    return ", ".join(f"'{k}'" for k in keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


# ---------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------

def _need(sd, key, what, source):
    if key not in sd:
        raise CheckpointMismatchError(f"{what} state dict{' in ' + source if source else ''} has no '{key}': "
                                      "not a StyleGAN2 checkpoint of the reference's format")
    return np.asarray(sd[key])


def infer_generator_config(sd, source: str = "", lr_mlp: float = 0.01) -> dict:
    """Generator kwargs (size, style_dim, n_mlp, channels, blur_kernel; z_dim where it is not style_dim)
    from a state dict."""
    what = "generator"
    style_idx = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    if not style_idx:
        _need(sd, "style.1.weight", what, source)
    if style_idx != list(range(1, len(style_idx) + 1)):
        raise CheckpointMismatchError(f"{what}: mapping layers style.{style_idx} are not numbered 1..n")
    z_dim = int(_need(sd, "style.1.weight", what, source).shape[1])
    style_dim = int(_need(sd, "conv1.conv.modulation.weight", what, source).shape[1])
    n_convs = len({int(m.group(1)) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv\.weight", k))})
    if n_convs == 0 or n_convs % 2:
        raise CheckpointMismatchError(f"{what}: found {n_convs} synthesis convs (convs.*.conv.weight); "
                                      "expected a positive even number")
    log_size = n_convs // 2 + 2
    size = 2 ** log_size
    channels = {4: int(_need(sd, "conv1.conv.weight", what, source).shape[1])}
    for b in range(n_convs // 2):
        channels[2 ** (b + 3)] = int(_need(sd, f"convs.{2 * b}.conv.weight", what, source).shape[1])
    blur = _infer_blur(sd, "convs.0.conv.blur.kernel", gain=4)
    config = {"size": size, "style_dim": style_dim, "n_mlp": len(style_idx), "lr_mlp": lr_mlp,
              "channels": {str(k): v for k, v in channels.items()}, "blur_kernel": blur,
              "channel_multiplier": _guess_multiplier(channels)}
    if z_dim != style_dim:  # NVlabs networks may map a z of another width (the reference's never do)
        config["z_dim"] = z_dim
    return config


def infer_discriminator_config(sd, source: str = "") -> dict:
    what = "discriminator"
    blocks = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv2\.1\.weight", k))}
    if not blocks:
        _need(sd, "convs.1.conv2.1.weight", what, source)
    n = max(blocks)
    log_size = n + 2
    size = 2 ** log_size
    channels = {size: int(_need(sd, "convs.0.0.weight", what, source).shape[0])}
    for k in range(1, n + 1):
        channels[2 ** (log_size - k)] = int(_need(sd, f"convs.{k}.conv2.1.weight", what, source).shape[0])
    blur = _infer_blur(sd, "convs.1.conv2.0.kernel", gain=1)
    return {"size": size, "channels": {str(k): v for k, v in channels.items()}, "blur_kernel": blur,
            "channel_multiplier": _guess_multiplier(channels)}


def _infer_blur(sd, key, gain):
    """Recover the 1-D FIR taps from a stored 2-D kernel (outer product, normalised)."""
    if key not in sd:
        return [1, 3, 3, 1]
    k2 = np.asarray(sd[key], np.float64) / gain
    if k2.ndim != 2 or not np.isfinite(k2).all() or k2.sum() <= 0:
        return [1, 3, 3, 1]  # load_state_dict reports the mismatch with the key's values
    col = k2.sum(axis=1)
    taps = col / col.min() if col.min() > 0 else col
    rounded = np.round(taps).astype(int)
    if np.allclose(np.outer(rounded, rounded) / np.outer(rounded, rounded).sum(), k2, atol=1e-6):
        return [int(t) for t in rounded]
    return [1, 3, 3, 1]  # load_state_dict reports the mismatch with the key's values


def _guess_multiplier(channels: dict[int, int]) -> int:
    """channel_multiplier of the default table if the map matches one, else 2 (the map rules anyway)."""
    from tf_cartoon.arch import default_channels

    for cm in (1, 2, 4):
        table = default_channels(cm)
        if all(table[r] == c for r, c in channels.items()):
            return cm
    return 2
