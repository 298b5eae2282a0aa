"""The compiled ops' C++ / CUDA sources, shipped in the package as tf_cartoon.custom_ops (data, no code)."""
