"""The console scripts (pyproject.toml ``[project.scripts]``): each does what ``python -m tf_cartoon.<tool>``
does, i.e. the module's ``if __name__ == "__main__"`` block, and returns the tool's exit status.

The generating tools ask for TF's pooled CPU allocator before TensorFlow runs anything, as their module
blocks do; the absl tools (train, bench) go through ``app.run``. Tools whose block only calls ``main()``
(convert, prepare_data) are console scripts of their ``main`` directly.
"""

from __future__ import annotations


def _pooled_allocator():
    from tf_cartoon import use_pooled_cpu_allocator

    use_pooled_cpu_allocator()  # before TF runs anything


def train():
    from tf_cartoon import train as tool

    tool.run()


def generate():
    _pooled_allocator()
    from tf_cartoon.generate import main

    return main()


def sefa():
    _pooled_allocator()
    from tf_cartoon.sefa import main

    return main()


def export():
    _pooled_allocator()
    from tf_cartoon.export import main

    return main()


def project():
    _pooled_allocator()
    from tf_cartoon.project import main

    return main()


def styleclip():
    _pooled_allocator()
    from tf_cartoon.styleclip import main

    return main()


def bench():
    from absl import app, logging

    from tf_cartoon.bench import main

    logging.use_absl_handler()
    logging.set_stderrthreshold("info")
    app.run(main)


def build_ops():
    from tf_cartoon.ops.build import main

    return main()
