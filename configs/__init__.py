"""The training flagfiles, shipped in the package as tf_cartoon.configs (data, no code)."""
