"""Benchmarks: ``python -m tf_cartoon.bench --what g_forward --size 256 --batch 4``.

``--what export``: images/s through the exported, reloaded SavedModel (serving_default);
``--what swap``: the layer-swapping forward (source + target); see bench_export / bench_swap.
``--what ops``: the compiled ops (custom_ops/) vs XLA vs plain TF, per op and impl, then G forward /
train step with each impl; see bench_ops.

Prints ONE JSON line per measurement on stdout (logs go to stderr), e.g.

  {"what": "g_forward", "size": 256, "batch": 4, "xla": false, "fused": false,
   "ms_per_batch": ..., "images_per_s": ..., "gflops": ..., "peak_gflops": ...,
   "peak_ratio": ..., "layout": "NHWC", "device": "CPU", "onednn": false,
   "tf_version": "2.21.0", "reference_ms": 6900.0, "speedup_vs_reference": ..., ...}

``ms_per_batch`` is the median wall-clock of ``--repeats`` calls after ``--warmup``
(the first, tracing/compiling call counts as one warm-up and is reported as
``first_call_ms``); the result is forced to the host. Extra keys: ``cpu_ms_per_batch``
(process CPU time, all threads: steadier than wall-clock when other processes share
the machine), ``load_avg_1m``, ``onednn`` (whether TF runs its oneDNN kernels: TF
turns them on by default only on CPUs with AVX-512 features; ``--onednn`` sets
TF_ENABLE_ONEDNN_OPTS=1 before TF is imported).

``--all`` runs every xla x fused combination and then prints a summary line
``{"what", "best", "default", "default_is_fastest"}`` (default = the library's
default: Generator's ``fused_modconv`` default, no XLA).

Adding a benchmark: write ``fn(cfg: Config) -> list[dict]`` (use :func:`result`
for the common keys) and register it in ``WHAT``.

FLOP counting (:func:`generator_flops`): analytic, from the architecture, counted
as 2 * multiply-adds, per image, times the batch (D = style_dim, C_R = channels at R):
  mapping MLP                n_mlp * D * D
  modulation linears         D * C_in                 for every modulated conv (incl. to_rgb)
  conv1 (3x3 at 4x4)         4^2 * 9 * C_4 * C_4
  block at resolution R      (R/2)^2 * 9 * C_{R/2} * C_R   upsampling conv (transposed, stride 2:
                                                       every INPUT pixel meets all 9 taps once)
                             R^2 * 9 * C_R * C_R          3x3 conv
  to_rgb at R = 4..size      R^2 * C_R * 3                1x1 conv
256 px, default channels: 361.0 GFLOP per batch of 4 (99.9 % of it the 3x3 convs).
Not counted (all < 1 %): the FIR blurs, demodulation, noise / bias / activation,
the style-to-weight products. The fused path's zero-inserted upsampling conv does
~4x the MACs of the transposed one; it is still credited with the useful count.

``peak_gflops`` is the machine's practical peak, measured in the same process
(interleaved with the model, round by round, so both see the same load): a chain
of plain NHWC 3x3 ``tf.nn.conv2d`` (graph mode, no XLA) with the generator's own
conv shapes, each upsampling conv replaced by a 3x3 conv at its input resolution
(same MACs) followed by a nearest 2x upsample; FLOPs = 2 * those MACs, i.e. the
same as the generator's 3x3 convs. ``peak_ratio`` = gflops / peak_gflops.

``--precision fp32|bf16|auto`` (default auto: bf16 on a CPU with native bfloat16, i.e. AVX512_BF16 or AMX,
else fp32; tf_cartoon.precision) builds the networks under that Keras dtype policy (bfloat16 compute, float32
variables; the train step through TrainConfig.precision; the export computes in it behind float32 / uint8
signatures; the bare conv chain of ``peak_gflops`` runs in its compute dtype). Every row reports the
concrete ``precision``, ``compute_dtype`` (the generator's), ``cpu_bf16`` (whether this CPU computes bfloat16
natively) and ``cpu_bf16_flags`` (which of its /proc/cpuinfo flags say so). Where the CPU lacks them oneDNN
emulates bfloat16: slower than fp32, so bf16 rows there show correctness, not speed.

The reference (rosinality/stylegan2-pytorch, fp32): ``g_forward`` and ``export`` rows are compared with its G
forward, ``train_step`` rows with its D + G step (REFERENCE_WORK): ``reference_ms``, ``speedup_vs_reference`` =
reference_ms / ms_per_batch and ``reference_source``:
- ``"recorded"`` (no ``--reference``): REFERENCE_MS, measured earlier on this machine, only for its exact
  settings (256 px, batch 4, config-f);
- ``"measured"`` (``--reference DIR``, a checkout of it): the reference is timed in the SAME run, right after
  our measurement of each row (once per settings; ``--all``'s rows share it), in a child process
  (tf_cartoon.reference_timing: own Python and torch, torch.set_num_threads = our intra-op threads, the same
  architecture, warm-up and repeats). Rows add ``reference_peak_rss_gb`` (the child's peak RSS),
  ``reference_threads``, ``reference_g_params`` (equal to our ``g_params``: the same architecture),
  ``reference_first_call_ms``, ``reference_times_ms``, ``reference_d_ms`` /
  ``reference_g_ms`` (train_step), ``peak_rss_vs_reference`` (train_step: our peak RSS over its) and
  ``cpu_speedup_vs_reference`` (the ratio of process CPU times: steadier on a shared machine).
  Our process stays alive (idle) while the child runs: at 256 px train_step both are in memory at once.

Shared machine? ``--wait_idle S`` waits (up to S s per timed round) for the CPU to
be idle and reports the idle fractions seen in ``idle_before_rounds``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

from tf_cartoon import cli, precision

# Measured on this (2-core CPU) machine by the project lead with the paper's
# PyTorch code (rosinality/stylegan2-pytorch Generator, batch 4, 256 px, G forward,
# float32): about 6900 ms per batch (~52 GFLOP/s).
REFERENCE_MS = {("g_forward", 256, 4): 6900.0,
                # one full training iteration (D step + G step, no lazy regularisation)
                ("train_step", 256, 4): 108000.0}
REFERENCE_PEAK_RSS_GB = {("train_step", 256, 4): 9.1}

SMALL_CHANNELS = 16  # --channels_small: every resolution gets this many channels (tests)


def _flag(default, help: str):
    """A Config field with its flag's help text (the flags and --help are generated from these)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    what: str = _flag("g_forward", "What to benchmark.")
    size: int = _flag(256, "Image size.")
    batch: int = _flag(4, "Batch size.")
    xla: bool = _flag(False, "jit_compile the benchmarked tf.function.")
    fused: bool = _flag(False, "Fused (grouped-conv) modulated convolutions.")
    recompute: bool = _flag(False, "--what train_step: gradient checkpointing of the G and D blocks (the "
                                   "trainer's --recompute): less memory, more time.")
    repeats: int = _flag(3, "Timed repeats (the median is reported).")
    warmup: int = _flag(1, "Untimed calls first (the first one traces / compiles).")
    style_dim: int = _flag(512, "Style dimension.")
    n_mlp: int = _flag(8, "Mapping layers.")
    channel_multiplier: int = _flag(2, "Channel multiplier of the default table.")
    channels_small: bool = _flag(False, f"{SMALL_CHANNELS} channels at every resolution (tests).")
    seed: int = _flag(0, "Seed of weights and inputs.")
    wait_idle: float = _flag(0.0, "Shared machines: before each timed round wait up to this many seconds until "
                                  "the CPU is >= 85% idle (the idle fractions seen are reported).")
    ops_channels: int = _flag(64, "--what ops: channels of the op tensors [batch, size, size, C].")
    ops_model_size: int = _flag(32, "--what ops: image size of the G forward / train step per impl.")
    ops_models: str = _flag("g_forward,train_step", "--what ops: comma-separated model benchmarks to run with "
                                                    "each impl (g_forward, train_step; empty: none).")
    precision: str = _flag("auto", "Compute precision of the networks: fp32, bf16 (bfloat16 compute, float32 "
                                   "variables) or auto (bf16 on a CPU with native bfloat16, else fp32). Rows report "
                                   "the concrete one and whether the CPU has bf16.")
    reference: str = _flag("", "A rosinality/stylegan2-pytorch checkout (its model.py): measure the reference's "
                               "g_forward / train_step in the same run, in a child process right after ours "
                               "(tf_cartoon.reference_timing; needs torch). Empty: the recorded REFERENCE_MS.")

    def channels(self):
        if not self.channels_small:
            return None
        from tf_cartoon.networks import log2_size
        return {2 ** i: SMALL_CHANNELS for i in range(2, log2_size(self.size) + 1)}


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------

