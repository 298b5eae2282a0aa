"""tf_cartoon.progress: rate / ETA lines on a non-terminal stream, in-place lines on a terminal, quiet, stages."""

from __future__ import annotations

import io
import re

import pytest

from tf_cartoon import progress as pg


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_with_rate_and_eta_when_not_a_terminal(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(pg.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    p = pg.Progress("rendering", 10, stream=stream, interval=1.0, unit="images")
    now[0] = 102.0
    p.update(2)  # 2 images in 2 s: 1.0/s, 8 left
    now[0] = 102.5
    p.update(3)  # within the interval: no line
    now[0] = 104.0
    p.update(4, extra="loss 0.5")
    now[0] = 110.0
    p.finish(10)
    lines = stream.getvalue().splitlines()
    assert lines == ["rendering: 2/10 images (20%), 1.0/s, ETA 8.0s",
                     "rendering: 4/10 images (40%), 1.0/s, ETA 6.0s; loss 0.5",
                     "rendering: 10/10 images (100%), 1.0/s, 10.0s; loss 0.5"]
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()


def test_log_lines_are_spaced_by_the_interval():
    stream = io.StringIO()
    p = pg.Progress("steps", 1000, stream=stream, unit="steps")  # 30 s interval: nothing within this test
    for i in range(1, 1000):
        p.update(i)
    assert stream.getvalue() == ""
    p.finish(1000)
    p.finish(1000)  # once only
    (line,) = stream.getvalue().splitlines()
    assert re.fullmatch(r"steps: 1000/1000 steps \(100%\), [\d.]+/s, [\d.]+s", line), line


def test_terminal_rewrites_one_line():
    stream = Terminal()
    with pg.Progress("frames", 3, stream=stream, unit="frames") as p:
        for _ in range(3):
            p.advance()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert text.split("\r")[-1].startswith("frames: 3/3 frames")


def test_messages_go_above_the_terminal_line():
    stream = Terminal()
    p = pg.Progress("steps", 4, stream=stream, unit="steps")
    p.update(1)
    p.write("step 1/4: loss 0.3")
    p.finish(4)
    # what stays on the screen: each line's text after its last carriage return, without the erase codes
    shown = [line.split("\r")[-1].replace("\033[K", "") for line in stream.getvalue().split("\n")]
    assert shown[0] == "step 1/4: loss 0.3" and shown[1].startswith("steps: 4/4 steps") and shown[2] == ""
    plain = io.StringIO()
    pg.Progress("steps", 4, stream=plain).write("a message")
    assert plain.getvalue() == "a message\n"


def test_quiet_writes_nothing():
    for stream in (io.StringIO(), Terminal()):
        p = pg.Progress("x", 5, stream=stream, interval=0.0, quiet=True)
        p.update(1)
        p.finish(5)
        with pg.stage("tracing", quiet=True, stream=stream):
            pass
        assert stream.getvalue() == ""


def test_unknown_total_has_no_eta():
    stream = io.StringIO()
    p = pg.Progress("batches", None, stream=stream, interval=0.0, unit="batches")
    p.update(3)
    assert stream.getvalue().startswith("batches: 3 batches, ") and "ETA" not in stream.getvalue()


def test_stage_lines():
    stream = io.StringIO()
    with pg.stage("mean latent", stream=stream):
        pass
    assert re.fullmatch(r"mean latent: [\d.]+s\n", stream.getvalue())
    stream = Terminal()
    with pg.stage("tracing", stream=stream):
        pass
    assert re.fullmatch(r"tracing \.\.\.\rtracing: [\d.]+s\033\[K\n", stream.getvalue())


def test_a_failed_stage_or_task_leaves_no_line():
    for stream in (io.StringIO(), Terminal()):
        with pytest.raises(KeyError):
            with pg.stage("tracing", stream=stream):
                raise KeyError("x")
        with pytest.raises(KeyError):
            with pg.Progress("steps", 3, stream=stream, unit="steps") as p:
                p.update(1)
                raise KeyError("x")
        shown = [line.split("\r")[-1].replace("\033[K", "") for line in stream.getvalue().split("\n")]
        assert shown == [""], stream.getvalue()


def test_durations():
    assert [pg._duration(s) for s in (0.04, 59.9, 61, 3599, 3600 * 5 + 61)] == ["0.0s", "59.9s", "1m01s",
                                                                                "59m59s", "5h01m"]
