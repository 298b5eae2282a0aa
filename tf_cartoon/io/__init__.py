"""Checkpoint input/output helpers (no TensorFlow or PyTorch needed here)."""
