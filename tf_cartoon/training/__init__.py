"""Training: strategy setup, the step functions and the loop (see trainer.py)."""
