"""Build the compiled ops (``custom_ops/``) into one shared library, cached by content.

  python -m tf_cartoon.ops.build                 # build (or reuse) the library for this machine
  python -m tf_cartoon.ops.build --cuda on       # with the CUDA kernels (needs nvcc)
  python -m tf_cartoon.ops.build --cuda_check    # compile the CUDA sources only (no GPU needed)

The library is ``<cache>/<hash>/tf_cartoon_ops.so`` where ``<cache>`` is
``$TF_CARTOON_OPS_CACHE`` or ``~/.cache/tf_cartoon/ops`` and ``<hash>`` covers the
sources, every compiler and linker flag, the compilers' identities and the TensorFlow
version: any change gives a new directory, an unchanged setup reuses the old one.
A build runs in a temporary directory next to its target and is renamed into place
(atomic), so concurrent builds and interrupted ones never leave a half-written library.

Compilers: ``$TF_CARTOON_CXX`` (else ``$CXX``, else ``g++`` / ``c++`` on PATH) with
``tf.sysconfig.get_compile_flags()`` / ``get_link_flags()`` (C++17 and TF's
``_GLIBCXX_USE_CXX11_ABI``); ``$TF_CARTOON_NVCC`` (else ``nvcc`` on PATH, else
``/usr/local/cuda/bin/nvcc``). ``cuda="auto"`` adds the CUDA kernels when nvcc exists
AND TensorFlow sees a GPU; their targets are the visible GPUs' compute capabilities,
or (no GPU) a list of common ones that this nvcc supports. The .cu files include no
TensorFlow headers, so nvcc's CUDA version need not match TensorFlow's; the CUDA
runtime is linked statically.

``TF_CARTOON_OPS_BUILD=1`` builds (or reuses) the library when ``tf_cartoon.ops`` is
imported. Without a compiler, building raises :class:`CompilerNotFound` (one clear
line) and ``impl="auto"`` keeps the pure-TF ops (tf_cartoon/ops/dispatch.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIB_NAME = "tf_cartoon_ops.so"
META_NAME = "build.json"
# Bump when the way the library is built changes in a way the hash would not see.
BUILD_FORMAT = 1
CXX_SOURCES = ("upfirdn2d.cc", "bias_act.cc")
CUDA_SOURCES = ("upfirdn2d.cu", "bias_act.cu")
CXX_OPT_FLAGS = ("-O3", "-march=native", "-fPIC", "-DNDEBUG", "-Wno-deprecated-declarations",
                 "-Wno-interference-size", "-Wno-ignored-attributes")
# Targets when no GPU is visible: common data-centre / desktop GPUs (those this nvcc knows).
DEFAULT_CUDA_ARCHS = ("75", "80", "86", "89", "90")


class BuildError(RuntimeError):
    """The library could not be built (the message says why, in one paragraph)."""


class CompilerNotFound(BuildError):
    """No usable C++ compiler (or no nvcc where CUDA was required)."""


def source_dir() -> Path:
    """``$TF_CARTOON_OPS_SRC`` or the shipped sources (``tf_cartoon.custom_ops``: the repository's
    ``custom_ops/``, packaged into every installation; see tf_cartoon/resources.py)."""
    from tf_cartoon.resources import custom_ops_dir

    d = Path(os.environ.get("TF_CARTOON_OPS_SRC") or custom_ops_dir())
    missing = [n for n in CXX_SOURCES + CUDA_SOURCES + ("tf_cartoon_ops.h",) if not (d / n).is_file()]
    if missing:
        raise BuildError(f"custom op sources not found: {', '.join(str(d / m) for m in missing)} "
                         "(set TF_CARTOON_OPS_SRC to the custom_ops/ directory of a tf_cartoon checkout)")
    return d


def cache_root() -> Path:
    return Path(os.environ.get("TF_CARTOON_OPS_CACHE") or Path.home() / ".cache" / "tf_cartoon" / "ops")


def find_cxx() -> str:
    """The C++ compiler to use, or CompilerNotFound naming what was tried."""
    for var in ("TF_CARTOON_CXX", "CXX"):
        want = os.environ.get(var)
        if want:
            found = shutil.which(want)
            if not found:
                raise CompilerNotFound(f"no C++ compiler: {var}={want} does not exist or is not executable; "
                                       "point it at g++ / clang++ (or unset it). The pure-TF ops are used meanwhile.")
            return found
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise CompilerNotFound("no C++ compiler found (tried TF_CARTOON_CXX, CXX, g++, c++, clang++ on PATH); "
                           "install g++ or set TF_CARTOON_CXX. The pure-TF ops are used meanwhile.")


def find_nvcc() -> str | None:
    want = os.environ.get("TF_CARTOON_NVCC")
    if want:
        return shutil.which(want)
    return shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")


def _version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise CompilerNotFound(f"compiler {exe} does not run: {e}") from None


def _cpu_model() -> str:
    """Part of the key because the library is built with -march=native."""
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags") and key not in found:
                    found[key] = line.strip()
    except OSError:
        pass
    return " | ".join(found.values()) or platform.processor() or platform.machine()


def visible_gpu_archs() -> list[str]:
    """Compute capabilities ("80", "90", ...) of the GPUs TensorFlow sees (empty: none)."""
    import tensorflow as tf
    archs = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cc:
            archs.append(f"{cc[0]}{cc[1]}")
    return sorted(set(archs))


def nvcc_archs(nvcc: str) -> set[str]:
    """Virtual architectures this nvcc can target (``nvcc --list-gpu-arch``)."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {a.split("_", 1)[1] for a in out.split() if a.startswith("compute_")}


