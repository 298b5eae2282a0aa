"""The errors every checkpoint reader raises: one family, so that every tool answers them alike.

Each message names the file (and the key or global where there is one); the command-line tools print it as
one ``error: ...`` line and exit with status 2. This module imports neither numpy nor TensorFlow.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be used as given (the message names the file and the reason)."""


class CheckpointFormatError(CheckpointError):
    """The file is not a readable checkpoint of a known format (missing, truncated, corrupt, malformed)."""


class UnsafePickleError(CheckpointError):
    """The file's pickle asks for something outside the allow-list (nothing from it was executed)."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the network: missing / unexpected keys or wrong shapes."""


class UnsupportedNetworkError(CheckpointError):
    """The file holds a network our architecture cannot represent (e.g. StyleGAN3, a conditional model)."""


# Storage and processes: errors of a run rather than of a file's contents. OSError subclasses, so that every
# tool that already reports OSError in one line (exit 2) reports these alike.

class StorageError(OSError):
    """A write failed (full disk, quota, I/O error); the message says what was written and what is intact."""


class WorkdirBusyError(OSError):
    """Another live process holds the workdir's lock (the message names it: pid, host, start time)."""
