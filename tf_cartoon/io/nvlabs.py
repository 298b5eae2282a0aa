"""NVlabs StyleGAN2 networks -> the reference's state dicts (rosinality names and layouts).

Two kinds of NVlabs pickle, both read as data by ``io/network_pickle.py`` (nothing they carry runs):

* stylegan2-ada-pytorch network pickles (``network-snapshot-*.pkl``): a dict ``G``, ``D``, ``G_ema``,
  ``augment_pipe``, ... of ``torch_utils.persistence`` objects (``PersistentObject``: class name + the
  module's ``__dict__`` with ``_parameters`` / ``_buffers`` / ``_modules``);
* NVlabs' TensorFlow stylegan2 pickles (``(G, D, Gs)`` of ``dnnlib.tflib.Network`` states: variables by
  name as numpy arrays, sub-networks ``mapping`` / ``synthesis`` as components).

Each network is mapped onto the reference's state-dict keys (``style.1.weight``, ``convs.0.conv.weight``,
``convs.1.conv2.1.weight``, ... in PyTorch layouts), so ``io/reference_keys`` loads it exactly like a
reference ``.pt``; what the reference's architecture lacks travels beside it as config:

  z_dim          the mapping's input width (NVlabs allows z_dim != w_dim)
  conv_clamp     NVlabs clamps activated conv outputs (256 in its configs): kept, see layers.clamp
  latent_avg     ``mapping.w_avg`` / ``dlatent_avg``: the truncation centre NVlabs' code uses
  stddev_group / stddev_features   the minibatch-stddev layer's settings

Why the mappings are exact (facts from NVlabs' ``training/networks.py`` and ``torch_utils/ops``,
``dnnlib/tflib`` and ``training/networks_stylegan2.py``):
* ADA's SynthesisLayer stores its weight without the 1/sqrt(fan_in) gain and demodulates: the output does
  not depend on that scale (up to the 1e-8 inside the rsqrt, ~1e-10 relative); its ToRGB multiplies the
  styles by 1/sqrt(in), which is the reference's weight scale. Up-sampling convs are a stride-2 transposed
  conv (weights as stored) then the [1,3,3,1] blur with pads (1, 1) and gain 4, as the reference's.
* Discriminator blocks compute ``skip(x) * sqrt(.5) + conv1(conv0(x)) * sqrt(.5)`` with conv1's clamp
  scaled by the same sqrt(.5): the reference's ``(conv2(conv1(x)) + skip(x)) / sqrt(2)`` with its clamp
  before the sum. Minibatch-stddev groups are strided in both.
* TensorFlow weights are ``[kh, kw, in, out]`` (dense ``[in, out]``), modulation biases are stored minus
  1, the up-sampling conv's kernel is stored flipped (TF runs it as conv2d_transpose of the flipped kernel),
  and the discriminator flattens NCHW as the reference does.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from tf_cartoon.io.errors import CheckpointFormatError, UnsupportedNetworkError
from tf_cartoon.arch import make_kernel

class Converted(dict):
    """A reference-format checkpoint object (``g_ema`` / ``g`` / ``d`` state dicts, ``args``,
    ``ada_aug_p``, ``latent_avg``) plus ``extras``: {'generator': {...}, 'discriminator': {...}} of the
    architecture settings the reference's state dict cannot express."""

    def __init__(self, *args, extras=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extras = extras or {"generator": {}, "discriminator": {}}


def is_nvlabs(obj: Any) -> bool:
    """Whether an object read from a pickle is an NVlabs network snapshot (ADA dict or TF tuple)."""
    if isinstance(obj, dict):
        return any(_is_persistent(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return any(_is_tf_network(v) for v in obj)
    return _is_persistent(obj) or _is_tf_network(obj)


def to_reference(obj: Any, path: str) -> Converted:
    """Map an NVlabs snapshot (as read by ``network_pickle.load``) onto reference state dicts."""
    if isinstance(obj, (tuple, list)) and any(_is_tf_network(v) for v in obj):
        return _from_tf(obj, path)
    if _is_tf_network(obj):
        return _from_tf((obj,), path)
    if _is_persistent(obj):
        obj = {"G_ema" if obj.class_name == "Generator" else obj.class_name: obj}
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: not an NVlabs network pickle (top level is {type(obj).__name__})")
    return _from_ada(obj, path)


# ---------------------------------------------------------------------------------------------------
# stylegan2-ada-pytorch
# ---------------------------------------------------------------------------------------------------

def _is_persistent(obj) -> bool:
    return hasattr(obj, "class_name") and hasattr(obj, "state") and hasattr(obj, "module_src")


def _is_tf_network(obj) -> bool:
    return hasattr(obj, "variables") and hasattr(obj, "components") and hasattr(obj, "static_kwargs")


_ADA_ROLES = {"G_ema": "g_ema", "G": "g", "D": "d"}


def _from_ada(snapshot: dict, path: str) -> Converted:
    out = Converted()
    nets = {role: snapshot[key] for key, role in _ADA_ROLES.items() if _is_persistent(snapshot.get(key))}
    if not nets:
        raise CheckpointFormatError(f"{path}: NVlabs pickle without G_ema, G or D networks "
                                    f"(top-level keys: {sorted(map(str, snapshot))})")
    for role, net in nets.items():
        tree = _Module(net, role, path)
        if role == "d":
            out[role], out.extras["discriminator"] = _ada_discriminator(tree)
        else:
            sd, extras, w_avg = _ada_generator(tree)
            out[role] = sd
            out.extras["generator"] = extras
            if w_avg is not None and (role == "g_ema" or "latent_avg" not in out):
                out["latent_avg"] = w_avg
    pipe = snapshot.get("augment_pipe")
    if _is_persistent(pipe):
        p = _Module(pipe, "augment_pipe", path).tensors().get("p")
        if p is not None and np.size(p) == 1:
            out["ada_aug_p"] = float(np.asarray(p).reshape(()))
    out["args"] = {"nvlabs_format": "stylegan2-ada-pytorch"}
    return out


class _Module:
    """A PersistentObject seen as a torch module: its class, attributes, tensors and children."""

    def __init__(self, obj, where: str, path: str):
        self.obj, self.where, self.path = obj, where, path
        self.state = obj.state if isinstance(obj.state, dict) else {}

    @property
    def class_name(self) -> str:
        return str(self.obj.class_name)

    def attr(self, name, default=None):
        value = self.state.get(name, default)
        return value.item() if isinstance(value, np.generic) else value

    def child(self, name) -> "_Module | None":
        sub = (self.state.get("_modules") or {}).get(name)
        return _Module(sub, f"{self.where}.{name}", self.path) if _is_persistent(sub) else None

    def need_child(self, name, what: str) -> "_Module":
        sub = self.child(name)
        if sub is None:
            raise UnsupportedNetworkError(f"{self.path}: {self.where} ({self.class_name}) has no '{name}' "
                                          f"({what}): not a StyleGAN2 network of stylegan2-ada-pytorch")
        return sub

    def tensors(self) -> dict:
        found = {}
        for group in ("_parameters", "_buffers"):
            for k, v in (self.state.get(group) or {}).items():
                if v is not None:
                    found[k] = np.asarray(v)
        return found

    def tensor(self, name) -> np.ndarray:
        t = self.tensors().get(name)
        if t is None:
            raise CheckpointFormatError(f"{self.path}: {self.where} has no tensor '{name}'")
        if not np.issubdtype(t.dtype, np.floating):
            raise CheckpointFormatError(f"{self.path}: {self.where}.{name} has dtype {t.dtype}, expected floats")
        return t.astype(np.float32)

    def refuse(self, what: str) -> UnsupportedNetworkError:
        return UnsupportedNetworkError(f"{self.path}: {self.where}: {what}")


def _check_stylegan2(net: _Module, expected: str) -> None:
    if net.class_name != expected:
        raise net.refuse(f"class {net.class_name}, expected {expected}")
    if net.child("synthesis") is not None and net.child("synthesis").child("input") is not None:
        raise net.refuse("StyleGAN3 (synthesis.input) is not supported: only StyleGAN2 networks map onto the "
                         "reference's architecture")
    if int(net.attr("c_dim", 0) or 0) > 0:
        raise net.refuse(f"a conditional network (c_dim={net.attr('c_dim')}) is not supported: the reference's "
                         "architecture has no class labels")
    channels = net.attr("img_channels", 3)
    if channels != 3:
        raise net.refuse(f"img_channels={channels}: only RGB networks are supported")


def _blur_taps(filt: np.ndarray, where: str, path: str) -> list[int]:
    """The 1-D taps of a separable, normalised 2-D FIR filter (NVlabs' setup_filter output)."""
    f = np.asarray(filt, np.float64)
    if f.ndim == 1:
        f = np.outer(f, f) / np.outer(f, f).sum()
    col = f.sum(axis=1)
    if f.ndim != 2 or col.min() <= 0:
        raise UnsupportedNetworkError(f"{path}: {where}: resample filter {f.tolist()} is not a positive FIR")
    taps = np.round(col / col.min()).astype(int)
    if not np.allclose(make_kernel(taps), f, atol=1e-6):
        raise UnsupportedNetworkError(f"{path}: {where}: resample filter {f.tolist()} is not the outer product "
                                      "of integer taps")
    return [int(t) for t in taps]


def _fc_lr_mul(fc: _Module) -> float:
    """A FullyConnectedLayer's learning-rate multiplier (it stores bias_gain = lr_multiplier)."""
    return float(fc.attr("bias_gain", 1.0))


def _ada_mapping(mapping: _Module, sd: dict) -> tuple[float, int]:
    """The mapping's fully connected layers into ``sd`` (``style.<i>.weight`` / ``.bias``); returns their
    learning-rate multiplier (the reference's mapping has one) and the w width."""
    n_mlp = int(mapping.attr("num_layers", 0) or 0)
    if n_mlp < 1:
        raise mapping.refuse(f"num_layers={n_mlp}")
    lr_mul = None
    for i in range(n_mlp):
        fc = mapping.need_child(f"fc{i}", "a mapping layer")
        if fc.attr("activation") != "lrelu":
            raise fc.refuse(f"activation {fc.attr('activation')!r}; the reference's mapping uses lrelu")
        lr = _fc_lr_mul(fc)
        if lr_mul is not None and not math.isclose(lr, lr_mul):
            raise fc.refuse(f"learning-rate multiplier {lr} differs from fc0's {lr_mul}")
        lr_mul = lr
        sd[f"style.{i + 1}.weight"] = fc.tensor("weight")
        sd[f"style.{i + 1}.bias"] = fc.tensor("bias")
    w_dim = int(sd[f"style.{n_mlp}.weight"].shape[0])
    hidden = {int(sd[f"style.{i + 1}.weight"].shape[0]) for i in range(n_mlp - 1)}
    if hidden - {w_dim}:
        raise mapping.refuse(f"hidden layer width {sorted(hidden)} differs from w_dim {w_dim}: the reference's "
                             "mapping keeps one width")
    return lr_mul, w_dim


def _ada_blocks(synthesis: _Module) -> list[_Module]:
    """The synthesis blocks b4 .. b<img_resolution>, each a skip block."""
    size = int(synthesis.attr("img_resolution", 0) or 0)
    if size < 8 or size & (size - 1):
        raise synthesis.refuse(f"img_resolution={size}: expected a power of two >= 8")
    resolutions = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
    blocks = [synthesis.need_child(f"b{r}", f"the {r} px block") for r in resolutions]
    for block in blocks:
        if block.attr("architecture", "skip") != "skip":
            raise block.refuse(f"architecture {block.attr('architecture')!r}: only the skip generator (config-e /"
                               " config-f) maps onto the reference's architecture")
    return blocks


class _AdaSynthesisLayers:
    """Writes NVlabs' SynthesisLayer / ToRGBLayer tensors into ``sd`` under the reference's keys, collecting
    the noise maps in layer order and the one ``conv_clamp`` every layer must share."""

    def __init__(self, sd: dict, taps: list[int]):
        self.sd, self.taps = sd, taps
        self.conv_clamp = None
        self.noise: list[np.ndarray] = []

    def _modulation(self, affine: _Module, key: str) -> None:
        self.sd[f"{key}.conv.modulation.weight"] = affine.tensor("weight")
        self.sd[f"{key}.conv.modulation.bias"] = affine.tensor("bias")

    def styled(self, layer: _Module, key: str, up: int) -> None:
        """A 3x3 modulated conv (``up`` 2: up-sampling) with its noise input and bias."""
        if int(layer.attr("up", 1) or 1) != up or layer.attr("activation", "lrelu") != "lrelu":
            raise layer.refuse(f"up={layer.attr('up')}, activation={layer.attr('activation')!r}: expected "
                               f"up={up}, lrelu")
        weight = layer.tensor("weight")
        if weight.shape[2:] != (3, 3):
            raise layer.refuse(f"kernel {weight.shape[2:]}: expected 3x3")
        self.conv_clamp = _same_clamp(layer, self.conv_clamp)
        affine = layer.need_child("affine", "the style affine layer")
        sd = self.sd
        sd[f"{key}.conv.weight"] = weight[None]
        if up == 2:
            sd[f"{key}.conv.blur.kernel"] = make_kernel(self.taps, gain=4)
        self._modulation(affine, key)
        res = int(layer.attr("resolution"))
        if layer.attr("use_noise", True):
            sd[f"{key}.noise.weight"] = layer.tensor("noise_strength").reshape(1)
            self.noise.append(layer.tensor("noise_const").reshape(1, 1, res, res))
        else:  # no noise input: a zero strength and zero maps compute the same
            sd[f"{key}.noise.weight"] = np.zeros([1], np.float32)
            self.noise.append(np.zeros([1, 1, res, res], np.float32))
        sd[f"{key}.activate.bias"] = layer.tensor("bias")

    def to_rgb(self, layer: _Module, key: str, upsample: bool) -> None:
        """A 1x1 modulated conv to RGB (``upsample``: the skip path's up-sampled image is added)."""
        weight = layer.tensor("weight")
        if weight.shape[:2] != (3, weight.shape[1]) or weight.shape[2:] != (1, 1):
            raise layer.refuse(f"ToRGB weight {weight.shape}: expected [3, C, 1, 1]")
        self.conv_clamp = _same_clamp(layer, self.conv_clamp)
        affine = layer.need_child("affine", "the style affine layer")
        self.sd[f"{key}.bias"] = layer.tensor("bias").reshape(1, 3, 1, 1)
        if upsample:
            self.sd[f"{key}.upsample.kernel"] = make_kernel(self.taps, gain=4)
        self.sd[f"{key}.conv.weight"] = weight[None]
        self._modulation(affine, key)


def _ada_generator(g: _Module):
    _check_stylegan2(g, "Generator")
    mapping, synthesis = g.need_child("mapping", "the mapping network"), g.need_child("synthesis", "synthesis")
    sd: dict[str, np.ndarray] = {}
    lr_mul, w_dim = _ada_mapping(mapping, sd)
    blocks = _ada_blocks(synthesis)
    taps = _blur_taps(blocks[0].tensor("resample_filter"), blocks[0].where, g.path)
    layers = _AdaSynthesisLayers(sd, taps)
    first = blocks[0]
    sd["input.input"] = first.tensor("const")[None]
    layers.styled(first.need_child("conv1", "the first conv"), "conv1", 1)
    layers.to_rgb(first.need_child("torgb", "the first ToRGB"), "to_rgb1", False)
    for b, block in enumerate(blocks[1:]):
        if not np.allclose(block.tensor("resample_filter"), make_kernel(taps), atol=1e-6):
            raise block.refuse("its resample filter differs from the 4x4 block's")
        layers.styled(block.need_child("conv0", "the up-sampling conv"), f"convs.{2 * b}", 2)
        layers.styled(block.need_child("conv1", "the second conv"), f"convs.{2 * b + 1}", 1)
        layers.to_rgb(block.need_child("torgb", "the ToRGB layer"), f"to_rgbs.{b}", True)
    for i, n in enumerate(layers.noise):
        sd[f"noises.noise_{i}"] = n
    w_avg = mapping.tensors().get("w_avg")
    if w_avg is not None:
        w_avg = np.asarray(w_avg, np.float32).reshape(-1)
        if w_avg.shape != (w_dim,):
            raise mapping.refuse(f"w_avg has shape {w_avg.shape}, expected [{w_dim}]")
    extras = {"z_dim": int(sd["style.1.weight"].shape[1]), "conv_clamp": layers.conv_clamp, "lr_mlp": lr_mul,
              "blur_kernel": taps}
    return sd, extras, w_avg


def _same_clamp(layer: _Module, current):
    clamp = layer.attr("conv_clamp")
    clamp = None if clamp is None else float(clamp)
    if current is not None and clamp != current:
        raise layer.refuse(f"conv_clamp {clamp} differs from the other layers' {current}")
    return clamp if current is None else current


def _ada_discriminator(d: _Module):
    if d.class_name != "Discriminator":
        raise d.refuse(f"class {d.class_name}, expected Discriminator")
    if int(d.attr("c_dim", 0) or 0) > 0 or d.child("mapping") is not None:
        raise d.refuse("a conditional discriminator is not supported: the reference's architecture has no class "
                       "labels")
    if d.attr("img_channels", 3) != 3:
        raise d.refuse(f"img_channels={d.attr('img_channels')}: only RGB networks are supported")
    size = int(d.attr("img_resolution", 0) or 0)
    if size < 8 or size & (size - 1):
        raise d.refuse(f"img_resolution={size}: expected a power of two >= 8")
    sd: dict[str, np.ndarray] = {}
    clamp = None
    resolutions = [2 ** i for i in range(int(math.log2(size)), 2, -1)]
    taps = None
    for k, r in enumerate(resolutions, start=1):
        block = d.need_child(f"b{r}", f"the {r} px block")
        if block.attr("architecture", "resnet") != "resnet":
            raise block.refuse(f"architecture {block.attr('architecture')!r}: only the resnet discriminator maps "
                               "onto the reference's architecture")
        block_taps = _blur_taps(block.tensor("resample_filter"), block.where, d.path)
        if taps is not None and block_taps != taps:
            raise block.refuse("its resample filter differs from the first block's")
        taps = block_taps
        if k == 1:
            rgb = block.need_child("fromrgb", "the from-RGB conv")
            clamp = _same_clamp(rgb, clamp)
            sd["convs.0.0.weight"], sd["convs.0.1.bias"] = rgb.tensor("weight"), rgb.tensor("bias")
        conv0, conv1 = block.need_child("conv0", "conv0"), block.need_child("conv1", "conv1")
        skip = block.need_child("skip", "the skip conv")
        for layer in (conv0, conv1):
            clamp = _same_clamp(layer, clamp)
            if layer.attr("activation", "lrelu") != "lrelu":
                raise layer.refuse(f"activation {layer.attr('activation')!r}; the reference uses lrelu")
        sd[f"convs.{k}.conv1.0.weight"], sd[f"convs.{k}.conv1.1.bias"] = conv0.tensor("weight"), conv0.tensor("bias")
        sd[f"convs.{k}.conv2.0.kernel"] = make_kernel(taps)
        sd[f"convs.{k}.conv2.1.weight"], sd[f"convs.{k}.conv2.2.bias"] = conv1.tensor("weight"), conv1.tensor("bias")
        sd[f"convs.{k}.skip.0.kernel"] = make_kernel(taps)
        sd[f"convs.{k}.skip.1.weight"] = skip.tensor("weight")
    head = d.need_child("b4", "the 4x4 epilogue")
    if head.attr("architecture", "resnet") != "resnet" or head.child("fromrgb") is not None:
        raise head.refuse("only the resnet discriminator's epilogue is supported")
    mbstd = head.child("mbstd")
    if mbstd is None:
        raise head.refuse("no minibatch-stddev layer (mbstd_num_channels=0) is not supported")
    conv, fc, out = (head.need_child(n, n) for n in ("conv", "fc", "out"))
    clamp = _same_clamp(conv, clamp)
    sd["final_conv.0.weight"], sd["final_conv.1.bias"] = conv.tensor("weight"), conv.tensor("bias")
    sd["final_linear.0.weight"], sd["final_linear.0.bias"] = fc.tensor("weight"), fc.tensor("bias")
    sd["final_linear.1.weight"], sd["final_linear.1.bias"] = out.tensor("weight"), out.tensor("bias")
    for layer in (fc, out):
        if not math.isclose(_fc_lr_mul(layer), 1.0):
            raise layer.refuse(f"learning-rate multiplier {_fc_lr_mul(layer)}: the reference's head uses 1")
    if sd["final_linear.1.weight"].shape[0] != 1:
        raise out.refuse(f"{sd['final_linear.1.weight'].shape[0]} outputs (a conditional head?); expected 1")
    return sd, _d_extras(mbstd.attr("group_size", 4), mbstd.attr("num_channels", 1), clamp, taps)


# "the whole minibatch" (NVlabs' group_size=None): min(N, this) is N for any batch.
_GROUP_ALL = 2 ** 31 - 1


def _d_extras(group, features, clamp, taps) -> dict:
    """A discriminator's architecture extras from its minibatch-stddev group size and features."""
    return {"stddev_group": _GROUP_ALL if group is None else int(group), "stddev_features": int(features),
            "conv_clamp": clamp, "blur_kernel": taps}


# ---------------------------------------------------------------------------------------------------
# NVlabs' TensorFlow stylegan2 (dnnlib.tflib.Network states)
# ---------------------------------------------------------------------------------------------------

def _from_tf(nets, path: str) -> Converted:
    """(G, D, Gs) as pickled by NVlabs' TF code (or any subset): G -> g, D -> d, Gs -> g_ema."""
    out = Converted()
    gens = [n for n in nets if _is_tf_network(n) and n.components]
    discs = [n for n in nets if _is_tf_network(n) and not n.components]
    if len(nets) == 3 and len(gens) == 2 and len(discs) == 1:
        roles = {"g": nets[0], "d": nets[1], "g_ema": nets[2]}
    else:
        roles = {}
        if gens:
            roles["g_ema"] = gens[-1]
        if len(gens) > 1:
            roles["g"] = gens[0]
        if discs:
            roles["d"] = discs[0]
    if not roles:
        raise CheckpointFormatError(f"{path}: no TensorFlow StyleGAN2 network in this pickle")
    for role, net in roles.items():
        if role == "d":
            out["d"], out.extras["discriminator"] = _tf_discriminator(net, path)
        else:
            sd, extras, avg = _tf_generator(net, path)
            out[role], out.extras["generator"] = sd, extras
            if avg is not None and (role == "g_ema" or "latent_avg" not in out):
                out["latent_avg"] = avg
    out["args"] = {"nvlabs_format": "stylegan2-tensorflow"}
    return out


def _tf_kwargs(net) -> dict:
    kw = net.static_kwargs if isinstance(net.static_kwargs, dict) else {}
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in kw.items()}


def _tf_func(net) -> str:
    return str(getattr(net, "build_func_name", "") or "")


def _tf_vars(net, path: str, prefix: str = "") -> dict[str, np.ndarray]:
    """Every variable of a network and its components, named '<component>/<var>' like NVlabs' tflib."""
    found = {}
    for name, value in dict(net.variables).items():
        found[prefix + str(name)] = value
    for cname, comp in dict(net.components).items():
        if not _is_tf_network(comp):
            raise CheckpointFormatError(f"{path}: component {cname!r} of {net.name!r} is not a network")
        found.update(_tf_vars(comp, path, f"{prefix}{cname}/"))
    return found


class _TFNet:
    """A dnnlib network being mapped: its static kwargs, its variables (components included) and a
    ``need(name)`` that returns one as float32 or raises naming the file and the network."""

    def __init__(self, net, path: str, default_name: str, build_func: str, what: str):
        self.kw = _tf_kwargs(net)
        self.where = f"{path}: TensorFlow network {getattr(net, 'name', default_name)!r}"
        func = _tf_func(net)
        if func and func.split(".")[-1] != build_func:  # e.g. training.networks_stylegan2.G_main
            raise UnsupportedNetworkError(f"{self.where} is built by {func!r}: only StyleGAN2's {build_func} "
                                          f"({what}) maps onto the reference's architecture")
        if int(self.kw.get("label_size", 0) or 0) > 0:
            raise UnsupportedNetworkError(f"{self.where}: a conditional network (label_size="
                                          f"{self.kw['label_size']}) is not supported: the reference's "
                                          "architecture has no class labels")
        self.variables = _tf_vars(net, path)

    def need(self, key) -> np.ndarray:
        if key not in self.variables:
            raise CheckpointFormatError(f"{self.where} has no variable '{key}'")
        a = np.asarray(self.variables[key])
        if not np.issubdtype(a.dtype, np.floating):
            raise CheckpointFormatError(f"{self.where}: '{key}' has dtype {a.dtype}, expected floats")
        return a.astype(np.float32)


def _tf_generator(net, path: str):
    tfn = _TFNet(net, path, "G", "G_main", "config-e / config-f")
    kw, where, need = tfn.kw, tfn.where, tfn.need
    synth_func = str(kw.get("synthesis_func", "G_synthesis_stylegan2"))
    arch = kw.get("architecture", "skip")
    if synth_func.split(".")[-1] != "G_synthesis_stylegan2" or arch != "skip":
        raise UnsupportedNetworkError(f"{where}: synthesis {synth_func!r} with architecture {arch!r} (StyleGAN2 "
                                      "config-a..d or StyleGAN): only config-e / config-f (skip generator) map "
                                      "onto the reference's architecture")
    if int(kw.get("num_channels", 3)) != 3:
        raise UnsupportedNetworkError(f"{where}: num_channels={kw['num_channels']}: only RGB networks are "
                                      "supported")
    v = tfn.variables
    if "synthesis/4x4/Const/const" not in v:
        raise UnsupportedNetworkError(f"{where} has no synthesis/4x4/Const/const: not a StyleGAN2 config-e / "
                                      "config-f generator")

    sd: dict[str, np.ndarray] = {}
    n_mlp = len([k for k in v if re.fullmatch(r"mapping/Dense\d+/weight", k)])
    if n_mlp < 1:
        raise UnsupportedNetworkError(f"{where} has no mapping/Dense*/weight variables")
    for i in range(n_mlp):
        sd[f"style.{i + 1}.weight"] = need(f"mapping/Dense{i}/weight").T
        sd[f"style.{i + 1}.bias"] = need(f"mapping/Dense{i}/bias")
    taps = [int(t) for t in kw.get("resample_kernel", [1, 3, 3, 1])]
    blocks = sorted({int(m.group(1)) for k in v if (m := re.fullmatch(r"synthesis/(\d+)x\1/Conv1/weight", k))})
    size = max(blocks) if blocks else 4
    if size < 8 or blocks != [2 ** i for i in range(3, int(math.log2(size)) + 1)]:
        raise UnsupportedNetworkError(f"{where}: synthesis blocks {blocks} are not 8..size in powers of two")

    def modconv(src: str, key: str, flip: bool = False):
        w = need(f"synthesis/{src}/weight")  # [kh, kw, in, out]
        if flip:
            w = w[::-1, ::-1]
        sd[f"{key}.conv.weight"] = np.ascontiguousarray(w.transpose(3, 2, 0, 1))[None]
        if flip:
            sd[f"{key}.conv.blur.kernel"] = make_kernel(taps, gain=4)
        sd[f"{key}.conv.modulation.weight"] = need(f"synthesis/{src}/mod_weight").T
        sd[f"{key}.conv.modulation.bias"] = need(f"synthesis/{src}/mod_bias") + 1
        sd[f"{key}.noise.weight"] = need(f"synthesis/{src}/noise_strength").reshape(1)
        sd[f"{key}.activate.bias"] = need(f"synthesis/{src}/bias")

    def torgb(src: str, key: str, upsample: bool):
        sd[f"{key}.bias"] = need(f"synthesis/{src}/bias").reshape(1, 3, 1, 1)
        if upsample:
            sd[f"{key}.upsample.kernel"] = make_kernel(taps, gain=4)
        sd[f"{key}.conv.weight"] = np.ascontiguousarray(need(f"synthesis/{src}/weight").transpose(3, 2, 0, 1))[None]
        sd[f"{key}.conv.modulation.weight"] = need(f"synthesis/{src}/mod_weight").T
        sd[f"{key}.conv.modulation.bias"] = need(f"synthesis/{src}/mod_bias") + 1

    sd["input.input"] = need("synthesis/4x4/Const/const")
    modconv("4x4/Conv", "conv1")
    torgb("4x4/ToRGB", "to_rgb1", False)
    for b, r in enumerate(blocks):
        modconv(f"{r}x{r}/Conv0_up", f"convs.{2 * b}", flip=True)
        modconv(f"{r}x{r}/Conv1", f"convs.{2 * b + 1}")
        torgb(f"{r}x{r}/ToRGB", f"to_rgbs.{b}", True)
    for i in range(2 * len(blocks) + 1):
        sd[f"noises.noise_{i}"] = need(f"synthesis/noise{i}")
    avg = np.asarray(v["dlatent_avg"], np.float32).reshape(-1) if "dlatent_avg" in v else None
    extras = {"z_dim": int(sd["style.1.weight"].shape[1]), "conv_clamp": None,
              "lr_mlp": float(kw.get("mapping_lrmul", 0.01)), "blur_kernel": taps}
    return sd, extras, avg


def _tf_discriminator(net, path: str):
    tfn = _TFNet(net, path, "D", "D_stylegan2", "resnet, config-e / config-f")
    kw, where, need, v = tfn.kw, tfn.where, tfn.need, tfn.variables
    if kw.get("architecture", "resnet") != "resnet":
        raise UnsupportedNetworkError(f"{where}: architecture {kw['architecture']!r}: only the resnet "
                                      "discriminator maps onto the reference's architecture")

    def conv_weight(key):
        return np.ascontiguousarray(need(key).transpose(3, 2, 0, 1))  # [kh, kw, in, out] -> [out, in, kh, kw]

    blocks = sorted({int(m.group(1)) for k in v if (m := re.fullmatch(r"(\d+)x\1/Conv1_down/weight", k))},
                    reverse=True)
    if not blocks:
        raise UnsupportedNetworkError(f"{where} has no '<res>x<res>/Conv1_down' blocks: not a StyleGAN2 resnet "
                                      "discriminator")
    size = blocks[0]
    taps = [int(t) for t in kw.get("resample_kernel", [1, 3, 3, 1])]
    sd = {"convs.0.0.weight": conv_weight(f"{size}x{size}/FromRGB/weight"),
          "convs.0.1.bias": need(f"{size}x{size}/FromRGB/bias")}
    for k, r in enumerate(blocks, start=1):
        sd[f"convs.{k}.conv1.0.weight"] = conv_weight(f"{r}x{r}/Conv0/weight")
        sd[f"convs.{k}.conv1.1.bias"] = need(f"{r}x{r}/Conv0/bias")
        sd[f"convs.{k}.conv2.0.kernel"] = make_kernel(taps)
        sd[f"convs.{k}.conv2.1.weight"] = conv_weight(f"{r}x{r}/Conv1_down/weight")
        sd[f"convs.{k}.conv2.2.bias"] = need(f"{r}x{r}/Conv1_down/bias")
        sd[f"convs.{k}.skip.0.kernel"] = make_kernel(taps)
        sd[f"convs.{k}.skip.1.weight"] = conv_weight(f"{r}x{r}/Skip/weight")
    sd["final_conv.0.weight"] = conv_weight("4x4/Conv/weight")
    sd["final_conv.1.bias"] = need("4x4/Conv/bias")
    sd["final_linear.0.weight"] = np.ascontiguousarray(need("4x4/Dense0/weight").T)
    sd["final_linear.0.bias"] = need("4x4/Dense0/bias")
    sd["final_linear.1.weight"] = np.ascontiguousarray(need("Output/weight").T)
    sd["final_linear.1.bias"] = need("Output/bias")
    return sd, _d_extras(kw.get("mbstd_group_size", 4), kw.get("mbstd_num_features", 1), None, taps)

