"""NVlabs StyleGAN2 (stylegan2-ada-pytorch) networks for the tests: random parameter trees in NVlabs' own
module layout, and an independent numpy forward over those trees.

The forward follows NVlabs' definitions (training/networks.py, torch_utils/ops) step by step, in NCHW and
float64, from NVlabs' parameter names: it shares nothing with tf_cartoon's networks or with the mapping of
io/nvlabs.py onto the reference's names, so a test comparing the two checks that mapping.

Trees are dicts ``{"class_name", "attrs", "params", "buffers", "children"}`` (see ``module``);
``to_persistent`` turns one into the PersistentObject stand-ins that io/network_pickle reads and the test
writer writes.
"""

from __future__ import annotations

import math

import numpy as np

SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------ trees

def module(class_name, attrs=None, params=None, buffers=None, children=None) -> dict:
    return {"class_name": class_name, "attrs": dict(attrs or {}), "params": dict(params or {}),
            "buffers": dict(buffers or {}), "children": dict(children or {})}


def setup_filter(taps=(1, 3, 3, 1)) -> np.ndarray:
    f = np.outer(taps, taps).astype(np.float32)
    return f / f.sum()


def _fc(rng, cin, cout, activation="linear", lr=1.0, bias_init=0.0):
    return module("FullyConnectedLayer",
                  {"activation": activation, "weight_gain": np.float64(lr / math.sqrt(cin)), "bias_gain": lr},
                  {"weight": (rng.standard_normal([cout, cin]) / lr).astype(np.float32),
                   "bias": (bias_init + 0.1 * rng.standard_normal([cout]) / lr).astype(np.float32)})


def _layer(rng, cin, cout, w_dim, res, up, clamp):
    return module("SynthesisLayer",
                  {"resolution": res, "up": up, "use_noise": True, "activation": "lrelu", "conv_clamp": clamp,
                   "padding": 1, "act_gain": np.float64(SQRT2)},
                  {"weight": rng.standard_normal([cout, cin, 3, 3]).astype(np.float32),
                   "noise_strength": np.float32(rng.standard_normal()).reshape(()),
                   "bias": (0.2 * rng.standard_normal([cout])).astype(np.float32)},
                  {"resample_filter": setup_filter(),
                   "noise_const": rng.standard_normal([res, res]).astype(np.float32)},
                  {"affine": _fc(rng, w_dim, cin, bias_init=1.0)})


def _make_torgb(rng, cin, w_dim, clamp):
    return module("ToRGBLayer", {"conv_clamp": clamp, "weight_gain": np.float64(1 / math.sqrt(cin))},
                  {"weight": rng.standard_normal([3, cin, 1, 1]).astype(np.float32),
                   "bias": (0.2 * rng.standard_normal([3])).astype(np.float32)},
                  children={"affine": _fc(rng, w_dim, cin, bias_init=1.0)})


def _conv(rng, cin, cout, k, activation="lrelu", down=1, bias=True, clamp=None):
    return module("Conv2dLayer", {"activation": activation, "up": 1, "down": down, "conv_clamp": clamp,
                                  "padding": k // 2, "weight_gain": np.float64(1 / math.sqrt(cin * k * k)),
                                  "act_gain": np.float64(SQRT2 if activation == "lrelu" else 1.0)},
                  {"weight": rng.standard_normal([cout, cin, k, k]).astype(np.float32),
                   **({"bias": (0.2 * rng.standard_normal([cout])).astype(np.float32)} if bias else {})},
                  {"resample_filter": setup_filter()})


def channels_dict(size, channel_base, channel_max):
    return {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(2, int(math.log2(size)) + 1)}


