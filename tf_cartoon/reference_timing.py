"""The bench's reference measured in the same run: rosinality/stylegan2-pytorch (the paper code's base) on the CPU.

``python -m tf_cartoon.bench --reference DIR`` starts this module as a child process (its own Python, so that
its peak RSS is torch's alone and its threads never run next to TensorFlow's):

  python -m tf_cartoon.reference_timing --reference DIR --what g_forward|train_step --size 256 --batch 4 \
      --style_dim 512 --n_mlp 8 --channel_multiplier 2 --threads 2 --repeats 3 --warmup 1 --seed 0

DIR is a checkout of rosinality/stylegan2-pytorch (or anything with its ``model.py`` interface:
``Generator(size, style_dim, n_mlp, channel_multiplier)`` called as ``G(styles, randomize_noise=...)`` ->
``(image, _)``, ``Discriminator(size, channel_multiplier)`` called as ``D(image)`` -> ``[N, 1]``). Only
``DIR/model.py`` (and what it imports from DIR) is imported, never torchvision nor TensorFlow. Its ``op/``
modules build their CUDA extensions with ``torch.utils.cpp_extension.load`` at import; that function is
replaced by a stub before the import, because on the CPU their functions run native torch code instead.

The work is the bench's (tf_cartoon.bench):

- ``g_forward``: z -> image, mapping + synthesis with the stored noise (``randomize_noise=False``), under
  ``torch.no_grad()`` (our forward is inference too);
- ``train_step``: one D step and one G step of the reference's train.py without lazy regularisation: the
  non-saturating logistic losses, style mixing with probability 0.9, fresh noise maps, Adam with train.py's
  defaults (lr 0.002 and betas (0, 0.99) scaled by the reg_every ratios 16/17 for D and 4/5 for G), the
  requires_grad switching of train.py; no EMA (the bench's train_step times D_main + G_main only).

Timing mirrors the bench: the first call is reported as ``first_call_ms`` and counts as one warm-up, then
``warmup - 1`` more (train_step: one more, as the bench's steady-state step before its memory reading), then
``repeats`` timed calls, the median reported. Prints ONE JSON line on stdout: ``ms_per_batch``, ``times_ms``,
``first_call_ms``, ``cpu_ms_per_batch``, ``peak_rss_gb`` (resource.getrusage of this process, at the end),
``threads``, ``torch_version``, ``g_params``, and ``d_ms`` / ``g_ms`` for train_step. A user error (DIR
without model.py, no torch, a model.py without the interface) is one ``error:`` line naming --reference and
exit status 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import resource
import statistics
import sys
import time

from tf_cartoon import cli

WHAT = ("g_forward", "train_step")
# train.py's defaults (the trainer's too): mixing probability, lazy-regularisation intervals (its Adam settings
# depend on them), R1 and path-length weights, the path-length batch shrink, the learning rate.
MIXING = 0.9
G_REG_EVERY, D_REG_EVERY, LR = 4, 16, 0.002
R1, PATH_REGULARIZE, PATH_BATCH_SHRINK = 10.0, 2.0, 2
EMA_DECAY = 0.5 ** (32 / (10 * 1000))  # train.py's accumulate(): batch 32's half-life of 10k images


def check_reference(path: str) -> str:
    """The reference checkout's model.py; a UsageError naming --reference if it or torch is missing."""
    model_py = os.path.join(path, "model.py")
    if not os.path.isfile(model_py):
        raise cli.UsageError(f"--reference {path}: no model.py there (expected a rosinality/stylegan2-pytorch "
                             f"checkout)")
    if importlib.util.find_spec("torch") is None:
        raise cli.UsageError("--reference: torch is not installed (pip install torch; the reference is PyTorch code)")
    return model_py


