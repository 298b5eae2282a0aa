"""Tiny random CLIP checkpoints, BPE files and an independent numpy CLIP forward for the tests.

The numpy forward follows the CLIP paper / Hugging Face ``CLIPModel`` maths directly on a Hugging
Face-layout state dict (linear weights [out, in], patch conv OIHW), sharing no code with
tf_cartoon.clip, so a weight that lands in the wrong variable or layout changes its result.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np

from tf_cartoon import clip
from tf_cartoon.io import safetensors

# Merges of the tiny BPE file, in rank order ("a b" joins a and b; "</w>" ends a word).
TINY_MERGES = ["h i</w>", "s m", "sm i", "l e</w>"]
TINY = dict(image=32, patch=8, width=32, layers=1, mlp=64, context=16, proj=16, heads=2)


def write_bpe_gz(path, merges=TINY_MERGES) -> str:
    """A file in the format of OpenAI's bpe_simple_vocab_16e6.txt.gz: its header line (which, split on the
    space, looks like a merge itself), one merge per line, a final newline."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(merges) + "\n")
    return str(path)


def tiny_hf_state(seed=0, merges=TINY_MERGES, image=32, patch=8, width=32, layers=1, mlp=64, context=16,
                  proj=16) -> dict:
    """A random Hugging Face-layout CLIPModel state dict (float32), vision and text of the same width."""
    rng = np.random.RandomState(seed)
    vocab = 512 + len(merges) + 2
    sd = {}

    def lin(key, n_out, n_in, scale=None):
        sd[key + ".weight"] = (rng.randn(n_out, n_in) * (scale or n_in ** -0.5)).astype(np.float32)
        sd[key + ".bias"] = (rng.randn(n_out) * 0.1).astype(np.float32)

    def ln(key, n):
        sd[key + ".weight"] = (1 + 0.2 * rng.randn(n)).astype(np.float32)
        sd[key + ".bias"] = (0.1 * rng.randn(n)).astype(np.float32)

    def blocks(prefix):
        for i in range(layers):
            p = f"{prefix}.encoder.layers.{i}"
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                lin(f"{p}.self_attn.{name}", width, width)
            ln(p + ".layer_norm1", width)
            ln(p + ".layer_norm2", width)
            lin(p + ".mlp.fc1", mlp, width)
            lin(p + ".mlp.fc2", width, mlp)

    n_patches = (image // patch) ** 2
    sd["vision_model.embeddings.class_embedding"] = rng.randn(width).astype(np.float32)
    sd["vision_model.embeddings.patch_embedding.weight"] = (rng.randn(width, 3, patch, patch) /
                                                            (patch * np.sqrt(3))).astype(np.float32)
    sd["vision_model.embeddings.position_embedding.weight"] = (0.5 * rng.randn(n_patches + 1, width)).astype(
        np.float32)
    sd["vision_model.embeddings.position_ids"] = np.arange(n_patches + 1, dtype=np.int64)[None]
    ln("vision_model.pre_layrnorm", width)
    blocks("vision_model")
    ln("vision_model.post_layernorm", width)
    sd["text_model.embeddings.token_embedding.weight"] = rng.randn(vocab, width).astype(np.float32)
    sd["text_model.embeddings.position_embedding.weight"] = (0.5 * rng.randn(context, width)).astype(np.float32)
    blocks("text_model")
    ln("text_model.final_layer_norm", width)
    sd["visual_projection.weight"] = (rng.randn(proj, width) * width ** -0.5).astype(np.float32)
    sd["text_projection.weight"] = (rng.randn(proj, width) * width ** -0.5).astype(np.float32)
    sd["logit_scale"] = np.array(2.6592, np.float32)
    return sd


def hf_config(heads=TINY["heads"]) -> dict:
    return {"model_type": "clip", "vision_config": {"num_attention_heads": heads, "hidden_act": "quick_gelu"},
            "text_config": {"num_attention_heads": heads, "hidden_act": "quick_gelu"}}


def write_hf_folder(folder, sd, heads=TINY["heads"], merges=TINY_MERGES, weights="model.safetensors") -> str:
    """A Hugging Face-style CLIP folder: weights, config.json, vocab.json, merges.txt."""
    from tf_cartoon.io import torch_pickle

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, weights)
    if weights.endswith(".safetensors"):
        safetensors.save(sd, path)
    else:
        torch_pickle.save(dict(sd), path)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config(heads), f)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(clip.vocab_from_merges(merges), f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder)


