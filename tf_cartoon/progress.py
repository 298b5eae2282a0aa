"""Progress of the long-running commands: counts with rate and ETA, and timed stages, on stderr.

    progress = Progress("rendering", len(seeds), unit="images", quiet=args.quiet)
    for ...:
        progress.update(done)
    progress.finish()

    with stage("tracing the signatures", quiet=args.quiet):
        archive.write_out(...)

On a terminal the progress line is rewritten in place; on anything else (a log file, a pipe, CI) a plain
line is written every ``interval`` seconds (30) and at the end, so logs stay readable. ``quiet`` writes
nothing. A task that fails leaves no half line: the tool's one ``error:`` line follows on its own.
Everything goes to stderr: stdout keeps each tool's results (some print JSON there).
Standard library only, so every tool can import it before TensorFlow starts.
"""

from __future__ import annotations

import contextlib
import sys
import time

LOG_INTERVAL = 30.0  # seconds between plain progress lines when the stream is not a terminal


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """A counted task: ``label: done/total unit (percent), rate/s, ETA`` (total None: no percent, no ETA).

    update(done) sets the count, advance(n) adds to it, finish() writes the last line; ``extra`` text
    (e.g. a loss) is appended to the line."""

    def __init__(self, label: str, total: int | None, stream=None, interval: float = LOG_INTERVAL,
                 unit: str = "images", quiet: bool = False):
        self.label, self.total, self.unit = label, (int(total) if total is not None else None), unit
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = bool(quiet)
        self.tty = is_terminal(self.stream)
        self.start = self.last = time.monotonic()
        self.interval = float(interval)
        self.done = 0
        self.extra = ""
        self.finished = False

    def line(self, done: int | None = None) -> str:
        done = self.done if done is None else done
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            text += f" ({100 * done // self.total}%)"
        text += f", {rate:.1f}/s"
        if self.total and rate > 0 and done < self.total:
            text += f", ETA {_duration((self.total - done) / rate)}"
        elif done and (self.total is None or done >= self.total):
            text += f", {_duration(elapsed)}"
        return text + (f"; {self.extra}" if self.extra else "")

    def update(self, done: int, extra: str | None = None) -> None:
        self.done = int(done)
        if extra is not None:
            self.extra = extra
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
        elif now - self.last >= self.interval:
            print(self.line(), file=self.stream, flush=True)
            self.last = now

    def write(self, message: str) -> None:
        """A log line while the task runs: on a terminal it goes above the progress line, which is redrawn."""
        if self.quiet:
            return
        if self.tty and not self.finished:
            self.stream.write("\r\033[K" + message + "\n" + self.line() + "\033[K")
            self.stream.flush()
        else:
            print(message, file=self.stream, flush=True)

    def advance(self, n: int = 1, extra: str | None = None) -> None:
        self.update(self.done + int(n), extra)

    def finish(self, done: int | None = None, extra: str | None = None) -> None:
        """The final line (once; a second call writes nothing)."""
        if done is not None:
            self.done = int(done)
        if extra is not None:
            self.extra = extra
        if self.quiet or self.finished:
            self.finished = True
            return
        self.finished = True
        if self.tty:
            self.stream.write("\r" + self.line() + "\033[K\n")
        else:
            print(self.line(), file=self.stream)
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.finish()
        elif self.tty and not self.quiet:
            self.stream.write("\r\033[K")  # the error is reported on its own line
            self.stream.flush()


@contextlib.contextmanager
def stage(label: str, quiet: bool = False, stream=None):
    """A step without a count (a mean latent, tracing, writing): on a terminal ``label ...`` while it runs,
    replaced by ``label: 12.3s``; elsewhere only that end line. A stage that raises leaves no line (its
    error is reported on its own, as the one ``error:`` line of a tool)."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        yield
        return
    tty = is_terminal(stream)
    start = time.monotonic()
    if tty:
        stream.write(f"{label} ...")
        stream.flush()
    ok = False
    try:
        yield
        ok = True
    finally:
        end = f"{label}: {_duration(time.monotonic() - start)}\n" if ok else ""
        stream.write(("\r" + end.rstrip("\n") + "\033[K" + ("\n" if ok else "")) if tty else end)
        stream.flush()