@dataclasses.dataclass
class Plan:
    """Everything that determines the library's bytes (and hence the cache key)."""
    src: Path
    cxx: str
    cxx_version: str
    cxx_flags: list
    link_flags: list
    nvcc: str | None = None
    nvcc_version: str = ""
    nvcc_flags: list = dataclasses.field(default_factory=list)
    cuda_archs: list = dataclasses.field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.nvcc is not None

    def key(self) -> str:
        import tensorflow as tf
        h = hashlib.sha256()
        for name in sorted(os.listdir(self.src)):
            p = self.src / name
            if p.is_file() and p.suffix in (".cc", ".cu", ".h"):
                h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
        ident = {"format": BUILD_FORMAT, "cxx": self.cxx, "cxx_version": self.cxx_version,
                 "cxx_flags": self.cxx_flags, "link_flags": self.link_flags, "nvcc": self.nvcc,
                 "nvcc_version": self.nvcc_version, "nvcc_flags": self.nvcc_flags, "cuda_archs": self.cuda_archs,
                 "tf": tf.__version__, "tf_git": tf.version.GIT_VERSION, "cpu": _cpu_model(),
                 "python": sys.version_info[:2]}
        h.update(json.dumps(ident, sort_keys=True).encode())
        return h.hexdigest()[:20]