# ---------------------------------------------------------------------------
# Independent numpy forward (float64)
# ---------------------------------------------------------------------------

def _ln(x, sd, key, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[key + ".weight"] + sd[key + ".bias"]


def _linear(x, sd, key):
    return x @ sd[key + ".weight"].T.astype(np.float64) + sd[key + ".bias"]


def _block(x, sd, p, heads, causal):
    n, t, d = x.shape
    hd = d // heads
    h = _ln(x, sd, p + ".layer_norm1")
    q, k, v = (_linear(h, sd, f"{p}.self_attn.{s}_proj").reshape(n, t, heads, hd) for s in "qkv")
    scores = np.einsum("nihd,njhd->nhij", q, k) / np.sqrt(hd)
    if causal:
        scores = np.where(np.tril(np.ones([t, t], bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    att = scores / scores.sum(-1, keepdims=True)
    out = np.einsum("nhij,njhd->nihd", att, v).reshape(n, t, d)
    x = x + _linear(out, sd, p + ".self_attn.out_proj")
    h = _linear(_ln(x, sd, p + ".layer_norm2"), sd, p + ".mlp.fc1")
    h = h / (1 + np.exp(-1.702 * h))  # QuickGELU
    return x + _linear(h, sd, p + ".mlp.fc2")


def _n_layers(sd, prefix):
    return len({k.split(".")[3] for k in sd if k.startswith(prefix + ".encoder.layers.")})


def np_image_features(sd, images, heads=TINY["heads"]) -> np.ndarray:
    """CLIP image features of NHWC images (projected, not normalised)."""
    x = np.asarray(images, np.float64)
    w = sd["vision_model.embeddings.patch_embedding.weight"].astype(np.float64)  # [D, 3, P, P]
    d, _, p, _ = w.shape
    n, s = x.shape[0], x.shape[1]
    g = s // p
    patches = x.reshape(n, g, p, g, p, 3)  # n, gy, py, gx, px, c
    emb = np.einsum("nyaxbc,dcab->nyxd", patches, w).reshape(n, g * g, d)
    cls = np.broadcast_to(sd["vision_model.embeddings.class_embedding"], (n, 1, d))
    h = np.concatenate([cls, emb], axis=1) + sd["vision_model.embeddings.position_embedding.weight"]
    h = _ln(h, sd, "vision_model.pre_layrnorm")
    for i in range(_n_layers(sd, "vision_model")):
        h = _block(h, sd, f"vision_model.encoder.layers.{i}", heads, causal=False)
    pooled = _ln(h[:, 0], sd, "vision_model.post_layernorm")
    return pooled @ sd["visual_projection.weight"].T


def np_text_features(sd, ids, heads=TINY["heads"]) -> np.ndarray:
    """CLIP text features of token ids [N, T] (read at the largest id, the end token)."""
    ids = np.asarray(ids)
    t = ids.shape[1]
    h = (sd["text_model.embeddings.token_embedding.weight"][ids].astype(np.float64)
         + sd["text_model.embeddings.position_embedding.weight"][:t])
    for i in range(_n_layers(sd, "text_model")):
        h = _block(h, sd, f"text_model.encoder.layers.{i}", heads, causal=True)
    h = _ln(h, sd, "text_model.final_layer_norm")
    pooled = h[np.arange(len(ids)), ids.argmax(-1)]
    return pooled @ sd["text_projection.weight"].T


def tiny_clip(seed=0, **kw):
    """(Clip model, its HF state dict) built in memory with the tiny BPE vocabulary."""
    sd = tiny_hf_state(seed, **kw)
    backbone = clip.backbone_from_state(sd, hf_config())
    return clip.Clip(backbone, clip.make_tokenizer(clip.vocab_from_merges(TINY_MERGES), TINY_MERGES)), sd
