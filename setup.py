"""tf_cartoon's build configuration lives in pyproject.toml; this shim keeps `python setup.py ...` and
older tools working."""

from setuptools import setup

setup()
