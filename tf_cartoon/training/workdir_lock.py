"""One training run per workdir: an exclusive lock on ``<workdir>/train.lock``.

The lock is ``fcntl.flock`` on the file: the kernel drops it when the holder exits in any way (kill -9
included), so a crash never leaves the workdir locked. The file also holds a small JSON (pid, host, start
time) that names the holder to a second run; a run that ends normally empties it, so a JSON found under a
free lock is the trace of a process that died, and the log says its lock is taken over.

A process holds a workdir once however many Trainers it builds on it (``hold`` / ``release`` count), so a
notebook or a test may build several; the lock goes when the last one lets go or the process exits.

Where flock is unsupported (some network filesystems), the JSON alone decides: a holder on this host whose
pid is gone is taken over; a live one, or one on another host (whose liveness we cannot check), refuses.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket

from tf_cartoon.io.errors import WorkdirBusyError

log = logging.getLogger("tf_cartoon.train")

LOCK_FILE = "train.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(info: dict) -> str:
    if not info:
        return "another process (its pid is not recorded yet)"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds the workdir for this process (WorkdirBusyError if taken)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None
        self._created = False  # whether acquire made the workdir (a failed start then leaves nothing behind)

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, info: dict) -> WorkdirBusyError:
        return WorkdirBusyError(f"{self.workdir} is in use by another training run ({_describe(info)}; lock "
                                f"{self.path}); wait for it to end or stop it before starting another run here")

    def acquire(self) -> None:
        import fcntl

        self._created = not os.path.isdir(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        host = socket.gethostname()
        flocked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(self._read()) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            flocked = False  # no flock here: the JSON alone decides
        previous = self._read()
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == host
            dead = same_host and not _pid_alive(int(previous.get("pid", 0) or 0))
            if not flocked and not dead:
                os.close(fd)
                raise self._busy(previous)
            log.warning("taking over the workdir lock %s left by %s, which %s", self.path, _describe(previous),
                        "is no longer running" if dead else "does not hold it any more")
        info = {"pid": os.getpid(), "host": host,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        except OSError as e:  # e.g. a full disk: the flock still holds the workdir, only the name is missing
            log.warning("cannot record this run in %s (%s)", self.path, e.strerror or e)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty lock file: this run ended normally
        except OSError:
            pass
        # A run that stopped before writing anything (e.g. a bad --ckpt) leaves no workdir it created itself.
        try:
            leave_nothing = self._created and os.listdir(self.workdir) == [LOCK_FILE]
            if leave_nothing:
                os.unlink(self.path)
        except OSError:  # the workdir went away meanwhile (e.g. a removed temporary folder)
            leave_nothing = False
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if leave_nothing:
            try:
                os.rmdir(self.workdir)
            except OSError:  # something appeared meanwhile: keep it
                pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


_HELD: dict[str, list] = {}  # realpath -> [WorkdirLock, count]: this process's holds


def hold(workdir: str) -> None:
    """Hold ``workdir`` for this process (re-entrant); WorkdirBusyError when another live process has it."""
    key = os.path.realpath(workdir)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    lock = WorkdirLock(workdir)
    lock.acquire()
    if not _HELD:
        import atexit

        atexit.register(_release_all)  # a normal exit empties the lock file: no "taking over" next time
    _HELD[key] = [lock, 1]


def release(workdir: str) -> None:
    """Undo one ``hold``; the last one unlocks."""
    key = os.path.realpath(workdir)
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        entry[0].release()
        del _HELD[key]


def _release_all() -> None:
    for lock, _ in list(_HELD.values()):
        lock.release()
    _HELD.clear()
