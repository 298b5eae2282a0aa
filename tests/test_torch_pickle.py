"""Tests for tf_cartoon.io.torch_pickle: torch-free, allow-listed .pt reading/writing."""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tf_cartoon.io import torch_pickle as tp
from tf_cartoon.io.torch_pickle import CheckpointFormatError, UnsafePickleError
from tests.helpers import REFERENCE_JSON, REFERENCE_PT

# The reader is checked against the known content of the committed tiny32 checkpoint.
TINY_PT = Path(REFERENCE_PT)
TINY_JSON = Path(REFERENCE_JSON)


@pytest.fixture(scope="module")
def tiny():
    return tp.load(TINY_PT)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def make_zip(path: Path, records: dict[str, bytes], folder: str = "archive") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            zf.writestr(f"{folder}/{name}" if folder else name, data)
    return path


def pstr(text: str) -> bytes:
    """BINUNICODE opcode for ``text``."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def storage_pid(storage: str, key: str, numel: int) -> bytes:
    """Protocol-2 bytes for the persistent id of one storage, plus BINPERSID."""
    return b"(" + pstr("storage") + f"ctorch\n{storage}\n".encode() + \
        pstr(key) + pstr("cpu") + b"J" + struct.pack("<i", numel) + b"tQ"


def tensor_pickle(storage: str, key: str, numel: int, size: tuple, stride: tuple, offset: int = 0) -> bytes:
    def tup(vals):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in vals) + b"t"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_pid(storage, key, numel)
            + b"J" + struct.pack("<i", offset) + tup(size) + tup(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR")


class Evil:
    """Pickles to ``func(*args)``; only ever *dumped* by the tests."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def local_data_offsets(path: Path) -> dict[str, int]:
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset)
            header = f.read(30)
            assert header[:4] == b"PK\x03\x04"
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            out[info.filename] = info.header_offset + 30 + name_len + extra_len
    return out


def assert_tree_equal(a, b, where="obj"):
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray), where
        assert a.dtype == b.dtype, (where, a.dtype, b.dtype)
        assert a.shape == b.shape, (where, a.shape, b.shape)
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(b, dict):
        assert type(a) is type(b), (where, type(a), type(b))
        assert list(a.keys()) == list(b.keys()), where
        for k in b:
            assert_tree_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{where}[{i}]")
    elif isinstance(b, argparse.Namespace):
        assert type(a) is argparse.Namespace, where
        assert_tree_equal(vars(a), vars(b), where)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


# ---------------------------------------------------------------------------
# 1. the real reference checkpoint
# ---------------------------------------------------------------------------


def test_load_reference_checkpoint(tiny):
    assert list(tiny.keys()) == ["g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"]
    assert type(tiny["args"]) is argparse.Namespace
    assert tiny["args"].size == 32 and tiny["args"].arch == "stylegan2" and tiny["args"].ckpt is None
    assert tiny["ada_aug_p"] == 0.0

    spec = json.loads(TINY_JSON.read_text())["state_dict"]
    expected = {"g": spec["g"], "g_ema": spec["g"], "d": spec["d"]}  # g_ema: same keys/shapes as g
    for net, shapes in expected.items():
        sd = tiny[net]
        assert type(sd) is collections.OrderedDict
        assert list(sd.keys()) == list(shapes.keys()), net
        for key, shape in shapes.items():
            arr = sd[key]
            assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, (net, key)
            assert arr.shape == tuple(shape), (net, key, arr.shape, shape)
            assert arr.flags.c_contiguous and arr.flags.writeable
    # state_dict()'s _metadata attribute (restored with BUILD) is kept.
    assert tiny["g"]._metadata[""] == {"version": 1}

    for opt in ("g_optim", "d_optim"):
        state = tiny[opt]["state"]
        assert sorted(state) == list(range(len(state)))
        step = state[0]["step"]
        assert isinstance(step, np.ndarray) and step.shape == () and step.dtype == np.float32
        assert float(step) == 2.0
        assert state[0]["exp_avg"].shape == state[0]["exp_avg_sq"].shape
    assert tiny["g_optim"]["param_groups"][0]["betas"] == (0.0, pytest.approx(0.99 ** (4 / 5)))
    assert tiny["g_optim"]["param_groups"][0]["params"] == list(range(len(tiny["g_optim"]["state"])))


