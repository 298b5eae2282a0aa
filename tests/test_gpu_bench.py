"""tf_cartoon.gpu_bench: its --smoke run at CPU size (every row, the CUDA-only ones marked skipped), the
reference row through a stand-in of the reference's model.py interface, the table and the flag errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tf_cartoon import gpu_bench
from tests.helpers import one_line_error, subprocess_env

# A stand-in for rosinality/stylegan2-pytorch's model.py with its interface (Generator(size, style_dim, n_mlp,
# channel_multiplier) called on a list of z as G(styles, return_latents=...) -> (NCHW image, W+ or None);
# Discriminator(size, channel_multiplier) -> [N, 1] logits): the reference row's child runs it as it runs
# the real one, in seconds.
STAND_IN = '''
import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2):
        super().__init__()
        self.size, self.n_latent = size, 4
        self.style = nn.Sequential(*[nn.Linear(style_dim, style_dim) for _ in range(n_mlp)])
        self.to_img = nn.Linear(style_dim, 3 * size * size)

    def forward(self, styles, return_latents=False):
        latent = self.style(styles[0])[:, None].repeat(1, self.n_latent, 1)
        image = torch.tanh(self.to_img(latent.mean(1))).view(-1, 3, self.size, self.size)
        return image, (latent if return_latents else None)


class Discriminator(nn.Module):
    def __init__(self, size, channel_multiplier=2):
        super().__init__()
        self.fc = nn.Linear(3 * size * size, 1)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def test_markdown_table_has_every_row_and_the_ratio_to_the_reference():
    rows = [{"row": "fp32", "device": "GPU", "precision": "fp32", "xla": False, "ops": "auto", "sec_per_kimg": 10.0,
             "images_per_s": 100.0},
            {"row": "ops_custom", "precision": "fp32", "xla": False, "ops": "custom", "skipped": "no GPU"},
            {"row": "reference", "device": "GPU", "precision": "fp32", "xla": False, "ops": "reference",
             "sec_per_kimg": 25.0, "images_per_s": 40.0}]
    lines = gpu_bench.markdown(rows).splitlines()
    assert lines[0].startswith("| row | device |") and len(lines) == 2 + len(rows)
    assert "| fp32 | GPU | fp32 | off | auto | 10.00 | 100.0 | 2.50x |" == lines[2]
    assert "no GPU" in lines[3]
    assert lines[4].endswith("| 25.00 | 40.0 |  |")


@pytest.mark.parametrize("argv,flag", [(["--rows", "fp32,fp64"], "--rows=fp32,fp64"),
                                       (["--batch", "0"], "--batch=0"),
                                       (["--kimg", "0"], "--kimg=0"),
                                       (["--reference", "/nonexistent/dir"], "--reference /nonexistent/dir")])
def test_bad_flags_are_one_line_errors_with_status_2(argv, flag, capsys):
    assert gpu_bench.main(argv) == 2
    assert flag in one_line_error(capsys)


@pytest.mark.slow
def test_smoke_runs_every_row_at_cpu_size(tmp_path):
    pytest.importorskip("torch")  # the reference row's child runs torch
    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "model.py").write_text(STAND_IN)
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "tf_cartoon.gpu_bench", "--smoke", "--reference", str(ref),
                        "--out", str(out)], env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""),
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    printed = [json.loads(line) for line in lines if line.startswith("{")]
    rows = json.loads(out.read_text())
    assert printed == rows and [row["row"] for row in rows] == list(gpu_bench.ROWS)
    by = {row["row"]: row for row in rows}
    assert by["ops_custom"]["skipped"] == "no GPU"
    for name in ("fp32", "fp16", "xla", "ops_tf", "reference"):
        row = by[name]
        assert "skipped" not in row and "error" not in row, row
        assert row["device"] == "CPU" and row["steps"] == 2 and row["size"] == 16 and row["batch"] == 4
        assert row["sec_per_kimg"] > 0 and row["images_per_s"] > 0
        assert row["sec_per_kimg"] == pytest.approx(1000 / row["images_per_s"], rel=0.02)
        assert all(isinstance(row[k], float) and abs(row[k]) < 1e3 for k in ("d_loss", "g_loss")), row
    assert by["fp16"]["precision"] == "fp16" and set(by["fp16"]["loss_scales"]) == {
        "D_main", "D_r1", "G_main", "G_path_length"}
    assert by["xla"]["xla"] is True and by["ops_tf"]["ops"] == "tf,direct"
    # then the Markdown table: a header, the separator and one line per row
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(rows) and all(f"| {name} |" in "\n".join(table) for name in gpu_bench.ROWS)
