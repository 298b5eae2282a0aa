"""tf_cartoon.bench: JSON lines with the required keys, and the analytic FLOP count."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_cartoon import bench

REQUIRED = {"what", "size", "batch", "ms_per_batch", "images_per_s", "gflops", "peak_gflops", "peak_ratio", "xla",
            "fused", "layout", "device", "tf_version"}
TINY = dict(size=8, batch=2, repeats=1, warmup=1, style_dim=32, n_mlp=2, channels_small=True)


def _check_row(row, cfg):
    assert REQUIRED <= row.keys(), REQUIRED - row.keys()
    assert row["what"] == cfg.what and row["size"] == cfg.size and row["batch"] == cfg.batch
    for key in ("ms_per_batch", "images_per_s", "gflops", "peak_gflops", "peak_ratio"):
        assert isinstance(row[key], float) and row[key] > 0 and math.isfinite(row[key]), (key, row[key])
    assert row["peak_ratio"] == pytest.approx(row["gflops"] / row["peak_gflops"], rel=1e-2)
    assert row["images_per_s"] == pytest.approx(cfg.batch / row["ms_per_batch"] * 1e3, rel=1e-2)
    assert row["layout"] == "NHWC" and isinstance(row["xla"], bool) and isinstance(row["fused"], bool)
    assert "reference_ms" not in row and "speedup_vs_reference" not in row  # no reference for tiny configs


def test_all_combinations_in_process():
    cfg = bench.Config(**TINY)
    lines = []
    rows = bench.run(cfg, all_combinations=True, emit=lambda d: lines.append(json.dumps(d)))
    assert len(rows) == len(lines) == 5
    parsed = [json.loads(line) for line in lines]
    assert {(r["xla"], r["fused"]) for r in parsed[:4]} == {(False, False), (False, True), (True, False),
                                                            (True, True)}
    for row in parsed[:4]:
        _check_row(row, cfg)
    summary = parsed[4]
    assert summary["what"] == "g_forward" and summary["default"]["xla"] is False
    assert summary["default"]["fused"] is False  # the library default on CPU
    fastest = min(parsed[:4], key=lambda r: r["ms_per_batch"])
    assert summary["best"]["ms_per_batch"] == fastest["ms_per_batch"]
    assert summary["default_is_fastest"] == (summary["best"] == summary["default"])


@pytest.mark.slow
def test_cli_prints_only_json_lines():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    args = [sys.executable, "-m", "tf_cartoon.bench", "--what", "g_forward", "--size", "8", "--batch", "2",
            "--repeats", "1", "--warmup", "1", "--style_dim", "32", "--n_mlp", "2", "--channels_small", "--noxla",
            "--nofused"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    _check_row(json.loads(lines[0]), bench.Config(**TINY))
    assert json.loads(lines[0])["cpu_allocator"] == "bfc"  # what the generating tools run with


def test_pooled_cpu_allocator_keeps_the_users_choice(monkeypatch):
    import tf_cartoon
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    assert tf_cartoon.use_pooled_cpu_allocator() is True
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    assert tf_cartoon.use_pooled_cpu_allocator() is False
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"


def test_flops_by_hand_size8():
    # size 8, channels {4: 8, 8: 4}, style_dim 16, n_mlp 2, per image, in MACs:
    mapping = 2 * 16 * 16                       # 512
    modulation = 16 * (8 + 8 + 8 + 4 + 4)      # conv1, to_rgb1, up conv (in 8), conv (in 4), to_rgb (in 4) = 512
    conv1 = 4 * 4 * 9 * 8 * 8                  # 9216
    to_rgb1 = 4 * 4 * 8 * 3                    # 384
    up = 4 * 4 * 9 * 8 * 4                     # transposed: every input pixel x 9 taps = 4608
    conv = 8 * 8 * 9 * 4 * 4                   # 9216
    to_rgb = 8 * 8 * 4 * 3                     # 768
    macs = mapping + modulation + conv1 + to_rgb1 + up + conv + to_rgb
    assert macs == 25216
    got = bench.generator_flops(8, style_dim=16, n_mlp=2, channels={4: 8, 8: 4}, batch=3)
    assert got == 2 * macs * 3


def test_flops_match_model_weights():
    """Count again from the built model's kernels (an independent walk) for a small generator."""
    from tf_cartoon.networks import Generator
    size, d, n_mlp, channels = 32, 8, 3, {4: 8, 8: 6, 16: 4, 32: 2}
    g = Generator(size, d, n_mlp, channels=channels)
    macs = sum(int(l.kernel.shape[0]) * int(l.kernel.shape[1]) for l in g.style.dense)
    res = 4
    layers = [(g.conv1.conv, 4), (g.to_rgb1.conv, 4)]
    for b in range(g.n_blocks):
        res *= 2
        layers += [(g.convs[2 * b].conv, res // 2), (g.convs[2 * b + 1].conv, res), (g.to_rgbs[b].conv, res)]
    for conv, in_res in layers:  # an upsampling conv runs its kernel over its INPUT pixels
        kh, kw, cin, cout = conv.kernel.shape
        macs += in_res * in_res * kh * kw * cin * cout
        macs += conv.modulation.kernel.shape[0] * conv.modulation.kernel.shape[1]
    assert bench.generator_flops(size, d, n_mlp, channels=channels, batch=2) == 2 * 2 * macs


def test_reference_only_for_known_key():
    assert bench.REFERENCE_MS == {("g_forward", 256, 4): 6900.0, ("train_step", 256, 4): 108000.0}


def test_recorded_reference_keys():
    """Without --reference: the recorded numbers, for their exact settings only; the export against G forward."""
    for what, ms in (("g_forward", 2000.0), ("export", 2300.0)):
        keys = bench.reference_keys(bench.Config(what=what), ms)
        assert keys == {"reference_source": "recorded", "reference_what": "g_forward", "reference_ms": 6900.0,
                        "speedup_vs_reference": round(6900.0 / ms, 3)}
    keys = bench.reference_keys(bench.Config(what="train_step"), 40000.0, peak_rss_mb=4096.0)
    assert keys["reference_ms"] == 108000.0 and keys["reference_peak_rss_gb"] == 9.1
    assert keys["peak_rss_vs_reference"] == round(4.0 / 9.1, 3)
    for other in (dict(size=128), dict(batch=8), dict(style_dim=256), dict(channels_small=True), dict(what="swap")):
        assert bench.reference_keys(bench.Config(**other), 1000.0) == {}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_reports_full_iteration(precision):
    cfg = bench.Config(what="train_step", size=16, batch=4, repeats=1, warmup=1, style_dim=16, n_mlp=2,
                       channels_small=True, precision=precision)
    (row,) = bench.run(cfg)
    assert row["precision"] == precision
    assert row["compute_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]  # the trainer's G
    for key in ("ms_per_batch", "images_per_s", "gflops", "peak_gflops", "peak_ratio", "d_ms", "g_ms",
                "sec_per_kimg", "peak_rss_mb"):
        assert row[key] > 0, key
    assert row["ms_per_batch"] == pytest.approx(row["d_ms"] + row["g_ms"], abs=0.2)
    assert row["sec_per_kimg"] == pytest.approx(row["ms_per_batch"] / 4, abs=0.1)


def test_discriminator_flops_by_hand_size8():
    # size 8, channels {4: 8, 8: 4}: from-RGB 8*8*3*4; ResBlock at 8 (4 -> 8): 8*8*9*4*4 + 4*4*9*4*8 + 4*4*4*8;
    # final conv 16*9*9*8; linears 16*8*8 + 8
    macs = 8 * 8 * 3 * 4 + 8 * 8 * 9 * 4 * 4 + 4 * 4 * 9 * 4 * 8 + 4 * 4 * 4 * 8 + 16 * 9 * 9 * 8 + 16 * 8 * 8 + 8
    assert bench.discriminator_flops(8, channels={4: 8, 8: 4}, batch=3) == 2 * 3 * macs


def test_export_row_in_bf16_times_a_bf16_export_and_the_bf16_library():
    """--what export --precision bf16: the export and the library forward it is compared with both run in bfloat16
    (float32 signatures); the row says so."""
    row = bench.run(bench.Config(what="export", precision="bf16", **TINY))[0]
    assert row["precision"] == "bf16" and row["signature"] == "serving_default"
    assert row["ms_per_batch"] > 0 and row["g_forward_ms"] > 0
    g = bench.build_generator(bench.Config(precision="bf16", **TINY))
    assert g.compute_dtype == "bfloat16"


@pytest.mark.parametrize("what", ["export", "swap"])
def test_export_and_swap_print_json_rows(what):
    """--what export (reloaded SavedModel's serving_default) and --what swap (layer-swapping forward)."""
    cfg = bench.Config(what=what, **{**TINY, "repeats": 3 if what == "export" else 1})
    lines = []
    rows = bench.run(cfg, emit=lambda d: lines.append(json.dumps(d)))
    assert len(rows) == len(lines) == 1
    row = json.loads(lines[0])
    _check_row(row, cfg)
    single = bench.generator_flops(cfg.size, cfg.style_dim, cfg.n_mlp, channels=cfg.channels(), batch=cfg.batch)
    if what == "export":
        assert row["signature"] == "serving_default" and row["export_s"] > 0 and row["load_s"] > 0
        # the library's forward on the same generator, timed in the same rounds
        assert row["g_forward_ms"] > 0 and row["g_forward_cpu_ms"] > 0
        assert row["export_vs_g_forward"] == pytest.approx(row["ms_per_batch"] / row["g_forward_ms"], rel=1e-3)
        times = list(zip(row["times_ms"], row["g_forward_times_ms"]))  # round by round, rounded to 0.1 ms
        assert len(times) == cfg.repeats
        rounding = max(0.05 / m + 0.05 / g for m, g in times) + 1e-4
        paired = float(np.median([m / g for m, g in times]))
        assert row["export_vs_g_forward_paired"] == pytest.approx(paired, rel=rounding)
        flops = single
    else:
        assert row["swap_layer"] == 1  # an 8 px generator has one block
        assert row["swap_from_w_ms"] > 0
        mapping = 2 * cfg.n_mlp * cfg.style_dim ** 2 * cfg.batch
        flops = 3 * single - mapping  # source + 2 target syntheses, 2 mappings
    # gflops and ms_per_batch are both rounded to 3 decimals: the exact count over the reported time may differ
    # by gflops' rounding plus what ms_per_batch's rounding (+-0.0005 ms) moves the quotient.
    ms = row["ms_per_batch"]
    slack = 5e-4 + flops / 1e6 * (1 / (ms - 5e-4) - 1 / ms) + 1e-9
    assert abs(row["gflops"] - flops / ms / 1e6) <= slack, (row["gflops"], flops, ms)


@pytest.mark.slow
def test_custom_ops_bench_rows_and_summary():
    """--what ops: per op / pass / impl rows (compiled op, XLA, plain TF), G forward with each impl (the
    train step goes through the same loop; it is left out here for time), and the summary line (fastest
    impl per op, auto's choice)."""
    import tensorflow as tf
    from tf_cartoon.ops import build, custom, dispatch
    try:
        build.find_cxx()
        have_compiler = True
    except build.CompilerNotFound:
        have_compiler = False
    cfg = bench.Config(what="ops", size=16, batch=2, repeats=1, warmup=1, style_dim=16, n_mlp=2,
                       channels_small=True, ops_channels=4, ops_model_size=16, ops_models="g_forward")
    lines = []
    rows = bench.run(cfg, emit=lambda d: lines.append(json.dumps(d)))
    assert [json.loads(line) for line in lines] == rows
    impls = {"custom", "xla", "tf"} if have_compiler else {"xla", "tf"}  # with a compiler the library must load
    op_rows = [r for r in rows if r["what"] == "ops" and "op" in r]
    names = {"upfirdn2d_blur", "upfirdn2d_down2", "upfirdn2d_up2_rgb", "bias_act_lrelu"}
    assert {(r["op"], r["pass"], r["impl"]) for r in op_rows} == {
        (n, p, i) for n in names for p in ("forward", "forward_backward") for i in impls}
    assert len(op_rows) == len(names) * 2 * len(impls)
    for r in op_rows:
        assert r["ms"] > 0 and r["size"] == 16 and r["batch"] == 2
        assert r["shape"] == ([2, 8, 8, 3] if r["op"] == "upfirdn2d_up2_rgb" else [2, 16, 16, 4])
    model_rows = [r for r in rows if r["what"] in ("g_forward", "train_step")]
    assert {(r["what"], r["impl"]) for r in model_rows} == {("g_forward", i) for i in impls}
    assert len(model_rows) == len(impls)
    for r in model_rows:
        assert r["bench"] == "ops" and r["ms_per_batch"] > 0 and r["size"] == 16 and r["xla"] == (r["impl"] == "xla")
    summary = rows[-1]
    assert summary["summary"] is True and summary["custom_available"] == have_compiler
    assert set(summary["ops"]) == {f"{n}/{p}" for n in names for p in ("forward", "forward_backward")}
    for key, entry in summary["ops"].items():
        assert set(entry["ms"]) == impls and entry["fastest"] == min(entry["ms"], key=entry["ms"].get)
        op = "bias_act" if key.startswith("bias_act") else "upfirdn2d"
        dev = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        assert entry["auto_picks_custom"] == (dispatch.FAMILIES[op].prefer[dev] == "custom")
        if have_compiler:
            assert entry["custom_faster_than_tf"] == (entry["ms"]["custom"] < entry["ms"]["tf"])
    assert custom.status()["loaded"] == have_compiler


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="M_ARENA_MAX is glibc's")
def test_malloc_arena_cap_applies_on_glibc():
    import tf_cartoon
    assert tf_cartoon.limit_malloc_arenas(8) is True  # 8 per core is glibc's own default: harmless here


# ---------------------------------------------------------------------------------------------
# --precision: the rows say what ran
# ---------------------------------------------------------------------------------------------

def test_peak_chain_runs_in_the_rows_compute_dtype():
    """peak_gflops, the yardstick of peak_ratio, times oneDNN's convolution in the row's own compute dtype."""
    for p, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        chain, flops = bench.peak_chain(bench.Config(precision=p, **TINY))
        out = chain()
        assert out.dtype.name == dtype and flops > 0 and np.isfinite(np.asarray(out, np.float32)).all()


def test_rows_report_precision_and_cpu_bf16():
    import numpy as np
    import tensorflow as tf
    from tf_cartoon import precision
    rows = {p: bench.run(bench.Config(precision=p, **TINY))[0] for p in ("fp32", "bf16", "auto")}
    for p, row in rows.items():
        _check_row(row, bench.Config(**TINY))
        assert row["precision"] == precision.resolve(p, gpu=bool(tf.config.list_logical_devices("GPU")))
        assert row["cpu_bf16"] is precision.cpu_has_bf16()
        assert row["cpu_bf16_flags"] == list(precision.cpu_bf16_flags())
    assert rows["fp32"]["g_params"] == rows["bf16"]["g_params"] > 0  # one architecture, two precisions
    assert rows["fp32"]["compute_dtype"] == rows["fp32"]["output_dtype"] == "float32"
    assert rows["bf16"]["compute_dtype"] == rows["bf16"]["output_dtype"] == "bfloat16"
    # The bf16 model is the fp32 one's weights computing in bfloat16: close images, not equal ones.
    g32 = bench.build_generator(bench.Config(precision="fp32", **TINY))
    g16 = bench.build_generator(bench.Config(precision="bf16", **TINY))
    assert g16 is not g32
    for a, b in zip(g32.weights, g16.weights):
        assert a.dtype == b.dtype == "float32"
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    z = tf.random.stateless_normal([2, TINY["style_dim"]], [1, 2])
    img32 = g32.synthesis(g32.make_wplus(z), randomize_noise=False).image.numpy()
    img16 = tf.cast(g16.synthesis(g16.make_wplus(z), randomize_noise=False).image, tf.float32).numpy()
    diff = np.abs(img32 - img16)
    assert 0 < diff.max() < 0.1 * max(np.abs(img32).max(), 1e-3), diff.max()


# ---------------------------------------------------------------------------------------------
# --reference: the reference measured in the same run (a fake tiny reference checkout)
# ---------------------------------------------------------------------------------------------

FAKE_OP = '''
import os

import torch
from torch.utils.cpp_extension import load

# As the reference's op/ modules: a CUDA extension built at import (stubbed by reference_timing).
_ext = load("fake_blur", sources=[os.path.join(os.path.dirname(__file__), "fake_blur_kernel.cu")])


def blur(x):
    if x.device.type == "cpu":
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    return _ext.blur(x)
'''

FAKE_MODEL = '''
import os

import torch
from torch import nn

from op import blur


def _log(line):
    with open(os.environ["FAKE_REFERENCE_LOG"], "a") as f:
        f.write(line + "\\n")


class Generator(nn.Module):
    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=[1, 3, 3, 1], lr_mlp=0.01):
        super().__init__()
        self.size = size
        self.style = nn.Sequential(*[nn.Linear(style_dim, style_dim) for _ in range(n_mlp)])
        self.to_image = nn.Linear(style_dim, 3 * size * size)
        self.register_buffer("noise", torch.randn(1, 3, size, size))

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1, truncation_latent=None,
                input_is_latent=False, noise=None, randomize_noise=True):
        _log(f"G randomize_noise={randomize_noise} grad={torch.is_grad_enabled()} "
             f"trains={self.to_image.weight.requires_grad} styles={len(styles)}")
        w = sum(self.style(s) for s in styles) / len(styles)
        image = self.to_image(w).view(-1, 3, self.size, self.size)
        image = image + (torch.randn_like(image) if randomize_noise else self.noise)
        return blur(image), None


class Discriminator(nn.Module):
    def __init__(self, size, channel_multiplier=2, blur_kernel=[1, 3, 3, 1]):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.linear = nn.Linear(2 * size * size, 1)

    def forward(self, input):
        _log(f"D trains={self.conv.weight.requires_grad}")
        return self.linear(self.conv(input).flatten(1))
'''


def _fake_reference(tmp_path, monkeypatch, model=FAKE_MODEL):
    """A tiny stand-in for a rosinality/stylegan2-pytorch checkout: model.py with its constructor signatures and
    call conventions, an op/ package that builds a CUDA extension at import; each forward logs its call."""
    pytest.importorskip("torch")
    ref = tmp_path / "stylegan2-pytorch"
    (ref / "op").mkdir(parents=True)
    (ref / "op" / "__init__.py").write_text(FAKE_OP)
    (ref / "model.py").write_text(model)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_REFERENCE_LOG", str(log))
    return ref, log


def _fake_g_params(size, style_dim, n_mlp):
    return n_mlp * (style_dim * style_dim + style_dim) + style_dim * 3 * size * size + 3 * size * size


REF_TINY = dict(size=8, batch=2, repeats=2, warmup=2, style_dim=32, n_mlp=2)  # the reference has no small channels


def test_reference_measured_in_the_same_run(tmp_path, monkeypatch):
    ref, log = _fake_reference(tmp_path, monkeypatch)
    cfg = bench.Config(reference=str(ref), **REF_TINY)
    (row,) = bench.run(cfg)
    assert row["reference_source"] == "measured" and row["reference_what"] == "g_forward"
    assert row["reference_ms"] > 0 and row["reference_peak_rss_gb"] > 0 and row["reference_precision"] == "fp32"
    # Ratios are rounded to 3 decimals: a fake reference far faster than us gives ratios near 0.001.
    assert row["speedup_vs_reference"] == pytest.approx(row["reference_ms"] / row["ms_per_batch"], rel=1e-2, abs=1e-3)
    assert row["reference_threads"] == bench.intra_op_threads()
    assert row["cpu_speedup_vs_reference"] == pytest.approx(
        row["reference_cpu_ms_per_batch"] / row["cpu_ms_per_batch"], rel=1e-2, abs=1e-3)
    assert len(row["reference_times_ms"]) == cfg.repeats
    assert row["reference_g_params"] == _fake_g_params(cfg.size, cfg.style_dim, cfg.n_mlp)
    # The bench's work and schedule: z -> image with the stored noise, no autograd; the first call, warmup - 1
    # more, then the timed repeats.
    calls = log.read_text().splitlines()
    assert calls == ["G randomize_noise=False grad=False trains=True styles=1"] * (cfg.warmup + cfg.repeats)
    bench.run(cfg)  # the same settings again in this process: measured once
    assert len(log.read_text().splitlines()) == len(calls)


def test_reference_train_step_child(tmp_path, monkeypatch):
    """The child on its own: one D step (G frozen, D on fakes and reals) + one G step (D frozen) per iteration."""
    import tf_cartoon
    from tf_cartoon import reference_timing
    ref, log = _fake_reference(tmp_path, monkeypatch)
    root = os.path.dirname(os.path.dirname(os.path.abspath(tf_cartoon.__file__)))
    args = reference_timing.argv_for(str(ref), "train_step", 8, 2, 16, 1, 2, 1, 2, 1, 0)
    out = subprocess.run([sys.executable, "-m", "tf_cartoon.reference_timing", *args], capture_output=True,
                         text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["what"] == "train_step" and row["threads"] == 1 and len(row["times_ms"]) == 2
    assert row["ms_per_batch"] == pytest.approx(row["d_ms"] + row["g_ms"], abs=0.2)
    assert row["g_params"] == _fake_g_params(8, 16, 1) and row["peak_rss_gb"] > 0
    calls = log.read_text().splitlines()
    d_step = ["G randomize_noise=True grad=True trains=False styles=1", "D trains=True", "D trains=True"]
    g_step = ["G randomize_noise=True grad=True trains=True styles=1", "D trains=False"]
    iterations = 1 + 1 + 2  # the first call, the steady-state step, the repeats (warmup 1)
    assert len(calls) == iterations * 5
    for i in range(iterations):
        got = [c.replace("styles=2", "styles=1") for c in calls[5 * i: 5 * i + 5]]  # mixing: 1 or 2 styles
        assert got == d_step + g_step, calls[5 * i: 5 * i + 5]


def test_reference_user_errors(tmp_path, monkeypatch):
    import importlib.util
    from tf_cartoon import cli, reference_timing
    with pytest.raises(cli.UsageError, match="--reference .*no model.py"):
        bench.check_reference_flags(bench.Config(reference=str(tmp_path)))
    (tmp_path / "model.py").write_text("")
    for bad, match in ((dict(channels_small=True), "channels_small"), (dict(what="swap"), "--what swap")):
        with pytest.raises(cli.UsageError, match=match):
            bench.check_reference_flags(bench.Config(reference=str(tmp_path), **bad))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    with pytest.raises(cli.UsageError, match="--reference: torch is not installed"):
        reference_timing.check_reference(str(tmp_path))


def test_reference_without_the_interface_is_a_usage_error(tmp_path, monkeypatch):
    from tf_cartoon import cli
    ref, _ = _fake_reference(tmp_path, monkeypatch, model="import torch\n\n\nclass Generator:\n    pass\n")
    with pytest.raises(cli.UsageError, match="model.py defines no Discriminator"):
        bench.measure_reference(bench.Config(reference=str(ref), **REF_TINY), "g_forward")


def test_cli_reference_error_is_one_line(tmp_path):
    args = [sys.executable, "-m", "tf_cartoon.bench", "--reference", str(tmp_path / "nowhere")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"error: --reference {tmp_path / 'nowhere'}: no model.py there "
                                               f"(expected a rosinality/stylegan2-pytorch checkout)"]


@pytest.mark.slow
def test_reference_measured_for_train_step(tmp_path, monkeypatch):
    ref, log = _fake_reference(tmp_path, monkeypatch)
    cfg = bench.Config(what="train_step", reference=str(ref), **{**REF_TINY, "repeats": 1, "warmup": 1})
    (row,) = bench.run(cfg)
    assert row["reference_source"] == "measured" and row["reference_what"] == "train_step"
    assert row["reference_ms"] == pytest.approx(row["reference_d_ms"] + row["reference_g_ms"], abs=0.2)
    # Ratios are rounded to 3 decimals: a fake reference far faster than us gives ratios near 0.001.
    assert row["speedup_vs_reference"] == pytest.approx(row["reference_ms"] / row["ms_per_batch"], rel=1e-2, abs=1e-3)
    assert row["peak_rss_vs_reference"] == pytest.approx(row["peak_rss_mb"] / 1024 / row["reference_peak_rss_gb"],
                                                         rel=1e-2, abs=1e-3)
    assert len(log.read_text().splitlines()) == 3 * 5  # first call, steady-state step, one repeat