def plan(cuda: str = "auto", cuda_archs=None, extra_cxx_flags=()) -> Plan:
    """Resolve compilers and flags. cuda: "auto" | "on" | "off"."""
    import tensorflow as tf
    if cuda not in ("auto", "on", "off"):
        raise ValueError(f"cuda must be 'auto', 'on' or 'off', got {cuda!r}")
    src = source_dir()
    cxx = find_cxx()
    cxx_flags = list(tf.sysconfig.get_compile_flags()) + list(CXX_OPT_FLAGS) + list(extra_cxx_flags)
    p = Plan(src=src, cxx=cxx, cxx_version=_version(cxx).splitlines()[0], cxx_flags=cxx_flags,
             link_flags=list(tf.sysconfig.get_link_flags()))
    nvcc = find_nvcc() if cuda != "off" else None
    if cuda == "on" and nvcc is None:
        raise CompilerNotFound("--cuda on: no nvcc found (tried TF_CARTOON_NVCC, nvcc on PATH, "
                               "/usr/local/cuda/bin/nvcc)")
    if cuda == "auto" and (nvcc is None or not visible_gpu_archs()):
        nvcc = None  # no GPU to run them on: the CPU library is all that is needed
    if nvcc is not None:
        p.nvcc, p.nvcc_version = nvcc, _version(nvcc).splitlines()[-1]
        p.cuda_archs = list(cuda_archs) if cuda_archs else pick_cuda_archs(nvcc)
        if not p.cuda_archs:
            raise BuildError(f"{nvcc} supports none of the CUDA targets wanted "
                             f"({', '.join(visible_gpu_archs() or DEFAULT_CUDA_ARCHS)})")
        p.nvcc_flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-DNDEBUG"] + gencode_flags(p.cuda_archs)
        p.cxx_flags.append("-DTF_CARTOON_WITH_CUDA")
        p.link_flags += [f"-L{cuda_lib_dir(nvcc)}", "-l:libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
    return p


def cuda_lib_dir(nvcc: str) -> Path:
    """lib64/ of the toolkit this nvcc belongs to (nvcc may be a wrapper script elsewhere)."""
    here = None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "tf_cartoon_probe.cu"], capture_output=True, text=True,
                             timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("#$ _HERE_="):
                here = Path(line.split("=", 1)[1].strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for d in ([here.parent / "lib64"] if here else []) + [Path(nvcc).resolve().parents[1] / "lib64",
                                                           Path("/usr/local/cuda/lib64")]:
        if (d / "libcudart_static.a").is_file():
            return d
    raise BuildError(f"libcudart_static.a not found next to {nvcc} (looked in the toolkit's lib64/)")


def pick_cuda_archs(nvcc: str) -> list[str]:
    """The visible GPUs' targets, else the default list; only those this nvcc supports."""
    supported = nvcc_archs(nvcc)
    wanted = visible_gpu_archs() or list(DEFAULT_CUDA_ARCHS)
    return [a for a in wanted if not supported or a in supported]


def gencode_flags(archs) -> list[str]:
    """SASS for every target plus PTX of the newest (so newer GPUs can JIT it)."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    newest = max(archs, key=int)
    return flags + ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]


def _run_all(cmds, what: str) -> None:
    """Run the commands, as many at once as there are cores; BuildError with the first failure's errors."""
    jobs = max(1, min(len(cmds), os.cpu_count() or 1))
    pending, running = list(cmds), []
    while pending or running:
        while pending and len(running) < jobs:
            cmd = pending.pop(0)
            running.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True)))
        cmd, proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            for _, other in running:  # the rest of this build is moot
                other.kill()
                other.communicate()
            lines = out.splitlines()
            errors = [l for l in lines if "error" in l.lower()] or lines[-30:]
            raise BuildError(f"{what} failed (exit status {proc.returncode}): {' '.join(cmd)}\n" +
                             "\n".join(errors[:30]))


def _log(verbose, msg):
    if verbose:
        print(f"[tf_cartoon.ops.build] {msg}", file=sys.stderr, flush=True)


