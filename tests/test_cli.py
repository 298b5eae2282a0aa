"""tf_cartoon.cli: one loader, one source / target rule and one error convention for every tool.

Each bad input (missing, truncated or unsafe checkpoint, an image folder without images, a source of another
architecture, an impossible flag) must give exit status 2, exactly one stderr line starting with ``error:``
and leave the input files as they were; ``builtin:source_synthetic`` (the shipped 32 px model) must be
accepted for every checkpoint role. Tools run in-process through ``main(argv)``, plus one subprocess per tool
to show that no traceback reaches the terminal.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from tf_cartoon import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN = "builtin:source_synthetic"


# ---------------------------------------------------------------------------
# Inputs the tests write themselves
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny 16 px converted dir, its .pt, a truncated copy, an unsafe .pt, an image-less folder, a photo."""
    from PIL import Image

    from tests.tiny_models import make_tiny_checkpoint
    from tf_cartoon.io import store

    root = tmp_path_factory.mktemp("cli")
    tiny = make_tiny_checkpoint(root / "tiny16", seed=1)
    pt = str(root / "tiny16.pt")
    store.write_reference(store.load(tiny, models=("g_ema",)), pt)
    data = open(pt, "rb").read()
    truncated = root / "truncated.pt"
    truncated.write_bytes(data[:len(data) // 2])
    marker = root / "pwned"
    unsafe = root / "unsafe.pt"
    # A torch-style zip whose pickle asks for os.system (the reader refuses it; nothing runs).
    with zipfile.ZipFile(unsafe, "w", compression=zipfile.ZIP_STORED) as zf:
        payload = b"\x80\x02cos\nsystem\n" + pickle.dumps(f"touch {marker}", protocol=2)[2:-1] + b"\x85R."
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", b"little")
    empty = root / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    photo = root / "face.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(photo)
    return SimpleNamespace(root=root, tiny=tiny, pt=pt, truncated=str(truncated), unsafe=str(unsafe),
                           marker=marker, empty=str(empty), photo=str(photo), missing=str(root / "missing.pt"))


def _snapshot(*paths):
    """Bytes and mtime of every file under ``paths``."""
    out = {}
    for p in paths:
        p = str(p)
        walk = [(p, [], [""])] if os.path.isfile(p) else os.walk(p)
        for folder, _, names in walk:
            for n in names:
                f = os.path.join(folder, n) if n else folder
                out[f] = (open(f, "rb").read(), os.stat(f).st_mtime_ns)
    return out


def _one_error(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _run_main(main, argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def _subprocess(tool, argv):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", f"tf_cartoon.{tool}", *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    # TensorFlow's own start-up lines (C++ logging, not ours) may come before: the loader imports it.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


# ---------------------------------------------------------------------------
# Flags and the error wrapper
# ---------------------------------------------------------------------------

def test_role_aliases_and_parser_errors(capsys):
    p = cli.parser("prog", "doc")
    cli.add_role(p, "target", "--ckpt", required=True)
    cli.add_role(p, "source")
    a = p.parse_args(["--ckpt", "t.pt"])
    assert a.target == "t.pt" and a.source is None and cli.flag(a, "target") == "--ckpt"
    a = p.parse_args(["--target", "t.pt", "--source", "s.pt"])
    assert cli.flag(a, "target") == "--target" and cli.flag(a, "source") == "--source"
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--source", "s.pt"])
    assert e.value.code == 2
    _one_error(capsys.readouterr().err, "--target", "prog --help")


def test_command_wrapper(capsys):
    @cli.command(setup="none")
    def main(argv=None):
        kind = argv[0]
        if kind == "usage":
            raise cli.UsageError("bad\n  flag")
        if kind == "missing":
            open("/nonexistent/file")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "bug":
            raise ValueError("a bug keeps its traceback")
        return 0

    assert main(["ok"]) == 0
    assert main(["usage"]) == 2
    assert _one_error(capsys.readouterr().err) == "error: bad flag"
    assert main(["missing"]) == 2
    _one_error(capsys.readouterr().err, "/nonexistent/file")
    assert main(["interrupt"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="a bug"):
        main(["bug"])
    with pytest.raises(cli.UsageError, match="seeds"), cli.user_input():
        raise ValueError("bad seeds")


def test_run_applies_the_declared_process_setup_once(monkeypatch):
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    monkeypatch.setattr(cli, "_SETUP_DONE", set())
    arenas = []
    monkeypatch.setattr("tf_cartoon.limit_malloc_arenas", lambda: arenas.append(1) or True)

    @cli.command(setup="generate")
    def generating(argv=None):
        return 0

    @cli.command(setup="train")
    def training(argv=None):
        return 0

    assert generating([]) == 0 and "TF_CPU_ALLOCATOR_USE_BFC" not in os.environ  # a direct call: the host's choice
    for main in (generating, generating, training):
        with pytest.raises(SystemExit) as e:
            cli.run(main, [])
        assert e.value.code == 0
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true" and arenas == [1]
    assert cli._SETUP_DONE == {"generate", "train"}


def test_load_generator_names_the_flag(files):
    with pytest.raises(cli.UsageError, match="^--source: checkpoint not found: .*missing.pt"):
        cli.load_generator(files.missing, "--source")
    with pytest.raises(cli.UsageError, match="^--target: unknown built-in checkpoint 'builtin:nope'"):
        cli.load_generator("builtin:nope", "--target")
    with pytest.raises(cli.UsageError, match="^--ckpt: .*os.system") as e:
        cli.load_generator(files.unsafe, "--ckpt")
    assert isinstance(e.value.__cause__, cli.CheckpointError)
    assert not files.marker.exists()
    g = cli.load_generator(BUILTIN, "--source")
    assert g.size == 32


# ---------------------------------------------------------------------------
# builtin:source_synthetic in every checkpoint role
# ---------------------------------------------------------------------------

def test_generate_builtin_target_and_source(tmp_path, capsys):
    from tf_cartoon import generate

    rc, cap = _run_main(generate.main, ["--target", BUILTIN, "--source", BUILTIN, "--swap_layer", "2", "--seeds",
                                        "0", "--truncation", "1", "--out", tmp_path], capsys)
    assert rc == 0, cap.err
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "seed0000.png", "source", "swap_l2"]


def test_sefa_builtin_source_and_target(tmp_path, capsys):
    from tf_cartoon import sefa

    rc, cap = _run_main(sefa.main, ["--ckpt", BUILTIN, "--out", tmp_path / "f.npz", "--render", "--target", BUILTIN,
                                    "--index", "0", "--steps", "2", "--seeds", "0", "--truncation", "1",
                                    "--out_dir", tmp_path / "r"], capsys)
    assert rc == 0, cap.err
    assert os.listdir(tmp_path / "r") == ["direction_000.png"]
    with np.load(tmp_path / "f.npz") as f:
        assert str(f["ckpt"]) == BUILTIN


def test_export_builtin_target_and_source_reach_the_pair_check(files, tmp_path, capsys):
    from tf_cartoon import export

    # builtin loads in both roles: the pair check (after loading) is what refuses the 16 px partner
    for target, source in ((BUILTIN, files.tiny), (files.tiny, BUILTIN)):
        rc, cap = _run_main(export.main, ["--target", target, "--source", source, "--out", tmp_path / "e"], capsys)
        assert rc == 2
        _one_error(cap.err, "--source: source and target differ in image size")
    assert not (tmp_path / "e").exists() or not os.listdir(tmp_path / "e")


def test_project_builtin_source_and_target(files, tmp_path, capsys):
    from tf_cartoon import project

    rc, cap = _run_main(project.main, [files.photo, "--source", BUILTIN, "--target", BUILTIN, "--swap_layer", "1",
                                       "--step", "1", "--n_mean_latent", "16", "--out", tmp_path], capsys)
    assert rc == 0, cap.err
    assert sorted(os.listdir(tmp_path)) == ["face.npz", "face.png", "grid.png"]


def test_styleclip_builtin_source_and_target(tmp_path, capsys):
    from tests import tiny_clip as tc
    from tf_cartoon import styleclip

    clip_dir = tc.write_hf_folder(tmp_path / "clip", tc.tiny_hf_state(seed=1))
    rc, cap = _run_main(styleclip.main, ["--source", BUILTIN, "--target", BUILTIN, "--text", "a face", "--clip",
                                         clip_dir, "--steps", "1", "--n_alpha", "2", "--truncation", "1",
                                         "--swap_layer", "1", "--log_every", "0", "--out", tmp_path / "o"], capsys)
    assert rc == 0, cap.err
    assert sorted(os.listdir(tmp_path / "o")) == ["latents.npz", "sweep.png"]


def test_train_builtin_ckpt_and_source(files, tmp_path, capsys):
    from tf_cartoon import train

    # --ckpt builtin: loads (32 px, 3 blocks), then the flag that needs the size refuses
    rc, cap = _run_main(train.main, [f"--ckpt={BUILTIN}", "--data=synthetic:faces", f"--workdir={tmp_path / 'w'}",
                                     "--freezeG=9"], capsys)
    assert rc == 2
    _one_error(cap.err, "--freezeG=9", "32 px")
    # --source (alias of --source_ckpt) builtin: loads, then the pair check refuses the 16 px run
    rc, cap = _run_main(train.main, [f"--ckpt={files.tiny}", f"--source={BUILTIN}", "--data=synthetic:faces",
                                     f"--workdir={tmp_path / 'w'}", "--structure_loss=1"], capsys)
    assert rc == 2
    _one_error(cap.err, "--source_ckpt: source and target differ in image size: 32 vs 16")


# ---------------------------------------------------------------------------
# Bad inputs: one line, status 2, inputs unchanged
# ---------------------------------------------------------------------------

def _bad_checkpoints(files):
    return [(files.missing, "checkpoint not found"), (files.truncated, "truncated.pt"),
            (files.unsafe, "os.system")]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_bad_checkpoint_in_each_tool(files, tmp_path, capsys, which):
    from tf_cartoon import convert, export, generate, project, sefa, styleclip, train
    from tests import tiny_clip as tc

    bad, needle = _bad_checkpoints(files)[which]
    before = _snapshot(files.root)
    clip_dir = tc.write_hf_folder(tmp_path / "clip", tc.tiny_hf_state(seed=1))
    out = tmp_path / "out"
    runs = [
        (generate.main, ["--target", files.tiny, "--source", bad, "--out", out], "--source: "),
        (generate.main, ["--ckpt", bad, "--out", out], "--ckpt: "),
        (sefa.main, ["--source", bad, "--out", tmp_path / "f.npz"], "--source: "),
        (export.main, ["--target", bad, "--out", out], "--target: "),
        (project.main, [files.photo, "--source", files.tiny, "--target", bad, "--out", out], "--target: "),
        (styleclip.main, ["--source", bad, "--text", "a face", "--clip", clip_dir, "--out", out], "--source: "),
        (train.main, [f"--ckpt={bad}", "--data=synthetic:faces", f"--workdir={out}"], "--ckpt: "),
        (train.main, [f"--ckpt={files.tiny}", f"--source_ckpt={bad}", "--data=synthetic:faces",
                      f"--workdir={out}"], "--source_ckpt"),
        (convert.main, [bad, out], "SRC: "),
    ]
    if which == 0:  # train's flag check names a missing file before anything loads
        runs[-3:-1] = [(m, a, "no such file or directory") for m, a, _ in runs[-3:-1]]
    for main, argv, flag_text in runs:
        rc, cap = _run_main(main, argv, capsys)
        assert rc == 2, (main.__module__, cap.err)
        _one_error(cap.err, flag_text, needle if which else "missing.pt")
    assert _snapshot(files.root) == before
    assert not files.marker.exists()
    assert not (tmp_path / "f.npz").exists() and not (out.exists() and any(
        f.endswith((".png", ".npz", ".pb")) for _, _, fs in os.walk(out) for f in fs))


def test_incompatible_source_and_empty_data(files, tmp_path, capsys):
    from tests.tiny_models import make_tiny_checkpoint
    from tf_cartoon import generate, train

    other = make_tiny_checkpoint(tmp_path / "wide", seed=2, channels={4: 8, 8: 7, 16: 4})
    before = _snapshot(files.root, other)
    rc, cap = _run_main(generate.main, ["--target", files.tiny, "--source", other, "--swap_layer", "1",
                                        "--out", tmp_path / "o"], capsys)
    assert rc == 2
    _one_error(cap.err, "--source: cannot swap at layer 1: source has 7 channels at 8 px, target 6")
    rc, cap = _run_main(train.main, [f"--ckpt={files.tiny}", f"--source_ckpt={other}", "--structure_loss=1",
                                     "--data=synthetic:faces", f"--workdir={tmp_path / 'w'}"], capsys)
    assert rc == 2
    _one_error(cap.err, "--source_ckpt: cannot swap at layer 1")
    rc, cap = _run_main(train.main, [f"--ckpt={files.tiny}", f"--data={files.empty}",
                                     f"--workdir={tmp_path / 'w2'}"], capsys)
    assert rc == 2
    _one_error(cap.err, "--data=", "no image files found")
    assert not (tmp_path / "w2").exists()
    assert _snapshot(files.root, other) == before


@pytest.mark.parametrize("tool, argv, needle", [
    ("generate", ["--target", "TINY", "--out", "OUT", "--batch", "0"], "--batch must be >= 1"),
    ("sefa", ["--ckpt", "TINY", "--out", "x.txt"], ".npz"),
    ("export", ["--target", "TINY", "--out", "OUT", "--version", "0"], "--version"),
    ("project", ["PHOTO", "--source", "TINY", "--swap_layer", "1", "--out", "OUT"], "--swap_layer needs --target"),
    ("styleclip", ["--source", "TINY", "--text", " ", "--clip", "TINY", "--out", "OUT"], "--text is empty"),
    ("train", ["--ckpt=TINY", "--data=synthetic:faces", "--workdir=OUT", "--mixing=2"], "--mixing=2.0"),
    ("train", ["--nosuchflag"], "nosuchflag"),
    ("convert", ["TINY", "OUT", "--models", "q"], "--models"),
    ("generate", ["--out", "OUT"], "--target"),  # argparse's own errors: one line too
])
def test_impossible_flags(files, tmp_path, capsys, tool, argv, needle):
    import importlib

    main = importlib.import_module(f"tf_cartoon.{tool}").main
    sub = {"TINY": files.tiny, "OUT": str(tmp_path / "out"), "PHOTO": files.photo}
    for k, v in sub.items():
        argv = [a.replace(k, v) for a in argv]
    before = _snapshot(files.root)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits itself
        rc = e.code
    assert rc == 2
    _one_error(capsys.readouterr().err, needle)
    assert _snapshot(files.root) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# One subprocess per tool: no traceback reaches the terminal
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_subprocesses_answer_in_one_line(files, tmp_path):
    before = _snapshot(files.root)
    out = tmp_path / "out"
    _subprocess("generate", ["--target", files.tiny, "--source", files.truncated, "--out", out])
    _subprocess("sefa", ["--ckpt", files.unsafe, "--out", tmp_path / "f.npz"])
    _subprocess("export", ["--ckpt", files.missing, "--out", out])
    _subprocess("project", [files.photo, "--source", files.unsafe, "--out", out])
    _subprocess("styleclip", ["--source", files.tiny, "--text", "x", "--out", out])  # no --clip
    _subprocess("train", [f"--ckpt={files.truncated}", "--data=synthetic:faces", f"--workdir={out}"])
    # flag and data errors come before TensorFlow starts: nothing else on stderr
    err = _subprocess("train", [f"--ckpt={files.tiny}", f"--data={files.empty}", f"--workdir={out}"])
    _one_error(err, "--data=", "no image files found")
    _one_error(_subprocess("train", ["--ckpt=builtin:nope", f"--workdir={out}", "--data=synthetic:faces"]),
               "--ckpt='builtin:nope'", "builtin:source_synthetic")
    _subprocess("convert", [files.unsafe, out])
    _subprocess("prepare_data", [files.empty, out, "--size", "8"])
    after = _snapshot(files.root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, changed
    assert not out.exists(), sorted(os.listdir(out)) if out.is_dir() else out
    assert not files.marker.exists()


def test_train_flags_do_not_clash_with_other_absl_tools():
    """train keeps its flags in its own registry: a process that also imports bench (whose absl flags --batch,
    --size ... live in absl's global registry) parses train's flags alike."""
    import tf_cartoon.bench
    from tf_cartoon import train

    assert "batch" in tf_cartoon.bench.FLAGS  # bench's flags are defined in absl's global registry

    cfg = train.parse_flags(["--batch=8", "--size=32", "--source=builtin:source_synthetic"])
    assert (cfg.batch, cfg.size, cfg.source_ckpt) == (8, 32, "builtin:source_synthetic")
    from tf_cartoon.training.config import TrainConfig

    assert train.parse_flags([]).batch == TrainConfig().batch  # every parse starts from the defaults