def test_reference_folder_name_and_records():
    with zipfile.ZipFile(TINY_PT) as zf:
        names = set(zf.namelist())
    assert {"000000/data.pkl", "000000/byteorder", "000000/version", "000000/data/0"} <= names


# ---------------------------------------------------------------------------
# 2. malicious pickles are refused and nothing runs
# ---------------------------------------------------------------------------


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    cmd = f"touch {marker}"
    getattr_chain = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(" + pstr("os") + b"tR" + pstr("system")
        + b"tR(" + pstr(cmd) + b"tR."
    )
    return {
        "os.system/proto2": (b"\x80\x02cos\nsystem\n" + pstr(cmd) + b"\x85R.", "os.system"),
        "posix.system/proto4": (pickle.dumps(Evil(os.system, (cmd,)), protocol=4), "posix.system"),
        "subprocess.Popen": (pickle.dumps(Evil(subprocess.Popen, (["touch", str(marker)],)), protocol=3),
                             "subprocess.Popen"),
        "builtins.eval/proto0": (
            b"c__builtin__\neval\n(S'__import__(\"os\").system(\"" + cmd.encode() + b"\")'\ntR.",
            "builtins.eval"),
        "builtins.exec/proto5": (pickle.dumps(Evil(exec, (f"open({str(marker)!r}, 'w').close()",)), protocol=5),
                                 "builtins.exec"),
        "builtins.getattr": (getattr_chain, "builtins.getattr"),
        # The bad global hides inside an otherwise legitimate state dict.
        "nested": (b"\x80\x02ccollections\nOrderedDict\n)R(" + pstr("w")
                   + tensor_pickle("FloatStorage", "0", 2, (2,), (1,))
                   + pstr("x") + b"cos\nsystem\n" + pstr(cmd) + b"\x85Ru.", "os.system"),
    }


@pytest.mark.parametrize("case", list(_payloads(Path("/x")).keys()))
def test_malicious_pickle_refused_and_nothing_runs(tmp_path, case):
    marker = tmp_path / "pwned"
    payload, global_name = _payloads(marker)[case]
    ckpt = make_zip(tmp_path / "evil.pt", {"data.pkl": payload, "data/0": b"\0" * 8, "byteorder": b"little"})
    with pytest.raises(UnsafePickleError) as err:
        tp.load(ckpt)
    msg = str(err.value)
    assert global_name in msg and str(ckpt) in msg
    assert "argparse.Namespace" in msg and "OrderedDict" in msg
    assert not marker.exists()


def test_raw_malicious_pickle_file_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil(os.system, (f"touch {marker}",)), protocol=2))
    with pytest.raises(CheckpointFormatError, match="not a PyTorch zip checkpoint") as err:
        tp.load(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, match",
    [
        # calling a storage type (allow-listed as a name only) is not allowed
        (b"\x80\x02ctorch\nFloatStorage\n)R.", "REDUCE"),
        # REDUCE of something that is not a global at all
        (b"\x80\x02" + pstr("os.system") + b")R.", "REDUCE"),
        # BUILD on a list could set attributes on arbitrary objects
        (b"\x80\x02]}(" + pstr("x") + b"K\x01ub.", "BUILD"),
        # _codecs.encode is only allowed as latin-1 text encoding
        (b"\x80\x02c_codecs\nencode\n" + pstr("abc") + pstr("rot13") + b"\x86R.", "_codecs.encode"),
        # copyreg extension codes resolve to arbitrary globals
        (b"\x80\x02\x82\x01.", "extension"),
    ],
)
def test_other_unsafe_constructs_refused(tmp_path, payload, match):
    ckpt = make_zip(tmp_path / "evil.pt", {"data.pkl": payload})
    with pytest.raises(UnsafePickleError, match=match):
        tp.load(ckpt)


def test_build_cannot_change_class(tmp_path):
    # BUILD only writes the instance __dict__, so '__class__' stays inert.
    payload = (b"\x80\x02cargparse\nNamespace\n)\x81}(" + pstr("__class__") + b"ccollections\nOrderedDict\n"
               + pstr("lr") + b"G" + struct.pack(">d", 0.5) + b"ub.")
    ckpt = make_zip(tmp_path / "ns.pt", {"data.pkl": payload})
    try:
        ns = tp.load(ckpt)
    except (UnsafePickleError, CheckpointFormatError):
        return  # refusing is fine as well
    assert type(ns) is argparse.Namespace and ns.__class__ is argparse.Namespace