def build(cuda: str = "auto", force: bool = False, cuda_archs=None, verbose: bool = False,
          extra_cxx_flags=()) -> Path:
    """Build the library (or reuse the cached one); returns its path."""
    p = plan(cuda, cuda_archs, extra_cxx_flags)
    target = cache_root() / p.key()
    lib = target / LIB_NAME
    if lib.is_file() and (target / META_NAME).is_file() and not force:
        _log(verbose, f"cached: {lib}")
        return lib
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=cache_root()))
    try:
        t0 = time.time()
        cmds = [[p.cxx, *p.cxx_flags, f"-I{p.src}", "-c", str(p.src / s), "-o", str(tmp / (s + ".o"))]
                for s in CXX_SOURCES]
        if p.cuda:
            cmds += [[p.nvcc, *p.nvcc_flags, f"-I{p.src}", "-c", str(p.src / s), "-o", str(tmp / (s + ".o"))]
                     for s in CUDA_SOURCES]
        _log(verbose, f"compiling {len(cmds)} sources with {p.cxx}" + (f" and {p.nvcc}" if p.cuda else ""))
        _run_all(cmds, "compiling the custom ops")
        objs = sorted(str(o) for o in tmp.glob("*.o"))
        _run_all([[p.cxx, "-shared", *objs, "-o", str(tmp / LIB_NAME), *p.link_flags]], "linking the custom ops")
        meta = {"key": target.name, "cuda": p.cuda, "cuda_archs": p.cuda_archs, "cxx": p.cxx,
                "cxx_version": p.cxx_version, "nvcc": p.nvcc, "nvcc_version": p.nvcc_version,
                "cxx_flags": p.cxx_flags, "link_flags": p.link_flags, "nvcc_flags": p.nvcc_flags,
                "build_seconds": round(time.time() - t0, 1)}
        for o in objs:
            os.remove(o)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        os.chmod(tmp, 0o755)
        if force and target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)  # atomic; fails if another process finished the same build first
        except OSError:
            if not lib.is_file():
                raise
            _log(verbose, "another process built the same library meanwhile; using it")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _log(verbose, f"built {lib} in {meta['build_seconds']} s")
    return lib


def cached_library(cuda: str = "auto") -> Path | None:
    """The library this setup would build, if it is already in the cache (never compiles)."""
    p = plan(cuda)
    lib = cache_root() / p.key() / LIB_NAME
    return lib if lib.is_file() and (lib.parent / META_NAME).is_file() else None


def metadata(lib: Path) -> dict:
    return json.loads((Path(lib).parent / META_NAME).read_text())


def cuda_check(out_dir, cuda_archs=None, verbose: bool = False) -> list[Path]:
    """Compile-only check of the CUDA side (no GPU needed): nvcc compiles the .cu files to
    objects and the C++ compiler checks the op files with the GPU kernels enabled."""
    import tensorflow as tf
    src = source_dir()
    nvcc = find_nvcc()
    if nvcc is None:
        raise CompilerNotFound("no nvcc found (tried TF_CARTOON_NVCC, nvcc on PATH, /usr/local/cuda/bin/nvcc)")
    archs = list(cuda_archs) if cuda_archs else pick_cuda_archs(nvcc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cxx = find_cxx()
    objs = [out_dir / (s + ".o") for s in CUDA_SOURCES]
    cmds = [[nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", *gencode_flags(archs), f"-I{src}", "-c",
             str(src / s), "-o", str(o)] for s, o in zip(CUDA_SOURCES, objs)]
    cmds += [[cxx, *tf.sysconfig.get_compile_flags(), *CXX_OPT_FLAGS, "-DTF_CARTOON_WITH_CUDA", f"-I{src}",
              "-fsyntax-only", str(src / s)] for s in CXX_SOURCES]
    _log(verbose, f"checking the CUDA sources with {nvcc} (targets {', '.join(archs)})")
    _run_all(cmds, "compiling the CUDA sources")
    return objs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tf_cartoon.ops.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", choices=("auto", "on", "off"), default="auto",
                    help="CUDA kernels: auto = when nvcc exists and a GPU is visible")
    ap.add_argument("--cuda_archs", default="", help="comma-separated compute capabilities, e.g. 80,90")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache has the library")
    ap.add_argument("--cuda_check", metavar="DIR", default=None,
                    help="only compile the CUDA sources into DIR (compile-only check; needs nvcc, no GPU)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    archs = [a.strip().replace(".", "") for a in args.cuda_archs.split(",") if a.strip()]
    try:
        if args.cuda_check:
            objs = cuda_check(args.cuda_check, archs or None, verbose=not args.quiet)
            print("\n".join(str(o) for o in objs))
            return 0
        lib = build(args.cuda, args.force, archs or None, verbose=not args.quiet)
    except BuildError as e:
        print(f"tf_cartoon.ops.build: {e}", file=sys.stderr)
        return 2
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
