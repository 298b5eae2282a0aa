"""tf_cartoon.studio: the callbacks against generate / sefa's command lines, the HTTP layer, the command's
errors, and (slow tier) the page in a real headless chromium: it loads, a slider shows a new image, an upload
returns a cartoon."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import tf_cartoon
from tf_cartoon import generate as gen
from tf_cartoon import sefa
from tf_cartoon import studio as st
from tf_cartoon.images import to_uint8
from tests.helpers import REFERENCE_PT, REFERENCE_TARGET_PT, one_line_error, subprocess_env

N_MEAN = 64  # truncation_samples: small keeps the tests quick


@pytest.fixture(scope="module")
def pair(ckpts):
    source, target = (tf_cartoon.load(p, models=("g_ema",)).g_ema for p in ckpts)
    return source, target


@pytest.fixture(scope="module")
def studio(pair):
    return st.Studio(*pair, truncation_samples=N_MEAN, toonify_steps=10, source_name="src", target_name="tgt")


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _decode(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))).convert("RGB"))


# ---------------------------------------------------------------------------
# The callbacks
# ---------------------------------------------------------------------------

def test_draw_is_what_generate_writes(studio, ckpts, tmp_path):
    src, tgt = ckpts
    out = tmp_path / "gen"
    assert gen.main(["--target", tgt, "--source", src, "--seeds", "3", "--truncation", "0.6", "--swap_layer", "1",
                     "--truncation_samples", str(N_MEAN), "--out", str(out), "--precision", "fp32"]) == 0
    panels = studio.draw(3, 0.6, 1)  # the studio's generators compute in float32 (the fixture)
    assert [label for label, _ in panels] == ["source", "target", "swapped (l=1, 8 px)"]
    for (_, image), path in zip(panels, ["source/seed0003.png", "seed0003.png", "swap_l1/seed0003.png"]):
        assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
        np.testing.assert_array_equal(image, _png(out / path))
    other = studio.draw(4, 0.6, 1)
    assert not np.array_equal(other[1][1], panels[1][1])  # another seed, another face


def test_sefa_is_what_sefa_renders(studio, ckpts, tmp_path):
    src, tgt = ckpts
    assert sefa.main(["--source", src, "--render", "--target", tgt, "--index", "2", "--degrees", "4", "--steps", "3",
                      "--seeds", "5", "--truncation", "0.7", "--truncation_samples", str(N_MEAN), "--swap_layer", "2",
                      "--out", str(tmp_path / "f.npz"), "--out_dir", str(tmp_path), "--precision", "fp32"]) == 0
    grid = _png(tmp_path / "direction_002.png")  # one row; columns -4, 0, +4; each cell source | target | swap
    assert grid.shape == (16, 3 * 3 * 16, 3)
    for col, strength in enumerate([-4.0, 0.0, 4.0]):
        cell = np.concatenate([image for _, image in studio.sefa(5, 2, strength, 0.7, 2)], axis=1)
        np.testing.assert_array_equal(cell, grid[:, col * 48:(col + 1) * 48])
    # Strength 0 is the seed itself: with shared_w pairing the draw page shows the same three images.
    for (_, a), (_, b) in zip(studio.sefa(5, 2, 0.0, 0.7, 2), studio.draw(5, 0.7, 2)):
        np.testing.assert_array_equal(a, b)


def test_callbacks_refuse_bad_parameters(studio):
    for call, match in [(lambda: studio.draw("x"), "seed must be an integer"),
                        (lambda: studio.draw(-1), "seed must be an integer in 0..4294967295"),
                        (lambda: studio.draw(1.5), "seed"),
                        (lambda: studio.draw(0, "nan"), "truncation must be a number in"),
                        (lambda: studio.draw(0, 0.7, 3), "swap layer must be an integer in 1..2"),
                        (lambda: studio.sefa(0, 8), "direction index must be an integer in 0..7"),
                        (lambda: studio.sefa(0, 0, "inf"), "strength must be a number in"),
                        (lambda: studio.toonify(np.zeros((4, 4), np.uint8)), "photo must be")]:
        with pytest.raises(ValueError, match=match):
            call()


def test_info_and_default_layer(studio):
    info = studio.info()
    assert info["layers"] == [1, 2] and info["default_layer"] == 2 and info["size"] == 16
    assert info["style_dim"] == 8 and (info["source"], info["target"]) == ("src", "tgt")
    # swap_layer None is the default layer
    for (_, a), (_, b) in zip(studio.draw(1, 0.7), studio.draw(1, 0.7, 2)):
        np.testing.assert_array_equal(a, b)


def test_decode_photo(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    np.testing.assert_array_equal(st.decode_photo(buf.getvalue()), rgb)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # the rest is transparent: white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    out = st.decode_photo(buf.getvalue())
    assert out.shape == (2, 2, 3) and tuple(out[0, 0]) == (10, 20, 30) and (out[1, 1] == 255).all()
    for bad, match in [(b"", "empty"), (b"not an image", "not an image")]:
        with pytest.raises(ValueError, match=match):
            st.decode_photo(bad)


def _face(g, seed: int) -> np.ndarray:
    """A face the generator drew, uint8 [size, size, 3]: a "photo" already aligned for it."""
    return to_uint8(gen.sample(g, [seed], 0.7, truncation_samples=N_MEAN))[0]


def test_toonify_is_toonify_photo_kept_per_photo(studio, pair):
    from tf_cartoon.toonify import toonify_photo

    photo = _face(pair[0], 11)
    result = studio.toonify(photo)
    direct = toonify_photo(photo, *pair, fast=True, swap_layers=(1, 2), steps=10)
    np.testing.assert_array_equal(result.aligned, photo)
    for name in ("reconstruction", "target"):
        np.testing.assert_array_equal(getattr(result, name), getattr(direct, name))
    assert sorted(result.swapped) == [1, 2]
    for l in (1, 2):
        np.testing.assert_array_equal(result.swapped[l], direct.swapped[l])
    assert studio.toonify(photo.copy()) is result  # the same photo again: no second projection


# ---------------------------------------------------------------------------
# HTTP, without a browser
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(studio):
    srv = st.make_server(studio, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield st.url_of(srv)
    srv.shutdown()
    srv.server_close()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_http_page_and_api(server, studio):
    status, headers, body = _get(server)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    page = body.decode()
    assert not re.search(r"https?:|[\"'(]//|@import", page)  # nothing from elsewhere
    assert 'id="draw-out"' in page and 'id="toon-file"' in page
    status, _, body = _get(server + "api/info")
    assert status == 200 and json.loads(body)["layers"] == [1, 2]
    status, _, body = _get(server + "api/draw?seed=3&truncation=0.6&swap=1")
    assert status == 200
    panels = json.loads(body)["panels"]
    for p, (label, image) in zip(panels, studio.draw(3, 0.6, 1)):
        assert p["label"] == label
        np.testing.assert_array_equal(_decode(p["src"]), image)
    photo = _face(studio.source, 11)
    status, body = _post(server + "api/toonify", _png_file(photo))
    assert status == 200
    result = studio.toonify(photo)
    assert [p["label"] for p in body["panels"]] == ["aligned", "reconstruction", "target"]
    for p, image in zip(body["panels"], [result.aligned, result.reconstruction, result.target]):
        np.testing.assert_array_equal(_decode(p["src"]), image)
    assert sorted(body["swapped"]) == ["1", "2"] and body["swapped"]["1"]["label"] == "swapped (l=1, 8 px)"
    np.testing.assert_array_equal(_decode(body["swapped"]["2"]["src"]), result.swapped[2])
    status, _, body = _get(server + "api/sefa?seed=3&index=1&strength=2.5&truncation=0.7&swap=2")
    assert status == 200
    for p, (_, image) in zip(json.loads(body)["panels"], studio.sefa(3, 1, 2.5, 0.7, 2)):
        np.testing.assert_array_equal(_decode(p["src"]), image)


def _png_file(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _post(url, data: bytes):
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_errors(server):
    from tf_cartoon import align

    status, body = _post(server + "api/toonify", b"not an image")
    assert status == 400 and body["error"].startswith("the upload is not an image")
    # A grey 40x30 photo is no aligned face: MTCNN looks for one and finds none, or is not installed.
    status, body = _post(server + "api/toonify", _png_file(np.full((30, 40, 3), 128, np.uint8)))
    if align.weights_dir() is None:
        assert status == 501, body
    else:
        assert status == 422 and "no face" in body["error"].lower(), body
    status, _, body = _get(server + "api/draw?seed=abc")
    assert status == 400 and json.loads(body) == {"error": "seed must be an integer, got 'abc'"}
    status, _, body = _get(server + "nope")
    assert status == 404 and "no such page" in json.loads(body)["error"]
    req = urllib.request.Request(server + "api/nope", data=b"x", method="POST")
    try:
        urllib.request.urlopen(req, timeout=60)
        raise AssertionError("expected an HTTP error")
    except urllib.error.HTTPError as e:
        assert e.code == 404


# ---------------------------------------------------------------------------
# The command's errors
# ---------------------------------------------------------------------------

def test_cli_without_target_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert st.main([]) == 2
    err = one_line_error(capsys)
    assert "--target: not given" in err and "runs/quickstart" in err and "--flagfile=quickstart" in err


def test_cli_bad_flags(capsys, tmp_path):
    assert st.main(["--target", REFERENCE_TARGET_PT, "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in one_line_error(capsys)
    assert st.main(["--target", str(tmp_path / "missing.pt")]) == 2
    assert one_line_error(capsys).startswith("error: --target: checkpoint not found")
    # builtin:source_synthetic and the 32 px fixture agree in size and latents but in no layer's channels
    assert st.main(["--target", REFERENCE_TARGET_PT, "--source", "builtin:source_synthetic"]) == 2
    assert "--target: source and target have different channels at every swap layer" in one_line_error(capsys)


# ---------------------------------------------------------------------------
# The page in a real browser (slow tier; .ci/run installs Debian's chromium and chromedriver)
# ---------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
START_TIMEOUT_S = 240  # TensorFlow's import and the models' loading, on a busy 2-core machine


def start_studio(*args: str):
    """``python -m tf_cartoon.studio ... --port 0`` in a child process; returns (process, url) once it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "tf_cartoon.studio", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + START_TIMEOUT_S, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("studio: http://"):
            return proc, line.split()[1]
    stop(proc)
    raise AssertionError("the studio did not start:\n" + "".join(seen[-30:]))


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def chromium_driver(width=1280, height=1000):
    """Headless chromium driven by Debian's chromedriver (both found on PATH: Selenium Manager, which
    downloads drivers, is never asked)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                f"--window-size={width},{height}"]:
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def _wait(predicate, timeout=120, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _srcs(driver, row_id):
    return [img.get_attribute("src") for img in driver.find_elements("css selector", f"#{row_id} img")]


@pytest.mark.slow
def test_studio_in_headless_chromium(tmp_path):
    pytest.importorskip("selenium", reason="selenium comes with the [test] extra")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium.webdriver.common.keys import Keys

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, should anything reach it, stays offline
    proc, url = start_studio("--source", REFERENCE_PT, "--target", REFERENCE_TARGET_PT, "--truncation_samples",
                             str(N_MEAN), "--toonify_steps", "20")
    driver = None
    try:
        driver = chromium_driver()
        driver.set_page_load_timeout(60)
        driver.get(url)
        # The page loads and draws seed 0: source | target | swapped.
        first = _wait(lambda: len(_srcs(driver, "draw-out")) == 3 and _srcs(driver, "draw-out"), what="seed 0")
        assert [f.text for f in driver.find_elements("css selector", "#draw-out figcaption")] == \
            ["source", "target", "swapped (l=2, 16 px)"]
        assert all(_decode(s).shape == (32, 32, 3) for s in first)
        # A slider change (the keyboard on the seed slider, as a user does it) shows new images.
        driver.find_element("id", "draw-seed-range").send_keys(Keys.ARROW_RIGHT)
        second = _wait(lambda: _srcs(driver, "draw-out") if _srcs(driver, "draw-out")[1] != first[1] else None,
                       what="seed 1")
        assert driver.find_element("id", "draw-seed").get_attribute("value") == "1"
        assert not np.array_equal(_decode(second[1]), _decode(first[1]))
        # The swap-layer slider too: layer 2 -> 3 changes only the swapped image.
        driver.find_element("id", "draw-swap").send_keys(Keys.ARROW_RIGHT)
        third = _wait(lambda: _srcs(driver, "draw-out") if _srcs(driver, "draw-out")[2] != second[2] else None,
                      what="swap layer 3")
        assert third[:2] == second[:2]
        assert driver.find_element("id", "draw-swap-out").text == "l=3 (32 px)"
        # SeFa: a strength step moves the images.
        sefa_before = _wait(lambda: len(_srcs(driver, "sefa-out")) == 3 and _srcs(driver, "sefa-out"), what="SeFa")
        driver.find_element("id", "sefa-strength").send_keys(Keys.ARROW_RIGHT)
        _wait(lambda: _srcs(driver, "sefa-out")[1] != sefa_before[1], what="a SeFa step")
        # An upload returns a cartoon: a face the source drew is the "photo".
        source = tf_cartoon.load(REFERENCE_PT, models=("g_ema",)).g_ema
        photo = tmp_path / "face.png"
        Image.fromarray(to_uint8(gen.sample(source, [7], 0.7, truncation_samples=N_MEAN))[0]).save(photo)
        driver.find_element("id", "toon-file").send_keys(str(photo))
        def toonified():
            status = driver.find_element("id", "toon-status")
            assert "error" not in status.get_attribute("class"), status.text
            return len(_srcs(driver, "toon-out")) == 4 and _srcs(driver, "toon-out")
        toon = _wait(toonified, timeout=180, what="the toonified photo")
        assert [f.text for f in driver.find_elements("css selector", "#toon-out figcaption")] == \
            ["aligned", "reconstruction", "target", "swapped (l=2, 16 px)"]
        aligned, recon, cartoon, _ = (_decode(s) for s in toon)
        np.testing.assert_array_equal(aligned, _png(photo))
        assert cartoon.shape == (32, 32, 3) and not np.array_equal(cartoon, recon)
        assert "reconstruction MSE" in driver.find_element("id", "toon-status").text
        # Everything the page loaded came from the studio itself.
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(r.startswith(url) for r in resources), resources
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)