# ---------------------------------------------------------------------------
# 3. format errors
# ---------------------------------------------------------------------------


def _check_format_error(path: Path, match: str):
    with pytest.raises(CheckpointFormatError, match=match) as err:
        tp.load(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_not_a_zip(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(b"\x13\x37" + np.random.default_rng(0).bytes(4096))
    _check_format_error(path, "not a PyTorch zip checkpoint")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    _check_format_error(path, "empty file")


def test_truncated_checkpoint(tmp_path):
    data = TINY_PT.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    _check_format_error(path, "truncated")


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    _check_format_error(path, "not a PyTorch zip checkpoint nor a legacy torch file")
    assert tp.sniff(path) == "pickle"


def test_zip_without_data_pkl(tmp_path):
    path = make_zip(tmp_path / "nodata.pt", {"byteorder": b"little", "data/0": b"1234"})
    _check_format_error(path, "data.pkl")


def test_missing_storage_record(tmp_path):
    pkl = b"\x80\x02" + tensor_pickle("FloatStorage", "7", 4, (4,), (1,)) + b"."
    path = make_zip(tmp_path / "nostorage.pt", {"data.pkl": pkl, "data/0": b"\0" * 16})
    _check_format_error(path, "missing storage record 'archive/data/7'")


def test_storage_too_small(tmp_path):
    pkl = b"\x80\x02" + tensor_pickle("FloatStorage", "0", 4, (4,), (1,)) + b"."
    path = make_zip(tmp_path / "small.pt", {"data.pkl": pkl, "data/0": b"\0" * 12})
    _check_format_error(path, "too small")


def test_view_outside_storage(tmp_path):
    pkl = b"\x80\x02" + tensor_pickle("FloatStorage", "0", 4, (2, 2), (2, 1), offset=1) + b"."
    path = make_zip(tmp_path / "oob.pt", {"data.pkl": pkl, "data/0": b"\0" * 16})
    _check_format_error(path, "storage '0' holds 4")


def test_unsupported_dtype(tmp_path):
    pkl = b"\x80\x02" + tensor_pickle("QInt8Storage", "0", 4, (4,), (1,)) + b"."
    path = make_zip(tmp_path / "q.pt", {"data.pkl": pkl, "data/0": b"\0" * 4})
    _check_format_error(path, "QInt8Storage")


def test_truncated_pickle(tmp_path):
    pkl = b"\x80\x02" + tensor_pickle("FloatStorage", "0", 4, (4,), (1,)) + b"."
    path = make_zip(tmp_path / "cut.pt", {"data.pkl": pkl[:-9], "data/0": b"\0" * 16})
    _check_format_error(path, "malformed data.pkl")


# ---------------------------------------------------------------------------
# 4. round trips through our own writer and reader
# ---------------------------------------------------------------------------


def _sample_tree():
    rng = np.random.default_rng(1)
    sd = collections.OrderedDict()
    sd["conv.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    sd["conv.bias"] = np.zeros(4, np.float32)
    sd["count"] = np.array([1, -2, 3], np.int64)
    sd["mask"] = np.array([[True, False], [False, True]])
    sd["step"] = np.array(3.0, np.float32)  # 0-d
    sd["f64"] = rng.standard_normal(5)
    sd["f16"] = rng.standard_normal(5).astype(np.float16)
    sd["i32"] = np.arange(-3, 3, dtype=np.int32)
    sd["i16"] = np.arange(-3, 3, dtype=np.int16)
    sd["i8"] = np.arange(-3, 3, dtype=np.int8)
    sd["u8"] = np.arange(250, 256, dtype=np.uint8)
    sd["empty"] = np.zeros((0, 3), np.float32)
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return {
        "state": sd,
        "list": [1, 2.5, "three", None, (4, 5), [np.ones(2, np.float32)]],
        "args": {"size": 32, "lr": 0.002, "name": "tiny", "flag": False, "big": 2 ** 70, "neg": -(2 ** 40),
                 "raw": b"\x00\xffbytes", "none": None, "betas": (0.0, 0.99)},
        "ada_aug_p": 0.25,
    }


def test_round_trip_nested(tmp_path):
    tree = _sample_tree()
    path = tmp_path / "rt.pt"
    tp.save(tree, path)
    back = tp.load(path)
    assert_tree_equal(back, tree)
    assert back["state"]._metadata == {"": {"version": 1}}
    assert back["state"]["step"].shape == ()


def test_round_trip_extras(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    shared = np.arange(3, dtype=np.int64)
    tree = {
        "transposed": base.T,  # non-contiguous: written as a contiguous copy
        "big_endian": base.astype(">f4"),
        "np_scalar": np.float32(1.5),
        "ns": argparse.Namespace(size=32, ckpt=None),
        "set": {1, 2, 3},
        "frozen": frozenset({"a"}),
        "twice": [shared, shared],
    }
    path = tmp_path / "x.pt"
    tp.save(tree, path)
    back = tp.load(path)
    np.testing.assert_array_equal(back["transposed"], base.T)
    assert back["transposed"].flags.c_contiguous
    assert back["big_endian"].dtype == np.float32
    np.testing.assert_array_equal(back["big_endian"], base)
    assert back["np_scalar"] == 1.5 and type(back["np_scalar"]) is float
    assert type(back["ns"]) is argparse.Namespace and vars(back["ns"]) == {"size": 32, "ckpt": None}
    assert back["set"] == {1, 2, 3} and back["frozen"] == frozenset({"a"})
    assert back["twice"][0] is back["twice"][1]


def test_round_trip_reference_g_ema(tmp_path, tiny):
    path = tmp_path / "g_ema_only.pt"
    tp.save({"g_ema": tiny["g_ema"]}, path)
    back = tp.load(path)
    assert_tree_equal(back["g_ema"], tiny["g_ema"])


def test_saved_layout(tmp_path):
    path = tmp_path / "layout.pt"
    tp.save({"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.int64)}, path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names[0] == "layout/data.pkl"
        assert {"layout/byteorder", "layout/version", "layout/.data/version",
                "layout/data/0", "layout/data/1"} <= set(names)
        assert zf.read("layout/byteorder") == b"little"
        assert zf.read("layout/version") == b"3\n"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert zf.read("layout/data.pkl")[:2] == b"\x80\x02"  # protocol 2
    for name, offset in local_data_offsets(path).items():
        assert offset % 64 == 0, name

    other = tmp_path / "other.pt"
    tp.save({"a": np.ones(3, np.float32)}, other, archive_name="archive")
    with zipfile.ZipFile(other) as zf:
        assert "archive/data.pkl" in zf.namelist()
    assert tp.load(other)["a"].tolist() == [1.0, 1.0, 1.0]


def test_big_endian_and_missing_byteorder(tmp_path):
    values = np.array([1.5, -2.0, 3.25], np.float32)
    src = tmp_path / "le.pt"
    tp.save({"v": values, "h": values.astype(np.float16)}, src)
    with zipfile.ZipFile(src) as zf:
        pkl = zf.read("le/data.pkl")
        d0, d1 = zf.read("le/data/0"), zf.read("le/data/1")
    big = make_zip(tmp_path / "be.pt", {
        "data.pkl": pkl, "byteorder": b"big",
        "data/0": values.astype(">f4").tobytes(), "data/1": values.astype(">f2").tobytes()})
    out = tp.load(big)
    assert out["v"].dtype == np.float32 and out["v"].dtype.isnative
    np.testing.assert_array_equal(out["v"], values)
    np.testing.assert_array_equal(out["h"], values.astype(np.float16))
    no_order = make_zip(tmp_path / "noorder.pt", {"data.pkl": pkl, "data/0": d0, "data/1": d1}, folder="x")
    np.testing.assert_array_equal(tp.load(no_order)["v"], values)


def test_shared_storage_views_and_bfloat16(tmp_path):
    # Two tensors over one storage: a 2x2 view at offset 1 with stride (3, 1), and
    # a bfloat16 storage whose raw bits are the top halves of float32 values.
    storage = np.arange(9, dtype=np.float32)
    bf_values = np.array([1.0, -2.5, 3.0], np.float32)
    bf_bits = (bf_values.view(np.uint32) >> 16).astype("<u2")
    pkl = (b"\x80\x02}(" + pstr("full") + tensor_pickle("FloatStorage", "0", 9, (9,), (1,))
           + pstr("view") + tensor_pickle("FloatStorage", "0", 9, (2, 2), (3, 1), offset=1)
           + pstr("expanded") + tensor_pickle("FloatStorage", "0", 9, (2, 3), (0, 1), offset=6)
           + pstr("scalar") + tensor_pickle("FloatStorage", "0", 9, (), (), offset=8)
           + pstr("bf16") + tensor_pickle("BFloat16Storage", "1", 3, (3,), (1,)) + b"u.")
    path = make_zip(tmp_path / "views.pt", {"data.pkl": pkl, "byteorder": b"little",
                                            "data/0": storage.tobytes(), "data/1": bf_bits.tobytes()})
    out = tp.load(path)
    np.testing.assert_array_equal(out["full"], storage)
    np.testing.assert_array_equal(out["view"], [[1, 2], [4, 5]])
    np.testing.assert_array_equal(out["expanded"], [[6, 7, 8], [6, 7, 8]])
    assert out["scalar"].shape == () and out["scalar"] == 8
    assert out["bf16"].dtype == np.float32
    np.testing.assert_array_equal(out["bf16"], bf_values)
    for arr in out.values():
        assert arr.flags.c_contiguous and arr.flags.writeable


# ---------------------------------------------------------------------------
# 5. interoperability with real PyTorch (skipped when torch is not installed)
# ---------------------------------------------------------------------------


def test_torch_interop(tmp_path):
    torch = pytest.importorskip("torch")

    # (a) torch.load(weights_only=True) reads what we write.
    tree = _sample_tree()
    ours = tmp_path / "ours.pt"
    tp.save(tree, ours)
    for mmap in (False, True):
        loaded = torch.load(ours, weights_only=True, mmap=mmap)
        sd = loaded["state"]
        assert type(sd) is collections.OrderedDict and list(sd) == list(tree["state"])
        for key, arr in tree["state"].items():
            t = sd[key]
            assert isinstance(t, torch.Tensor) and tuple(t.shape) == arr.shape, key
            np.testing.assert_array_equal(t.numpy(), arr, err_msg=key)
            assert t.numpy().dtype == arr.dtype, key
        assert sd._metadata == {"": {"version": 1}}
        assert loaded["args"] == tree["args"]
        assert loaded["list"][:5] == tree["list"][:5]
        assert loaded["ada_aug_p"] == 0.25

    # (b) our reader reads what torch writes, including views and Parameters.
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    param = torch.nn.Parameter(torch.randn(3, 2))
    param_with_state = torch.nn.Parameter(torch.ones(2))
    param_with_state.custom_tag = "kept by torch, dropped by us"
    sd = collections.OrderedDict(
        base=base,
        view=base[1:, 2:],  # shares storage, offset 7, strides (5, 1)
        transposed=base.t(),
        column=base[:, 3],
        weight=param,
        tagged=param_with_state,
        step=torch.tensor(4.0),
        bf16=torch.tensor([1.0, -0.5, 3.0], dtype=torch.bfloat16),
        u16=torch.tensor([1, 2, 65535], dtype=torch.int32).to(torch.uint16),
        i64=torch.tensor([-(2 ** 40), 7]),
        mask=torch.tensor([True, False]),
        half=torch.tensor([0.5, 2.0], dtype=torch.float16),
        empty=torch.zeros(0, 3),
    )
    obj = {"sd": sd, "size": torch.Size([2, 3]), "raw": b"abc", "blank": b"", "set": {1, 2},
           "args": argparse.Namespace(size=32)}
    theirs = tmp_path / "theirs.pt"
    torch.save(obj, theirs)
    out = tp.load(theirs)
    got = out["sd"]
    assert type(got) is collections.OrderedDict and list(got) == list(sd)
    for key, t in sd.items():
        expected = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
        if t.dtype == torch.uint16:
            expected = t.to(torch.int32).numpy().astype(np.uint16)
        assert got[key].dtype == expected.dtype, key
        assert got[key].shape == expected.shape, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)
        assert got[key].flags.c_contiguous
    assert got["step"].shape == ()
    assert out["size"] == (2, 3) and type(out["size"]) is tuple
    assert out["raw"] == b"abc" and out["blank"] == b"" and out["set"] == {1, 2}
    assert type(out["args"]) is argparse.Namespace and out["args"].size == 32


# ---------------------------------------------------------------------------
# 6. atomic save
# ---------------------------------------------------------------------------


def test_failed_serialization_leaves_target_untouched(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous checkpoint bytes")
    bad = {"ok": np.ones(3, np.float32), "nested": [{"x": object()}]}
    with pytest.raises(TypeError, match=r"object.*\['nested'\]\[0\]\['x'\]"):
        tp.save(bad, target)
    assert target.read_bytes() == b"previous checkpoint bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_failed_write_leaves_target_untouched(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous checkpoint bytes")
    calls = []
    real = tp._write_record

    def flaky(zf, fileobj, name, payload):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(zf, fileobj, name, payload)

    monkeypatch.setattr(tp, "_write_record", flaky)
    with pytest.raises(OSError, match="disk full"):
        tp.save({"a": np.ones(3, np.float32)}, target)
    assert target.read_bytes() == b"previous checkpoint bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]

    monkeypatch.setattr(tp, "_write_record", real)
    tp.save({"a": np.ones(3, np.float32)}, target)  # a successful save replaces it
    assert tp.load(target)["a"].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


# ---------------------------------------------------------------------------
# 7. the legacy (pre-1.6) format
# ---------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch"
LEGACY_HEADER = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                 + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))


def legacy_pid(storage: str, key: str, numel: int, view: tuple | None = None) -> bytes:
    """Protocol-2 bytes for a legacy storage persistent id (6 fields), plus BINPERSID."""
    if view is None:
        view_bytes = b"N"
    else:
        view_bytes = b"(" + pstr(view[0]) + b"".join(b"J" + struct.pack("<i", v) for v in view[1:]) + b"t"
    return (b"(" + pstr("storage") + f"ctorch\n{storage}\n".encode() + pstr(key) + pstr("cpu")
            + b"J" + struct.pack("<i", numel) + view_bytes + b"tQ")


def legacy_tensor(storage: str, key: str, numel: int, size: tuple, stride: tuple, offset: int = 0,
                  view: tuple | None = None) -> bytes:
    def tup(vals):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in vals) + b"t"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + legacy_pid(storage, key, numel, view)
            + b"J" + struct.pack("<i", offset) + tup(size) + tup(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR")


def legacy_file(path: Path, obj_pickle: bytes, storages: dict[str, np.ndarray]) -> Path:
    keys = sorted(storages)
    body = LEGACY_HEADER + obj_pickle + pickle.dumps(keys, protocol=2)
    for key in keys:
        arr = storages[key]
        body += struct.pack("<q", arr.size) + arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(body)
    return path


def _fixture_expected():
    base = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    sd = collections.OrderedDict(
        weight=base, view=base[1:, 1:3].copy(),
        half=np.array([0.5, -1.25, 3.0], np.float16),
        steps=np.array([1, -2, 2 ** 40], np.int64),
        scalar=np.array(2.5, np.float32),
        param=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
    )
    return {"state": sd, "args": argparse.Namespace(size=32, lr=0.002, name="tiny"),
            "meta": {"iter": 7, "nested": {"betas": (0.0, 0.99), "tags": ["a", "b"]}}}


def test_committed_legacy_and_zip_fixtures_agree():
    legacy, zipped = FIXTURES / "small_legacy.pt", FIXTURES / "small_zip.pt"
    assert tp.sniff(legacy) == "torch_legacy" and tp.sniff(zipped) == "torch_zip"
    a, b = tp.load(legacy), tp.load(zipped)
    expected = _fixture_expected()
    assert_tree_equal(a, expected)
    assert_tree_equal(b, expected)
    for arr in a["state"].values():
        assert arr.flags.c_contiguous and arr.flags.writeable


def test_legacy_matches_zip_written_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(4, 5, generator=gen)
    sd = collections.OrderedDict(
        base=base, view=base[1:, 2:], transposed=base.t(), column=base[:, 3],
        weight=torch.nn.Parameter(torch.randn(3, 2, generator=gen)),
        bf16=torch.tensor([1.0, -0.5, 3.0], dtype=torch.bfloat16),
        f64=torch.randn(3, dtype=torch.float64, generator=gen),
        i32=torch.tensor([1, -7], dtype=torch.int32), u8=torch.tensor([0, 255], dtype=torch.uint8),
        mask=torch.tensor([True, False]), empty=torch.zeros(0, 3), step=torch.tensor(4.0),
        flag=torch.tensor(True), bf0=torch.tensor(1.5, dtype=torch.bfloat16),
    )
    obj = {"sd": sd, "size": torch.Size([2, 3]), "raw": b"abc", "set": {1, 2},
           "args": argparse.Namespace(size=32), "nested": [{"x": (1, 2.5)}, None]}
    torch.save(obj, tmp_path / "zip.pt")
    torch.save(obj, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert tp.sniff(tmp_path / "legacy.pt") == "torch_legacy"
    legacy = tp.load(tmp_path / "legacy.pt")
    assert_tree_equal(legacy, tp.load(tmp_path / "zip.pt"))
    # 0-d bool / bfloat16 tensors stay 0-d arrays (numpy operators would make them scalars)
    assert isinstance(legacy["sd"]["flag"], np.ndarray) and legacy["sd"]["flag"].shape == ()
    assert legacy["sd"]["flag"].dtype == np.bool_ and bool(legacy["sd"]["flag"])
    assert isinstance(legacy["sd"]["bf0"], np.ndarray) and legacy["sd"]["bf0"] == np.float32(1.5)


def test_legacy_storage_view_and_big_endian(tmp_path):
    data = np.arange(6, dtype=np.float32)
    # A tensor over elements 2..4 of storage '0' through a legacy storage view.
    pkl = (b"\x80\x02}(" + pstr("full") + legacy_tensor("FloatStorage", "0", 6, (6,), (1,))
           + pstr("view") + legacy_tensor("FloatStorage", "0", 6, (3,), (1,), view=("9", 2, 3))
           + b"u.")
    out = tp.load(legacy_file(tmp_path / "view.pt", pkl, {"0": data}))
    np.testing.assert_array_equal(out["full"], data)
    np.testing.assert_array_equal(out["view"], [2, 3, 4])
    big_header = LEGACY_HEADER.replace(b"\x88", b"\x89")  # little_endian: False
    assert big_header != LEGACY_HEADER
    body = (big_header + b"\x80\x02" + legacy_tensor("FloatStorage", "0", 6, (6,), (1,)) + b"."
            + pickle.dumps(["0"], protocol=2) + struct.pack(">q", 6) + data.astype(">f4").tobytes())
    (tmp_path / "be.pt").write_bytes(body)
    got = tp.load(tmp_path / "be.pt")
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, data)


def test_legacy_malicious_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = b"\x80\x02cos\nsystem\n" + pstr(f"touch {marker}") + b"\x85R."
    path = legacy_file(tmp_path / "evil.pt", evil, {})
    with pytest.raises(UnsafePickleError, match="os.system") as err:
        tp.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_legacy_module_persistent_id_refused(tmp_path):
    # As torch writes a whole nn.Module: the class global comes first and is refused by name.
    real_layout = (b"\x80\x02(" + pstr("module") + b"cmymodels\nNet\n" + pstr("mymodels.py")
                   + pstr("import os\nos.system('x')\n") + b"tQ.")
    with pytest.raises(UnsafePickleError, match="mymodels.Net"):
        tp.load(legacy_file(tmp_path / "cls.pt", real_layout, {}))
    # The persistent id itself is refused too, whatever it carries.
    bare = b"\x80\x02(" + pstr("module") + pstr("Net") + b"NNtQ."
    with pytest.raises(UnsafePickleError, match=r"nn\.Module.*persistent id 'module'") as err:
        tp.load(legacy_file(tmp_path / "mod.pt", bare, {}))
    assert "\n" not in str(err.value)


def test_legacy_truncated_and_inconsistent(tmp_path):
    data = (FIXTURES / "small_legacy.pt").read_bytes()
    for cut in range(1, len(data)):
        path = tmp_path / "cut.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointFormatError) as err:
            tp.load(path)
        assert str(path) in str(err.value), cut
    one = np.ones(4, np.float32)
    pkl = b"\x80\x02" + legacy_tensor("FloatStorage", "0", 4, (4,), (1,)) + b"."
    good = legacy_file(tmp_path / "good.pt", pkl, {"0": one})
    np.testing.assert_array_equal(tp.load(good), one)
    _check_format_error(legacy_file(tmp_path / "count.pt", pkl, {"0": np.ones(3, np.float32)}),
                        "holds 3 elements, the pickle says 4")
    _check_format_error(legacy_file(tmp_path / "extra.pt", pkl, {"0": one, "1": one}),
                        "not used by the object pickle")
    _check_format_error(legacy_file(tmp_path / "none.pt", pkl, {}), r"used but not stored")
    oob = b"\x80\x02" + legacy_tensor("FloatStorage", "0", 4, (3,), (1,), offset=2) + b"."
    _check_format_error(legacy_file(tmp_path / "oob.pt", oob, {"0": one}), "holds 4")