class _NotBuilt:
    """What the stubbed ``cpp_extension.load`` returns: the CPU paths never call into it."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"the reference's compiled op {self._name!r} is not built here (CPU timing runs its "
                           f"native torch fallback)")


def _no_build(name, *args, **kwargs):
    return _NotBuilt(name)


def load_model_module(path: str, build_ops: bool = False):
    """DIR/model.py imported as ``model`` (DIR first on sys.path for its ``op`` package). Unless ``build_ops``
    (a CUDA machine, where the reference's op/ loaders build their extensions as in its own runs),
    torch.utils.cpp_extension.load is stubbed so that nothing is compiled: on the CPU the reference's op
    functions run native torch code and never call the extension."""
    model_py = check_reference(path)
    if not build_ops:
        import torch.utils.cpp_extension as cpp_extension
        cpp_extension.load = _no_build
    sys.path.insert(0, os.path.abspath(path))
    spec = importlib.util.spec_from_file_location("model", model_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    spec.loader.exec_module(module)
    for name in ("Generator", "Discriminator"):
        if not hasattr(module, name):
            raise cli.UsageError(f"--reference {path}: model.py defines no {name}")
    return module


def _requires_grad(module, flag):
    for p in module.parameters():
        p.requires_grad = flag


def mixing_noise(torch, batch, style_dim, rng: random.Random, gen=None, device=None):
    """train.py's mixing_noise: two latents with probability MIXING, else one."""
    n = 2 if rng.random() < MIXING else 1
    return list(torch.randn(n, batch, style_dim, generator=gen, device=device).unbind(0))


def reference_optimizers(torch, g, d):
    """train.py's Adam pair: learning rate and betas scaled for the lazy-regularisation intervals."""
    g_ratio, d_ratio = G_REG_EVERY / (G_REG_EVERY + 1), D_REG_EVERY / (D_REG_EVERY + 1)
    return (torch.optim.Adam(g.parameters(), lr=LR * g_ratio, betas=(0.0, 0.99 ** g_ratio)),
            torch.optim.Adam(d.parameters(), lr=LR * d_ratio, betas=(0.0, 0.99 ** d_ratio)))


def reference_d_step(torch, g, d, d_optim, real, noise, r1_due: bool = False) -> float:
    """train.py's D step (its order and maths, our code): the logistic loss on real and fake images, then, when
    ``r1_due``, its lazy R1 step (weight R1 / 2 * D_REG_EVERY). ``noise()`` draws the styles."""
    F = torch.nn.functional
    _requires_grad(g, False)
    _requires_grad(d, True)
    fake = g(noise())[0]
    loss = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
    d.zero_grad()
    loss.backward()
    d_optim.step()
    if r1_due:
        real.requires_grad = True
        real_pred = d(real)
        (grad,) = torch.autograd.grad(real_pred.sum(), real, create_graph=True)
        r1 = grad.pow(2).reshape(real.shape[0], -1).sum(1).mean()
        d.zero_grad()
        (R1 / 2 * r1 * D_REG_EVERY + 0 * real_pred[0]).backward()
        d_optim.step()
        real.requires_grad = False
    return float(loss.detach())


def reference_g_step(torch, g, d, g_optim, noise, batch: int, path_state: dict | None = None) -> float:
    """train.py's G step: the non-saturating loss, then, with ``path_state`` (holding ``mean_path_length``), its
    lazy path-length step on batch / PATH_BATCH_SHRINK (weight PATH_REGULARIZE * G_REG_EVERY).
    ``noise(n)`` draws the styles of n images."""
    F = torch.nn.functional
    _requires_grad(g, True)
    _requires_grad(d, False)
    fake = g(noise(batch))[0]
    loss = F.softplus(-d(fake)).mean()
    g.zero_grad()
    loss.backward()
    g_optim.step()
    if path_state is not None:
        fake, latents = g(noise(max(1, batch // PATH_BATCH_SHRINK)), return_latents=True)
        y = torch.randn_like(fake) / (fake.shape[2] * fake.shape[3]) ** 0.5
        (grad,) = torch.autograd.grad((fake * y).sum(), latents, create_graph=True)
        lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
        mean = path_state["mean_path_length"] + 0.01 * (lengths.mean() - path_state["mean_path_length"])
        penalty = (lengths - mean).pow(2).mean()
        path_state["mean_path_length"] = mean.detach()
        g.zero_grad()
        (PATH_REGULARIZE * G_REG_EVERY * penalty + 0 * fake[0, 0, 0, 0]).backward()
        g_optim.step()
    return float(loss.detach())


def reference_ema(torch, g_ema, g) -> None:
    """train.py's accumulate(g_ema, g, EMA_DECAY)."""
    with torch.no_grad():
        for e, p in zip(g_ema.parameters(), g.parameters()):
            e.mul_(EMA_DECAY).add_(p.detach(), alpha=1 - EMA_DECAY)


def _g_forward(torch, model, a):
    g = model.Generator(a.size, a.style_dim, a.n_mlp, channel_multiplier=a.channel_multiplier).eval()
    z = torch.randn(a.batch, a.style_dim, generator=torch.Generator().manual_seed(a.seed))

    def forward():
        with torch.no_grad():
            return g([z], randomize_noise=False)[0]

    return g, {"model": forward}


def _train_step(torch, model, a):
    """One D step and one G step without lazy regularisation or EMA (what bench's train_step times of ours)."""
    g = model.Generator(a.size, a.style_dim, a.n_mlp, channel_multiplier=a.channel_multiplier)
    d = model.Discriminator(a.size, channel_multiplier=a.channel_multiplier)
    g_optim, d_optim = reference_optimizers(torch, g, d)
    gen = torch.Generator().manual_seed(a.seed)
    rng = random.Random(a.seed)
    real = torch.rand(a.batch, 3, a.size, a.size, generator=gen) * 2 - 1

    def noise(n=a.batch):
        return mixing_noise(torch, n, a.style_dim, rng, gen)

    return g, {"d": lambda: reference_d_step(torch, g, d, d_optim, real, noise),
               "g": lambda: reference_g_step(torch, g, d, g_optim, noise, a.batch)}


def measure(a) -> dict:
    """The reference's timing of ``a.what`` (module docstring); ``a`` has the parser's fields."""
    model = load_model_module(a.reference)
    import torch
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g, fns = (_g_forward if a.what == "g_forward" else _train_step)(torch, model, a)

    def call_all():
        for fn in fns.values():
            fn()

    t0 = time.perf_counter()
    call_all()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(a.warmup - 1, 0) + (a.what == "train_step")):
        call_all()
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(max(1, a.repeats)):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    ms = {name: statistics.median(t) for name, t in times.items()}
    out = {"what": a.what, "size": a.size, "batch": a.batch, "ms_per_batch": round(sum(ms.values()), 3),
           "times_ms": [round(sum(r), 1) for r in zip(*times.values())], "first_call_ms": round(first_ms, 1),
           "cpu_ms_per_batch": round(sum(statistics.median(c) for c in cpu.values()), 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
           "threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "g_params": sum(p.numel() for p in g.parameters()), "repeats": a.repeats, "warmup": a.warmup}
    if a.what == "train_step":
        out.update(d_ms=round(ms["d"], 1), g_ms=round(ms["g"], 1))
    return out


def argv_for(reference, what, size, batch, style_dim, n_mlp, channel_multiplier, threads, repeats, warmup, seed):
    """The command-line arguments of this module for one measurement (what tf_cartoon.bench passes)."""
    return ["--reference", reference, "--what", what, "--size", str(size), "--batch", str(batch),
            "--style_dim", str(style_dim), "--n_mlp", str(n_mlp), "--channel_multiplier", str(channel_multiplier),
            "--threads", str(threads), "--repeats", str(repeats), "--warmup", str(warmup), "--seed", str(seed)]


def build_parser():
    p = cli.parser("python -m tf_cartoon.reference_timing", __doc__)
    p.add_argument("--reference", required=True, help="a rosinality/stylegan2-pytorch checkout (its model.py)")
    p.add_argument("--what", choices=WHAT, default="g_forward", help="the work timed (tf_cartoon.bench's)")
    for name, default in (("size", 256), ("batch", 4), ("style_dim", 512), ("n_mlp", 8), ("channel_multiplier", 2),
                          ("repeats", 3), ("warmup", 1), ("seed", 0)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"as tf_cartoon.bench's --{name}")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    return p


@cli.command(setup="none")
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    print(json.dumps(measure(a)), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