def make_generator(rng, size=16, z_dim=12, w_dim=10, n_mapping=3, channel_base=128, channel_max=8,
                   conv_clamp=None, lr_mul=0.01) -> dict:
    """A random stylegan2-ada-pytorch Generator (skip architecture, c_dim 0) as a tree."""
    ch = channels_dict(size, channel_base, channel_max)
    res = sorted(ch)
    fcs = {f"fc{i}": _fc(rng, z_dim if i == 0 else w_dim, w_dim, "lrelu", lr_mul) for i in range(n_mapping)}
    num_ws = 2 * len(res)
    mapping = module("MappingNetwork", {"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "num_ws": num_ws,
                                        "num_layers": n_mapping, "w_avg_beta": 0.995},
                     buffers={"w_avg": (0.3 * rng.standard_normal([w_dim])).astype(np.float32)}, children=fcs)
    blocks = {}
    for r in res:
        kids = {}
        params = {}
        if r == 4:
            params["const"] = rng.standard_normal([ch[4], 4, 4]).astype(np.float32)
        else:
            kids["conv0"] = _layer(rng, ch[r // 2], ch[r], w_dim, r, 2, conv_clamp)
        kids["conv1"] = _layer(rng, ch[r], ch[r], w_dim, r, 1, conv_clamp)
        kids["torgb"] = _make_torgb(rng, ch[r], w_dim, conv_clamp)
        blocks[f"b{r}"] = module("SynthesisBlock",
                                 {"in_channels": 0 if r == 4 else ch[r // 2], "w_dim": w_dim, "resolution": r,
                                  "img_channels": 3, "is_last": r == size, "architecture": "skip",
                                  "use_fp16": False, "num_conv": 1 if r == 4 else 2, "num_torgb": 1},
                                 params, {"resample_filter": setup_filter()}, kids)
    synthesis = module("SynthesisNetwork", {"w_dim": w_dim, "img_resolution": size, "img_channels": 3,
                                            "num_ws": num_ws, "block_resolutions": res}, children=blocks)
    return module("Generator", {"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "img_resolution": size,
                                "img_channels": 3, "num_ws": num_ws},
                  children={"synthesis": synthesis, "mapping": mapping})


def make_discriminator(rng, size=16, channel_base=128, channel_max=8, conv_clamp=None, mbstd_group=4) -> dict:
    """A random stylegan2-ada-pytorch Discriminator (resnet architecture, c_dim 0) as a tree."""
    ch = channels_dict(size, channel_base, channel_max)
    kids = {}
    for r in [2 ** i for i in range(int(math.log2(size)), 2, -1)]:
        sub = {}
        if r == size:
            sub["fromrgb"] = _conv(rng, 3, ch[r], 1, clamp=conv_clamp)
        sub["conv0"] = _conv(rng, ch[r], ch[r], 3, clamp=conv_clamp)
        sub["conv1"] = _conv(rng, ch[r], ch[r // 2], 3, down=2, clamp=conv_clamp)
        sub["skip"] = _conv(rng, ch[r], ch[r // 2], 1, activation="linear", down=2, bias=False)
        kids[f"b{r}"] = module("DiscriminatorBlock", {"in_channels": 0 if r == size else ch[r], "resolution": r,
                                                      "img_channels": 3, "architecture": "resnet"},
                               buffers={"resample_filter": setup_filter()}, children=sub)
    c4 = ch[4]
    kids["b4"] = module("DiscriminatorEpilogue", {"in_channels": c4, "cmap_dim": 0, "resolution": 4,
                                                  "img_channels": 3, "architecture": "resnet"},
                        children={"mbstd": module("MinibatchStdLayer", {"group_size": mbstd_group, "num_channels": 1}),
                                  "conv": _conv(rng, c4 + 1, c4, 3, clamp=conv_clamp),
                                  "fc": _fc(rng, c4 * 16, c4, "lrelu"),
                                  "out": _fc(rng, c4, 1)})
    return module("Discriminator", {"c_dim": 0, "img_resolution": size, "img_channels": 3}, children=kids)


def find(tree, dotted: str) -> dict:
    for part in dotted.split("."):
        tree = tree["children"][part]
    return tree


# ------------------------------------------------------------------------------------------ numpy ops

def upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """NVlabs' upfirdn2d on NCHW: zero-insert ``up``, pad (x0, x1, y0, y1; negative crops), convolve with the
    filter (true convolution: flipped), keep every ``down``-th sample."""
    n, c, h, w = x.shape
    if up > 1:
        z = np.zeros([n, c, h * up, w * up], x.dtype)
        z[:, :, ::up, ::up] = x
        x = z
    px0, px1, py0, py1 = pad
    x = np.pad(x, [(0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    k = np.asarray(f, np.float64)[::-1, ::-1] * gain
    kh, kw = k.shape
    out = np.zeros([n, c, x.shape[2] - kh + 1, x.shape[3] - kw + 1])
    for i in range(kh):
        for j in range(kw):
            out += k[i, j] * x[:, :, i:i + out.shape[2], j:j + out.shape[3]]
    return out[:, :, ::down, ::down]


def conv2d(x, w, stride=1, padding=0):
    """Cross-correlation, x [N, I, H, W], w [N or 1, O, I, k, k] (per-sample weights)."""
    x = np.pad(x, [(0, 0), (0, 0), (padding, padding), (padding, padding)])
    k = w.shape[-1]
    oh, ow = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
    out = np.zeros([x.shape[0], w.shape[1], oh, ow])
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nihw,noi->nohw", patch, np.broadcast_to(w[:, :, :, i, j],
                                                                      (x.shape[0],) + w.shape[1:3]))
    return out


def conv_transpose2d_stride2(x, w):
    """PyTorch conv_transpose2d(stride=2, padding=0) per sample: out[o, 2i+ky, 2j+kx] += x[c, i, j] w[o, c, ky, kx]
    (w [N, O, I, k, k]); output 2H + k - 2."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    out = np.zeros([n, w.shape[1], 2 * (h - 1) + k, 2 * (wd - 1) + k])
    for ky in range(k):
        for kx in range(k):
            out[:, :, ky:ky + 2 * h:2, kx:kx + 2 * wd:2] += np.einsum("nchw,noc->nohw", x, w[:, :, :, ky, kx])
    return out


def lrelu(x, gain=SQRT2, clamp=None):
    y = np.where(x >= 0, x, 0.2 * x) * gain
    return np.clip(y, -clamp, clamp) if clamp is not None else y


def fc(t, x, activation=None):
    p, a = t["params"], t["attrs"]
    y = x @ (p["weight"].astype(np.float64) * a["weight_gain"]).T + p["bias"] * a["bias_gain"]
    return lrelu(y) if (activation or a.get("activation")) == "lrelu" else y


# ------------------------------------------------------------------------------------------ forward passes

def mapping(g, z, psi=1.0):
    """ws [N, num_ws, w_dim] for z (NVlabs MappingNetwork: normalise, fc layers, broadcast, truncate)."""
    m = g["children"]["mapping"]
    x = z.astype(np.float64)
    x = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-8)
    for i in range(m["attrs"]["num_layers"]):
        x = fc(m["children"][f"fc{i}"], x)
    ws = np.repeat(x[:, None], g["attrs"]["num_ws"], axis=1)
    if psi != 1:
        avg = m["buffers"]["w_avg"].astype(np.float64)
        ws = avg + psi * (ws - avg)
    return ws


def _synthesis_layer(t, x, w):
    p, a = t["params"], t["attrs"]
    styles = fc(t["children"]["affine"], w)  # [N, I]
    weight = p["weight"].astype(np.float64)[None] * styles[:, None, :, None, None]
    weight = weight / np.sqrt(np.sum(weight ** 2, axis=(2, 3, 4), keepdims=True) + 1e-8)
    if a["up"] == 2:
        x = conv_transpose2d_stride2(x, weight)
        x = upfirdn2d(x, t["buffers"]["resample_filter"], pad=(1, 1, 1, 1), gain=4)
    else:
        x = conv2d(x, weight, padding=1)
    x = x + t["buffers"]["noise_const"] * float(p["noise_strength"])
    return lrelu(x + p["bias"][None, :, None, None], clamp=a["conv_clamp"])


def _torgb_forward(t, x, w):
    p, a = t["params"], t["attrs"]
    styles = fc(t["children"]["affine"], w) * a["weight_gain"]
    y = conv2d(x, p["weight"].astype(np.float64)[None] * styles[:, None, :, None, None])
    y = y + p["bias"][None, :, None, None]
    return np.clip(y, -a["conv_clamp"], a["conv_clamp"]) if a["conv_clamp"] is not None else y


def synthesis(g, ws):
    """NCHW image [N, 3, size, size] from ws (noise_mode='const')."""
    s = g["children"]["synthesis"]
    x = img = None
    idx = 0
    for r in s["attrs"]["block_resolutions"]:
        b = s["children"][f"b{r}"]
        if r == 4:
            x = np.repeat(b["params"]["const"][None].astype(np.float64), ws.shape[0], axis=0)
            x = _synthesis_layer(b["children"]["conv1"], x, ws[:, idx])
            idx += 1
        else:
            x = _synthesis_layer(b["children"]["conv0"], x, ws[:, idx])
            x = _synthesis_layer(b["children"]["conv1"], x, ws[:, idx + 1])
            idx += 2
            img = upfirdn2d(img, b["buffers"]["resample_filter"], up=2, pad=(2, 1, 2, 1), gain=4)
        y = _torgb_forward(b["children"]["torgb"], x, ws[:, idx])
        img = y if img is None else img + y
    return img


def generate(g, z, psi=1.0):
    return synthesis(g, mapping(g, z, psi))


def _conv_layer(t, x, gain=1.0):
    p, a = t["params"], t["attrs"]
    w = p["weight"].astype(np.float64)[None] * a["weight_gain"]
    f = t["buffers"]["resample_filter"]
    if a["down"] == 2 and w.shape[-1] == 1:
        x = conv2d(upfirdn2d(x, f, down=2, pad=(1, 1, 1, 1)), w)
    elif a["down"] == 2:
        x = conv2d(upfirdn2d(x, f, pad=(2, 2, 2, 2)), w, stride=2)
    else:
        x = conv2d(x, w, padding=w.shape[-1] // 2)
    if "bias" in p:
        x = x + p["bias"][None, :, None, None]
    clamp = a["conv_clamp"] * gain if a["conv_clamp"] is not None else None
    if a["activation"] == "lrelu":
        return lrelu(x, SQRT2 * gain, clamp)
    x = x * gain
    return np.clip(x, -clamp, clamp) if clamp is not None else x


def discriminate(d, img):
    """Logits [N, 1] of NCHW images (NVlabs Discriminator, resnet, no labels)."""
    x = None
    size = d["attrs"]["img_resolution"]
    for r in [2 ** i for i in range(int(math.log2(size)), 2, -1)]:
        b = d["children"][f"b{r}"]["children"]
        if x is None:
            x = _conv_layer(b["fromrgb"], img.astype(np.float64))
        y = _conv_layer(b["skip"], x, gain=math.sqrt(0.5))
        x = _conv_layer(b["conv0"], x)
        x = _conv_layer(b["conv1"], x, gain=math.sqrt(0.5))
        x = y + x
    e = d["children"]["b4"]["children"]
    n, c, h, w = x.shape
    g = min(e["mbstd"]["attrs"]["group_size"], n)
    y = x.reshape(g, -1, 1, c, h, w)
    y = np.sqrt(np.mean((y - y.mean(axis=0)) ** 2, axis=0) + 1e-8).mean(axis=(2, 3, 4)).reshape(-1, 1, 1, 1)
    x = np.concatenate([x, np.tile(y, (g, 1, h, w))], axis=1)
    x = _conv_layer(e["conv"], x)
    x = fc(e["fc"], x.reshape(n, -1))
    return fc(e["out"], x)


# ------------------------------------------------------------------------------------------ TensorFlow layout

def tf_variables(g=None, d=None) -> dict:
    """The same networks in NVlabs' TensorFlow stylegan2 layout (an independent inverse of what
    io/nvlabs.py reads): {'mapping': {...}, 'synthesis': {...}, 'G': {'dlatent_avg'}, 'D': {...}}, each a dict
    of TF variable names -> arrays ([kh, kw, in, out] convs, [in, out] dense, modulation biases minus 1, the
    up-sampling conv's kernel flipped, noise maps [1, 1, R, R])."""
    out = {}
    if g is not None:
        m = g["children"]["mapping"]
        out["mapping"] = {}
        for i in range(m["attrs"]["num_layers"]):
            p = m["children"][f"fc{i}"]["params"]
            out["mapping"][f"Dense{i}/weight"] = p["weight"].T.copy()
            out["mapping"][f"Dense{i}/bias"] = p["bias"].copy()
        syn = {}
        s = g["children"]["synthesis"]
        noise_index = 0

        def layer(t, name, flip=False):
            nonlocal noise_index
            p = t["params"]
            w = p["weight"].transpose(2, 3, 1, 0)
            syn[f"{name}/weight"] = np.ascontiguousarray(w[::-1, ::-1] if flip else w)
            syn[f"{name}/mod_weight"] = t["children"]["affine"]["params"]["weight"].T.copy()
            syn[f"{name}/mod_bias"] = t["children"]["affine"]["params"]["bias"] - 1
            syn[f"{name}/noise_strength"] = np.asarray(p["noise_strength"], np.float32).reshape(())
            syn[f"{name}/bias"] = p["bias"].copy()
            syn[f"noise{noise_index}"] = t["buffers"]["noise_const"][None, None].copy()
            noise_index += 1

        def torgb(t, name):
            syn[f"{name}/weight"] = np.ascontiguousarray(t["params"]["weight"].transpose(2, 3, 1, 0))
            syn[f"{name}/mod_weight"] = t["children"]["affine"]["params"]["weight"].T.copy()
            syn[f"{name}/mod_bias"] = t["children"]["affine"]["params"]["bias"] - 1
            syn[f"{name}/bias"] = t["params"]["bias"].copy()

        for r in s["attrs"]["block_resolutions"]:
            b = s["children"][f"b{r}"]["children"]
            if r == 4:
                syn["4x4/Const/const"] = s["children"]["b4"]["params"]["const"][None].copy()
                layer(b["conv1"], "4x4/Conv")
            else:
                layer(b["conv0"], f"{r}x{r}/Conv0_up", flip=True)
                layer(b["conv1"], f"{r}x{r}/Conv1")
            torgb(b["torgb"], f"{r}x{r}/ToRGB")
        out["synthesis"] = syn
        out["G"] = {"dlatent_avg": m["buffers"]["w_avg"].copy()}
    if d is not None:
        dv = {}
        size = d["attrs"]["img_resolution"]

        def conv(t, name):
            dv[f"{name}/weight"] = np.ascontiguousarray(t["params"]["weight"].transpose(2, 3, 1, 0))
            if "bias" in t["params"]:
                dv[f"{name}/bias"] = t["params"]["bias"].copy()

        for r in [2 ** i for i in range(int(math.log2(size)), 2, -1)]:
            b = d["children"][f"b{r}"]["children"]
            if r == size:
                conv(b["fromrgb"], f"{r}x{r}/FromRGB")
            conv(b["conv0"], f"{r}x{r}/Conv0")
            conv(b["conv1"], f"{r}x{r}/Conv1_down")
            conv(b["skip"], f"{r}x{r}/Skip")
        e = d["children"]["b4"]["children"]
        conv(e["conv"], "4x4/Conv")
        dv["4x4/Dense0/weight"] = e["fc"]["params"]["weight"].T.copy()
        dv["4x4/Dense0/bias"] = e["fc"]["params"]["bias"].copy()
        dv["Output/weight"] = e["out"]["params"]["weight"].T.copy()
        dv["Output/bias"] = e["out"]["params"]["bias"].copy()
        out["D"] = dv
    return out
