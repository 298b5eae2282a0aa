"""The console scripts (pyproject.toml ``[project.scripts]``): each does what ``python -m tf_cartoon.<tool>``
does, i.e. the module's ``if __name__ == "__main__"`` block: ``cli.run(main)`` (the tool's process setup,
then its exit status). bench keeps absl's ``app.run`` (a developer tool with absl flags).
"""

from __future__ import annotations

import importlib


def _run(tool: str):
    from tf_cartoon import cli

    cli.run(importlib.import_module(f"tf_cartoon.{tool}").main)


def train():
    _run("train")


def generate():
    _run("generate")


def sefa():
    _run("sefa")


def export():
    _run("export")


def project():
    _run("project")


def styleclip():
    _run("styleclip")


def evaluate():
    _run("evaluate")


def convert():
    _run("convert")


def prepare_data():
    _run("prepare_data")


def align():
    _run("align")


def toonify():
    _run("toonify")


def studio():
    _run("studio")


def bench():
    from absl import app, logging

    from tf_cartoon.bench import main

    logging.use_absl_handler()
    logging.set_stderrthreshold("info")
    app.run(main)


def gpu_bench():
    _run("gpu_bench")


def build_ops():
    from tf_cartoon.ops.build import main

    return main()


def compare():
    _run("compare")