def generator_flops(size, style_dim=512, n_mlp=8, channel_multiplier=2, channels=None, batch=1):
    """Conv / matmul FLOPs (2 * MACs) of one generator forward z -> image (module docstring)."""
    from tf_cartoon.networks import resolve_channels
    ch = resolve_channels(size, channel_multiplier, channels)
    d = style_dim
    macs = n_mlp * d * d  # mapping
    macs += d * ch[4] * 2 + 4 * 4 * 9 * ch[4] * ch[4] + 4 * 4 * ch[4] * 3  # conv1, to_rgb1
    r = 8
    while r <= size:
        cin, cout = ch[r // 2], ch[r]
        macs += d * (cin + cout + cout)  # modulation of the up conv, the conv, to_rgb
        macs += (r // 2) ** 2 * 9 * cin * cout + r * r * 9 * cout * cout + r * r * cout * 3
        r *= 2
    return 2 * macs * batch


def discriminator_flops(size, channel_multiplier=2, channels=None, batch=1):
    """Conv / matmul FLOPs (2 * MACs) of one discriminator forward (FIR blurs not counted)."""
    from tf_cartoon.networks import resolve_channels
    ch = resolve_channels(size, channel_multiplier, channels)
    macs = size * size * 3 * ch[size]  # from-RGB 1x1
    r = size
    while r > 4:  # ResBlock at input resolution r: conv1 3x3, stride-2 conv2 3x3, stride-2 1x1 skip
        cin, cout = ch[r], ch[r // 2]
        macs += r * r * 9 * cin * cin + (r // 2) ** 2 * 9 * cin * cout + (r // 2) ** 2 * cin * cout
        r //= 2
    macs += 4 * 4 * 9 * (ch[4] + 1) * ch[4] + 16 * ch[4] * ch[4] + ch[4]  # final conv, linears
    return 2 * macs * batch


def train_step_flops(size, style_dim=512, n_mlp=8, channel_multiplier=2, channels=None, batch=1):
    """One iteration without lazy regularisation, backward counted as 2x forward:
    D step = G forward (fakes) + 3 x D on reals and fakes; G step = 3 x G + 3 x D."""
    g = generator_flops(size, style_dim, n_mlp, channel_multiplier, channels, batch)
    d = discriminator_flops(size, channel_multiplier, channels, batch)
    return (g + 2 * 3 * d) + (3 * g + 3 * d)


def conv_chain_shapes(size, channel_multiplier=2, channels=None):
    """(resolution the 3x3 conv runs at, C_in, C_out, upsample after) of the generator's 3x3 convs."""
    from tf_cartoon.networks import resolve_channels
    ch = resolve_channels(size, channel_multiplier, channels)
    shapes = [(4, ch[4], ch[4], False)]
    r = 8
    while r <= size:
        shapes += [(r // 2, ch[r // 2], ch[r], True), (r, ch[r], ch[r], False)]
        r *= 2
    return shapes


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------

def cpu_idle_fraction(window_s=0.5):
    """Fraction of the machine's CPU time idle over ``window_s`` (/proc/stat); None if unknown."""
    def read():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        i0, t0 = read()
        time.sleep(window_s)
        i1, t1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (i1 - i0) / max(t1 - t0, 1)


def wait_for_idle(max_wait_s, threshold=0.85):
    """On a shared machine: wait (at most ``max_wait_s``) until other processes leave the CPU idle."""
    deadline = time.monotonic() + max_wait_s
    idle = cpu_idle_fraction()
    while idle is not None and idle < threshold and time.monotonic() < deadline:
        idle = cpu_idle_fraction()
    return idle


def time_fns(fns, repeats, warmup, wait_idle_s=0.0):
    """Median wall-clock ms of each ``fn() -> tensors`` (forced to host), after ``warmup`` calls.

    The functions run interleaved, round after round, so that load from other
    processes on a shared machine hits all of them alike (the peak chain and the
    model see the same contention, which keeps ``peak_ratio`` meaningful).
    Also returns the median process CPU ms (all threads; less sensitive to other
    processes than wall-clock, though it counts the thread pools' spinning too).
    """
    for _ in range(warmup):
        for fn in fns.values():
            _to_host(fn())
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    idle = []
    for _ in range(max(1, repeats)):
        if wait_idle_s > 0:
            idle.append(wait_for_idle(wait_idle_s))
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            _to_host(fn())
            times[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    return ({name: statistics.median(t) for name, t in times.items()}, times,
            {name: statistics.median(t) for name, t in cpu.items()}, idle)


def _to_host(out):
    import tensorflow as tf
    for t in tf.nest.flatten(out):
        t.numpy()


def onednn_enabled():
    """Whether TF runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS; off by default on CPUs without AVX-512)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def device_name():
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return "CPU"


def peak_chain(cfg: Config):
    """(fn, FLOPs): plain NHWC 3x3 conv chain of the generator's shapes, tf.function, no XLA, in the compute
    dtype of the row's precision (a bf16 row's yardstick is oneDNN's bfloat16 convolution)."""
    import tensorflow as tf
    dtype = precision.COMPUTE_DTYPE[concrete_precision(cfg)]
    shapes = conv_chain_shapes(cfg.size, cfg.channel_multiplier, cfg.channels())
    rng = tf.random.Generator.from_seed(cfg.seed + 1)
    kernels = [tf.cast(rng.normal([3, 3, cin, cout]) / (3.0 * cin ** 0.5), dtype) for _, cin, cout, _ in shapes]
    x0 = tf.cast(rng.normal([cfg.batch, 4, 4, shapes[0][1]]), dtype)

    @tf.function(jit_compile=False, autograph=False)
    def chain(x):
        for k, (_, _, _, up) in zip(kernels, shapes):
            x = tf.nn.conv2d(x, k, 1, "SAME")
            if up:  # nearest 2x: the next conv runs at the generator's next resolution
                n, h, w, c = x.shape
                x = tf.reshape(tf.broadcast_to(x[:, :, None, :, None, :], [n, h, 2, w, 2, c]), [n, 2 * h, 2 * w, c])
        return x

    flops = sum(2 * cfg.batch * r * r * 9 * cin * cout for r, cin, cout, _ in shapes)
    return (lambda: chain(x0)), flops


def concrete_precision(cfg: Config) -> str:
    """``cfg.precision`` as the fp32 / bf16 the networks compute in here (auto: tf_cartoon.precision.resolve)."""
    return precision.resolve(cfg.precision)


def result(cfg: Config, ms, flops, peak_ms, peak_flops, **extra):
    """The common keys of one measurement (the reference's: :func:`reference_keys`)."""
    import tensorflow as tf
    from tf_cartoon import pooled_cpu_allocator_requested
    gflops = flops / ms / 1e6
    peak = peak_flops / peak_ms / 1e6
    out = {"what": cfg.what, "size": cfg.size, "batch": cfg.batch, "xla": cfg.xla, "fused": cfg.fused,
           "ms_per_batch": round(ms, 3), "images_per_s": round(cfg.batch / ms * 1e3, 4),
           "gflop_per_batch": round(flops / 1e9, 4), "gflops": round(gflops, 3), "peak_gflops": round(peak, 3),
           "peak_ratio": round(gflops / peak, 4), "peak_ms": round(peak_ms, 3), "layout": "NHWC",
           "device": device_name(), "onednn": onednn_enabled(), "tf_version": tf.__version__,
           "precision": concrete_precision(cfg), "cpu_bf16": precision.cpu_has_bf16(),
           "cpu_bf16_flags": list(precision.cpu_bf16_flags()), "repeats": cfg.repeats, "warmup": cfg.warmup,
           "load_avg_1m": round(os.getloadavg()[0], 2),
           "cpu_allocator": "bfc" if pooled_cpu_allocator_requested() else "default"}
    out.update(extra)
    out.update(reference_keys(cfg, ms, extra.get("peak_rss_mb")))
    if "reference_cpu_ms_per_batch" in out and extra.get("cpu_ms_per_batch"):
        out["cpu_speedup_vs_reference"] = round(out["reference_cpu_ms_per_batch"] / extra["cpu_ms_per_batch"], 3)
    return out


# ---------------------------------------------------------------------------------------------
# The reference (rosinality/stylegan2-pytorch): recorded, or measured in the same run
# ---------------------------------------------------------------------------------------------

# The reference's work each of our benchmarks is compared with (the export serves a G forward).
REFERENCE_WORK = {"g_forward": "g_forward", "export": "g_forward", "train_step": "train_step"}
_MEASURED_REFERENCE = {}  # this process's reference measurements, by their settings


def intra_op_threads() -> int:
    """The intra-op threads TF runs with (its default: one per schedulable core)."""
    import tensorflow as tf
    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


def check_reference_flags(cfg: Config) -> None:
    """--reference's user errors (before anything runs): a checkout with model.py, torch, comparable work."""
    from tf_cartoon import reference_timing
    reference_timing.check_reference(cfg.reference)
    if cfg.what not in REFERENCE_WORK and cfg.what != "ops":
        raise cli.UsageError(f"--reference: the reference has no --what {cfg.what} (one of "
                             f"{', '.join(sorted(REFERENCE_WORK))}, ops)")
    if cfg.channels_small:
        raise cli.UsageError("--reference: the reference builds its own channel table; drop --channels_small")


def measure_reference(cfg: Config, what: str) -> dict:
    """The reference's ``what`` (g_forward / train_step) timed by tf_cartoon.reference_timing in a child process
    (its own Python and torch, torch.set_num_threads = our intra-op threads, the same warm-up and repeats);
    once per settings in this process (``--all`` rows share it). Its one JSON line, as a dict."""
    import tf_cartoon
    from tf_cartoon import reference_timing
    threads = intra_op_threads()
    args = reference_timing.argv_for(os.path.abspath(cfg.reference), what, cfg.size, cfg.batch, cfg.style_dim,
                                     cfg.n_mlp, cfg.channel_multiplier, threads, cfg.repeats, cfg.warmup, cfg.seed)
    key = tuple(args)
    if key not in _MEASURED_REFERENCE:
        # The child imports this very tf_cartoon, whichever copy (checkout or install) the bench runs from.
        root = os.path.dirname(os.path.dirname(os.path.abspath(tf_cartoon.__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        logging.info("measuring the reference: %s", " ".join(args))
        proc = subprocess.run([sys.executable, "-m", "tf_cartoon.reference_timing", *args], env=env,
                              capture_output=True, text=True)
        lines = proc.stderr.strip().splitlines()
        for line in lines:
            logging.info("reference: %s", line)
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        if proc.returncode == cli.EXIT_USAGE:
            raise cli.UsageError(last.removeprefix("error: "))
        if proc.returncode != 0:
            raise RuntimeError(f"--reference {cfg.reference}: the reference's timing process failed: {last}")
        _MEASURED_REFERENCE[key] = json.loads(proc.stdout.strip().splitlines()[-1])
    return _MEASURED_REFERENCE[key]


def reference_keys(cfg: Config, ms: float, peak_rss_mb: float | None = None) -> dict:
    """``reference_ms`` (the reference's work of REFERENCE_WORK), ``speedup_vs_reference`` and where the number
    comes from: ``reference_source`` "measured" (``--reference``: this run, with the reference's peak RSS,
    threads, first call and timings) or "recorded" (REFERENCE_MS, only for its exact settings). With our and
    the reference's peak RSS: ``peak_rss_vs_reference``."""
    what = REFERENCE_WORK.get(cfg.what)
    if what is None:
        return {}
    if cfg.reference:
        ref = measure_reference(cfg, what)
        out = {"reference_source": "measured", "reference_what": what, "reference_ms": ref["ms_per_batch"],
               "reference_peak_rss_gb": ref["peak_rss_gb"], "reference_precision": "fp32",
               "reference_threads": ref["threads"], "reference_first_call_ms": ref["first_call_ms"],
               "reference_times_ms": ref["times_ms"], "reference_cpu_ms_per_batch": ref["cpu_ms_per_batch"],
               "reference_g_params": ref["g_params"], "reference_torch_version": ref["torch_version"],
               **{f"reference_{k}": ref[k] for k in ("d_ms", "g_ms") if k in ref}}
    else:
        key = (what, cfg.size, cfg.batch)
        if key not in REFERENCE_MS or cfg.channels_small or (cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier) \
                != (512, 8, 2):
            return {}
        out = {"reference_source": "recorded", "reference_what": what, "reference_ms": REFERENCE_MS[key]}
        if key in REFERENCE_PEAK_RSS_GB:
            out["reference_peak_rss_gb"] = REFERENCE_PEAK_RSS_GB[key]
    out["speedup_vs_reference"] = round(out["reference_ms"] / ms, 3)
    if peak_rss_mb is not None and out.get("reference_peak_rss_gb"):
        out["peak_rss_vs_reference"] = round(peak_rss_mb / 1024 / out["reference_peak_rss_gb"], 3)
    return out


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------

_MODELS = {}


def build_generator(cfg: Config):
    """Seeded random generator (cached per architecture and precision; the fused switch is set per run),
    built under the Keras dtype policy of the concrete precision (the same float32 weights in each)."""
    import keras
    from tf_cartoon.networks import Generator
    compute = concrete_precision(cfg)
    key = (cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.channels_small, cfg.seed, compute)
    if key not in _MODELS:
        keras.utils.set_random_seed(cfg.seed)
        with precision.policy(compute):
            _MODELS[key] = Generator(cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier,
                                     channels=cfg.channels())
    g = _MODELS[key]
    g.fused_modconv = cfg.fused
    return g


def count_params(model) -> int:
    """Trainable parameters: the reference's ``sum(p.numel() for p in G.parameters())`` counts the same ones
    (``g_params`` = ``reference_g_params`` says both built the same architecture)."""
    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


def bench_g_forward(cfg: Config):
    """Generator forward z -> image (mapping + W+ broadcast + synthesis, stored noise)."""
    import numpy as np
    import tensorflow as tf
    g = build_generator(cfg)
    z = tf.constant(np.random.default_rng(cfg.seed).standard_normal([cfg.batch, cfg.style_dim]), tf.float32)

    @tf.function(jit_compile=cfg.xla, autograph=False)
    def forward(z):
        return g.synthesis(g.make_wplus(z), randomize_noise=False).image

    t0 = time.perf_counter()
    image = forward(z)  # trace (+ compile)
    _to_host(image)
    first_ms = (time.perf_counter() - t0) * 1e3
    chain, peak_flops = peak_chain(cfg)
    _to_host(chain())  # trace
    # The first calls above count as one warm-up round.
    ms, times, cpu, idle = time_fns({"model": lambda: forward(z), "peak": chain}, cfg.repeats,
                                    max(cfg.warmup - 1, 0), cfg.wait_idle)
    flops = generator_flops(cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.channels(), cfg.batch)
    return [result(cfg, ms["model"], flops, ms["peak"], peak_flops, first_call_ms=round(first_ms, 1),
                   compute_dtype=g.compute_dtype, output_dtype=image.dtype.name, g_params=count_params(g),
                   cpu_ms_per_batch=round(cpu["model"], 1), peak_cpu_ms=round(cpu["peak"], 1),
                   times_ms=[round(t, 1) for t in times["model"]],
                   **({"idle_before_rounds": [round(i, 2) for i in idle if i is not None]} if idle else {}))]


def bench_train_step(cfg: Config):
    """One training iteration (D step + G step, no lazy R1 / path length) through the real Trainer in
    ``--precision`` (TrainConfig.precision), from a seeded random checkpoint of the benchmarked architecture;
    D and G parts reported too, and the compute dtype of the trainer's G."""
    import gc
    import resource
    import tempfile

    import numpy as np
    import tensorflow as tf
    from tf_cartoon.io import store
    from tf_cartoon.networks import Discriminator
    from tf_cartoon.training.config import TrainConfig
    from tf_cartoon.training.trainer import Trainer

    compute = concrete_precision(cfg)
    g = build_generator(dataclasses.replace(cfg, precision="fp32"))  # only its float32 weights are written
    d = Discriminator(cfg.size, cfg.channel_multiplier, channels=cfg.channels())
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = store.write_converted(store.Checkpoint(config={"generator": g.get_config(),
                                                              "discriminator": d.get_config()},
                                                      g_ema=g, d=d), os.path.join(tmp, "ckpt"))
        # The trainer loads its own copies: peak memory is the trainer's, not these (nor the cached G's).
        del g, d
        _MODELS.clear()
        gc.collect()
        trainer = Trainer(TrainConfig(ckpt=ckpt, data="synthetic:blobs", workdir=os.path.join(tmp, "run"),
                                      batch=cfg.batch, xla="on" if cfg.xla else "off", fused_modconv=cfg.fused,
                                      recompute=cfg.recompute, seed=cfg.seed, precision=compute),
                          tf.distribute.get_strategy() if tf.distribute.has_strategy() else None)
    real = tf.constant(np.random.default_rng(cfg.seed).uniform(-1, 1, [cfg.batch, cfg.size, cfg.size, 3]),
                       tf.float32)
    dist = trainer.strategy.experimental_distribute_values_from_function(lambda ctx: real)
    step = tf.constant(1, tf.int64)  # not a lazy-regularisation step
    d_step, g_step = trainer.phase_steps["D_main"], trainer.phase_steps["G_main"]
    t0 = time.perf_counter()
    _to_host(d_step(dist, step))
    _to_host(g_step(step))
    first_ms = (time.perf_counter() - t0) * 1e3
    _to_host(d_step(dist, step))
    _to_host(g_step(step))
    # Peak memory of training itself: taken here, after a compiled and a steady-state step and before the
    # bare conv chain below (the FLOP yardstick, not part of training) allocates its own activations.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # TF's own allocator: the peak of live tensors (variables, activations, gradients) on the device the
    # step ran on; peak RSS adds the process itself (libraries, graphs, Python) on CPU.
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    try:
        peak_tensor_mb = round(tf.config.experimental.get_memory_info(device)["peak"] / 2 ** 20, 1)
    except (ValueError, RuntimeError):  # an allocator without statistics
        peak_tensor_mb = None
    chain, peak_flops = peak_chain(cfg)
    _to_host(chain())
    ms, times, cpu, idle = time_fns({"d": lambda: d_step(dist, step), "g": lambda: g_step(step),
                                     "peak": chain}, cfg.repeats, max(cfg.warmup - 1, 0), cfg.wait_idle)
    total = ms["d"] + ms["g"]
    flops = train_step_flops(cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.channels(), cfg.batch)
    return [result(cfg, total, flops, ms["peak"], peak_flops, d_ms=round(ms["d"], 1), g_ms=round(ms["g"], 1),
                   sec_per_kimg=round(total / cfg.batch, 1), peak_rss_mb=round(peak_rss_mb, 1),
                   peak_tensor_mb=peak_tensor_mb, recompute=cfg.recompute, compute_dtype=trainer.g.compute_dtype,
                   g_params=count_params(trainer.g),
                   first_call_ms=round(first_ms, 1), cpu_ms_per_batch=round(cpu["d"] + cpu["g"], 1))]


EXPORT_TRUNCATION_SAMPLES = 4096  # the export CLI's default: the mean latent baked into the SavedModel
SWAP_LAYER = 2  # the paper demos' deepest swap (clipped to the generator's blocks)


def bench_export(cfg: Config):
    """Images/s through the exported SavedModel: tf_cartoon.export's CartoonServing for a seeded random
    generator of the benchmarked architecture, written with build_archive, reloaded with
    tf.saved_model.load and called through its ``serving_default`` signature (z, truncation_psi 0.7 ->
    uint8 images; stored noise, plain TF ops: what TF Serving runs). ``--xla`` wraps the loaded signature
    in a jit_compile tf.function (TF Serving itself runs the graph without XLA); ``--fused`` is the
    modulated-conv path traced into the export. Extra keys: export_s (trace + write), load_s, and
    g_forward_ms: the library's own forward (bench_g_forward's computation) on the same generator, timed in
    the same rounds, with export_vs_g_forward = ms_per_batch / g_forward_ms (the export's cost over the
    library's; the export adds only truncation and the uint8 conversion) and export_vs_g_forward_paired, the
    median of the rounds' own ratios (each round times both back to back: a slow stretch of a shared host hits
    both sides of a pair, so it moves this one less), with g_forward_times_ms beside times_ms."""
    import tempfile

    import numpy as np
    import tensorflow as tf
    from tf_cartoon import export as ex
    from tf_cartoon.ops import dispatch

    g = build_generator(cfg)  # in --precision: a bf16 export computes in bfloat16 behind float32 signatures
    z = tf.constant(np.random.default_rng(cfg.seed).standard_normal([cfg.batch, cfg.style_dim]), tf.float32)
    psi = tf.fill([cfg.batch], 0.7)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with dispatch.plain_ops():
            serving = ex.CartoonServing(g, truncation_samples=EXPORT_TRUNCATION_SAMPLES, seed=cfg.seed)
            ex.build_archive(serving).write_out(tmp, verbose=False)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        signature = tf.saved_model.load(tmp).signatures["serving_default"]
        load_s = time.perf_counter() - t0

        def call(z, psi):
            return signature(z=z, truncation_psi=psi)["image"]

        forward = tf.function(call, jit_compile=True, autograph=False) if cfg.xla else call
        t0 = time.perf_counter()
        _to_host(forward(z, psi))  # (+ compile)
        first_ms = (time.perf_counter() - t0) * 1e3

        @tf.function(jit_compile=cfg.xla, autograph=False)
        def library(z):  # bench_g_forward's computation, traced outside plain_ops: the library's own paths
            return g.synthesis(g.make_wplus(z), randomize_noise=False).image

        _to_host(library(z))
        chain, peak_flops = peak_chain(cfg)
        _to_host(chain())
        ms, times, cpu, idle = time_fns({"model": lambda: forward(z, psi), "g_forward": lambda: library(z),
                                         "peak": chain}, cfg.repeats, max(cfg.warmup - 1, 0), cfg.wait_idle)
    flops = generator_flops(cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.channels(), cfg.batch)
    return [result(cfg, ms["model"], flops, ms["peak"], peak_flops, signature="serving_default",
                   g_forward_ms=round(ms["g_forward"], 3),
                   export_vs_g_forward=round(ms["model"] / ms["g_forward"], 4),
                   export_vs_g_forward_paired=round(statistics.median(
                       m / g for m, g in zip(times["model"], times["g_forward"])), 4),
                   g_forward_times_ms=[round(t, 1) for t in times["g_forward"]],
                   g_forward_cpu_ms=round(cpu["g_forward"], 1),
                   export_s=round(export_s, 2), load_s=round(load_s, 2), first_call_ms=round(first_ms, 1),
                   cpu_ms_per_batch=round(cpu["model"], 1), times_ms=[round(t, 1) for t in times["model"]],
                   **({"idle_before_rounds": [round(i, 2) for i in idle if i is not None]} if idle else {}))]


def bench_swap(cfg: Config):
    """Layer swapping forward, the work of tf_cartoon.generate.swap_from_w for one swap layer: from z,
    each generator maps and broadcasts its own W+; the source's synthesis (its image and the feature
    after convs.{2L-1}), the target's own image and the target with that feature swapped in (stored
    noise). Source and target: seeded random generators of the benchmarked architecture (seeds s, s+1).
    ms_per_batch times that computation as one tf.function (``--xla``: jit_compile); ``swap_from_w_ms``
    times the library call itself (eager, numpy in and out; what ``generate --source`` runs) in the same
    rounds. FLOPs: 3 generator forwards less one mapping."""
    import numpy as np
    import tensorflow as tf
    from tf_cartoon import generate as gen

    source = build_generator(cfg)
    target = build_generator(dataclasses.replace(cfg, seed=cfg.seed + 1))
    layer = min(SWAP_LAYER, source.n_blocks)
    z = tf.constant(np.random.default_rng(cfg.seed).standard_normal([cfg.batch, cfg.style_dim]), tf.float32)

    @tf.function(jit_compile=cfg.xla, autograph=False)
    def forward(z):
        tgt_wplus = target.make_wplus(z)
        src = source.synthesis(source.make_wplus(z), randomize_noise=False, tap_layers=(layer,))
        own = target.synthesis(tgt_wplus, randomize_noise=False).image
        swapped = target.synthesis(tgt_wplus, randomize_noise=False, swap_layer=layer,
                                   swap_feature=src.features[layer]).image
        return src.image, own, swapped

    src_w, tgt_w = source.mapping(z).numpy(), target.mapping(z).numpy()

    def library():
        out = gen.swap_from_w(source, target, src_w, tgt_w, (layer,), batch=cfg.batch)
        return [tf.constant(out.swapped[layer])]

    t0 = time.perf_counter()
    _to_host(forward(z))  # trace (+ compile)
    first_ms = (time.perf_counter() - t0) * 1e3
    _to_host(library())
    chain, peak_flops = peak_chain(cfg)
    _to_host(chain())
    ms, times, cpu, idle = time_fns({"model": lambda: forward(z), "library": library, "peak": chain}, cfg.repeats,
                                    max(cfg.warmup - 1, 0), cfg.wait_idle)
    mapping_flops = 2 * cfg.n_mlp * cfg.style_dim * cfg.style_dim * cfg.batch
    flops = 3 * generator_flops(cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, cfg.channels(),
                                cfg.batch) - mapping_flops
    return [result(cfg, ms["model"], flops, ms["peak"], peak_flops, swap_layer=layer,
                   compute_dtype=target.compute_dtype, swap_from_w_ms=round(ms["library"], 3),
                   first_call_ms=round(first_ms, 1),
                   cpu_ms_per_batch=round(cpu["model"], 1), times_ms=[round(t, 1) for t in times["model"]],
                   **({"idle_before_rounds": [round(i, 2) for i in idle if i is not None]} if idle else {}))]


# ---------------------------------------------------------------------------------------------
# --what ops: compiled ops vs XLA vs plain TF
# ---------------------------------------------------------------------------------------------

OPS_IMPLS = ("custom", "xla", "tf")  # compiled op (graph) | pure-TF path under jit_compile | pure-TF path (graph)


def _op_cases(cfg: Config):
    """(name, dispatch op name, fn(x, b, impl), x shape): the ops as the networks call them (NHWC)."""
    from tf_cartoon.ops import bias_act, make_kernel, upfirdn2d
    k = make_kernel([1, 3, 3, 1])
    s, c = cfg.size, cfg.ops_channels
    return [
        ("upfirdn2d_blur", "upfirdn2d", lambda x, b, i: upfirdn2d(x, k * 4, pad=(2, 1), impl=i), (cfg.batch, s, s, c)),
        ("upfirdn2d_down2", "upfirdn2d", lambda x, b, i: upfirdn2d(x, k, down=2, pad=(1, 1), impl=i),
         (cfg.batch, s, s, c)),
        ("upfirdn2d_up2_rgb", "upfirdn2d", lambda x, b, i: upfirdn2d(x, k * 4, up=2, pad=(2, 1), impl=i),
         (cfg.batch, s // 2, s // 2, 3)),
        ("bias_act_lrelu", "bias_act", lambda x, b, i: bias_act(x, b, impl=i), (cfg.batch, s, s, c)),
    ]


def bench_ops(cfg: Config):
    """Each op (as the networks call it) with each impl, forward and forward + backward, on
    x [batch, size, size, ops_channels]: ``custom`` = the compiled op in a tf.function, ``xla`` = the pure-TF
    path in a jit_compile tf.function, ``tf`` = the pure-TF path in a tf.function. Rows
    ``{"what": "ops", "op", "pass", "impl", "ms", ...}`` (the impls timed interleaved), then (``--ops_models``)
    G forward and the train step at ``--ops_model_size`` with each impl (rows of those benchmarks plus
    ``"impl"``; ``--ops_models`` picks them), then a summary: per op the fastest impl, and what ``impl="auto"`` picks on this device
    (tf_cartoon.ops.dispatch.FAMILIES[op].prefer) next to whether the compiled op was faster than the plain-TF
    path there (auto never runs under XLA, so that is its choice)."""
    import numpy as np
    import tensorflow as tf
    from tf_cartoon.ops import custom, dispatch

    lib = custom.load(build=True)
    impls = [i for i in OPS_IMPLS if i != "custom" or lib is not None]
    device = device_name()
    rng = np.random.default_rng(cfg.seed)
    rows, table = [], {}
    for name, op, fn, shape in _op_cases(cfg):
        x = tf.constant(rng.standard_normal(shape).astype(np.float32))
        b = tf.constant(rng.standard_normal(shape[-1]).astype(np.float32))
        fns = {}
        for impl in impls:
            real = "custom" if impl == "custom" else "xla"

            def fwd(x, b, real=real):
                return fn(x, b, real)

            def fwd_bwd(x, b, real=real):
                with tf.GradientTape() as tape:
                    tape.watch([x, b])
                    y = fn(x, b, real)
                return [g for g in tape.gradient(y, [x, b], output_gradients=y) if g is not None]

            for pas, f in (("forward", fwd), ("forward_backward", fwd_bwd)):
                tf_fn = tf.function(f, jit_compile=impl == "xla", autograph=False)
                _to_host(tf_fn(x, b))  # trace (+ compile)
                fns[(pas, impl)] = (lambda tf_fn=tf_fn: tf_fn(x, b))
        for pas in ("forward", "forward_backward"):
            group = {impl: fns[(pas, impl)] for impl in impls}
            ms, times, cpu, _ = time_fns(group, cfg.repeats, max(cfg.warmup - 1, 0), cfg.wait_idle)
            for impl in impls:
                rows.append({"what": "ops", "op": name, "pass": pas, "impl": impl, "ms": round(ms[impl], 3),
                             "cpu_ms": round(cpu[impl], 1), "shape": list(shape), "size": cfg.size,
                             "batch": cfg.batch, "device": device, "tf_version": tf.__version__,
                             "repeats": cfg.repeats, "load_avg_1m": round(os.getloadavg()[0], 2)})
            table[(name, pas)] = (op, ms)
    for what in [w.strip() for w in cfg.ops_models.split(",") if w.strip()]:
        if what not in ("g_forward", "train_step"):
            raise ValueError(f"--ops_models: unknown model benchmark {what!r} (g_forward, train_step)")
        for impl in impls:
            c = dataclasses.replace(cfg, what=what, size=cfg.ops_model_size, xla=impl == "xla")
            dispatch.set_default_impl("custom" if impl == "custom" else "xla")
            try:
                for row in WHAT[what](c):
                    rows.append({**row, "impl": impl, "bench": "ops"})
            finally:
                dispatch.set_default_impl(None)
    dev = dispatch.device()
    summary = {"what": "ops", "summary": True, "device": device, "custom_available": lib is not None,
               "custom_error": custom.status()["error"], "ops": {}}
    for (name, pas), (op, ms) in table.items():
        entry = {"ms": {i: round(v, 3) for i, v in ms.items()}, "fastest": min(ms, key=ms.get),
                 "auto_picks_custom": dispatch.FAMILIES[op].prefer.get(dev) == "custom"}
        if "custom" in ms:
            entry["custom_faster_than_tf"] = ms["custom"] < ms["tf"]
        summary["ops"][f"{name}/{pas}"] = entry
    rows.append(summary)
    return rows


WHAT = {"g_forward": bench_g_forward, "train_step": bench_train_step, "export": bench_export, "swap": bench_swap,
        "ops": bench_ops}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def library_default():
    """What the library uses by default: Generator's fused_modconv default, no XLA."""
    from tf_cartoon.networks import Generator
    return {"xla": False, "fused": bool(inspect.signature(Generator.__init__).parameters["fused_modconv"].default)}


def run(cfg: Config, all_combinations=False, emit=None):
    """Run one benchmark (or all xla x fused combinations); returns the JSON-able dicts."""
    if cfg.what not in WHAT:
        raise ValueError(f"unknown --what {cfg.what!r}; one of {sorted(WHAT)}")
    emit = emit or (lambda d: None)
    combos = list(itertools.product((False, True), (False, True))) if all_combinations else [(cfg.xla, cfg.fused)]
    rows = []
    for xla, fused in combos:
        c = dataclasses.replace(cfg, xla=xla, fused=fused)
        logging.info("running %s", c)
        for row in WHAT[cfg.what](c):
            emit(row)
            rows.append(row)
    if all_combinations:
        settings = lambda r: {"xla": r["xla"], "fused": r["fused"], "ms_per_batch": r["ms_per_batch"]}
        best = min(rows, key=lambda r: r["ms_per_batch"])
        dflt = library_default()
        default = next(r for r in rows if r["xla"] == dflt["xla"] and r["fused"] == dflt["fused"])
        summary = {"what": cfg.what, "size": cfg.size, "batch": cfg.batch, "best": settings(best),
                   "default": settings(default), "default_is_fastest": best is default}
        emit(summary)
        rows.append(summary)
    return rows


FLAGS = flags.FLAGS
# The benchmark's settings (Config's fields, documented there), then the process's own flags.
cli.define_dataclass_flags(Config, FLAGS, module_name=sys.argv[0] if __name__ == "__main__" else __name__,
                           choices={"what": list(WHAT), "precision": ["auto", "fp32", "bf16"]})
flags.DEFINE_boolean("all", False, "Run every xla x fused combination, then a summary line.")
flags.DEFINE_integer("intra_threads", 0, "tf.config.threading intra-op threads (0: TF's default).")
flags.DEFINE_integer("inter_threads", 0, "tf.config.threading inter-op threads (0: TF's default).")
flags.DEFINE_boolean("onednn", None, "Set TF_ENABLE_ONEDNN_OPTS=1 (--onednn) before TensorFlow is imported; "
                     "unset: leave the environment alone (TF enables oneDNN by default only on CPUs with AVX-512).")


def main(argv):
    del argv
    cfg = cli.dataclass_from_flags(Config, FLAGS)
    try:
        if cfg.reference:
            check_reference_flags(cfg)
        _main(cfg)
    except cli.UsageError as e:
        cli.report(e)
        sys.exit(cli.EXIT_USAGE)


def _main(cfg: Config):
    if FLAGS.onednn:
        if "tensorflow" in sys.modules:
            raise RuntimeError("--onednn must be applied before TensorFlow is imported")
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    elif FLAGS.onednn is False:
        logging.warning("--noonednn: leaving TF_ENABLE_ONEDNN_OPTS as it is (%s); this bench never sets it to 0",
                        os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    # The process settings of the tool measured (before TF runs anything): the generating tools' pooled CPU
    # allocator, or the trainer's malloc arena cap.
    cli.setup_process("train" if FLAGS.what == "train_step" else "generate")
    import tensorflow as tf
    if FLAGS.intra_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_threads)
    if FLAGS.inter_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_threads)
    run(cfg, FLAGS.all, emit=lambda d: print(json.dumps(d), flush=True))


if __name__ == "__main__":
    logging.use_absl_handler()
    logging.set_stderrthreshold("info")
    app.run(main)
