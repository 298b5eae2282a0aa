"""A local web studio: draw seeds, move along SeFa directions, toonify a photo; source | target | swapped.

    python -m tf_cartoon.studio --target runs/quickstart                 # then open http://127.0.0.1:7860/
    python -m tf_cartoon.studio --target runs/freezeSG --source ffhq256.pt --port 8000

TARGET / SOURCE: every checkpoint the other tools read (a reference .pt, an NVlabs .pkl, a converted
directory, a training workdir, builtin:<name>). --source defaults to builtin:source_synthetic, the source
the quickstart fine-tunes; --target defaults to runs/quickstart, the quickstart's workdir (README command 1),
when that folder exists; without it the command stops and says how to make one.

The page has three parts, each showing the source, the target and the target with the source's feature
swapped in at the chosen layer, side by side:
  draw     a seed, the truncation psi and the swap layer (as python -m tf_cartoon.generate renders them);
  SeFa     a seed, a closed-form direction of the source (tf_cartoon.sefa) and the strength along it
           (as python -m tf_cartoon.sefa --render renders them);
  toonify  an uploaded photo, aligned and projected into the source (tf_cartoon.toonify, fast mode):
           aligned | reconstruction | target | swapped.

The server is Python's own http.server: no package to install, nothing fetched from the internet by the
server or the page (no fonts, scripts or styles from elsewhere; the Content-Security-Policy header lets
the browser load only from the studio itself), no analytics. It binds 127.0.0.1 unless --host says
otherwise; anyone who can reach the port can use the models, so bind other addresses on trusted networks
only. Everything runs on the CPU unless TensorFlow sees a GPU.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import os
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from tf_cartoon import arch, cli, latent, precision
from tf_cartoon.images import MAX_SEED, to_uint8

DEFAULT_SOURCE = "builtin:source_synthetic"
DEFAULT_TARGET = os.path.join("runs", "quickstart")  # configs/quickstart.cfg's --workdir
DEFAULT_PORT = 7860  # the port web demos of this field usually take
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_UPLOAD_PIXELS = 64 * 1024 * 1024  # decoded size limit of an uploaded photo
TOONIFY_CACHE = 8  # projections kept, so that moving the swap slider needs no new projection

log = logging.getLogger("tf_cartoon.studio")


# ---------------------------------------------------------------------------
# The callbacks: parameters in, labelled uint8 images out (no HTTP)
# ---------------------------------------------------------------------------

def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not (np.isfinite(f) and f == int(f) and lo <= int(f) <= hi):
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(f)


def _float(value, name: str, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (np.isfinite(f) and lo <= f <= hi):
        raise ValueError(f"{name} must be a number in {lo}..{hi}, got {value!r}")
    return f


class Studio:
    """A source and a target generator and what the page asks of them.

    Each callback returns ``[(label, uint8 [H, W, 3]), ...]`` left to right. Calls are serialised (one
    rendering at a time), so the server's threads share the models safely.
    """

    TRUNCATION_RANGE = (0.0, 2.0)
    STRENGTH_RANGE = (-50.0, 50.0)

    def __init__(self, source, target, *, truncation_samples: int = 4096, pairing: str = "shared_w",
                 toonify_steps: int | None = None, source_name: str = "", target_name: str = ""):
        from tf_cartoon import generate as gen
        from tf_cartoon import sefa

        latent.check_pair(source, target)
        self.source, self.target = source, target
        self.source_name, self.target_name = source_name, target_name
        if pairing not in gen.PAIRINGS:
            raise ValueError(f"pairing must be one of {', '.join(gen.PAIRINGS)}, got {pairing!r}")
        self.pairing = pairing
        if toonify_steps is not None and int(toonify_steps) < 1:
            raise ValueError(f"toonify steps must be >= 1, got {toonify_steps}")
        self.toonify_steps = None if toonify_steps is None else int(toonify_steps)
        self.layers = swappable_layers(source, target)
        self.precision = precision.of_layer(target)  # what the page reports; the images are uint8 either way
        self.source_mean = gen.mean_latent(source, truncation_samples)
        self.target_mean = gen.mean_latent(target, truncation_samples)
        self.directions = sefa.closed_form_factorization(source).eigvec  # [style_dim, style_dim], column i
        self._lock = threading.Lock()
        self._toonified: dict[str, object] = {}  # photo digest -> ToonifyResult, oldest first

    def info(self) -> dict:
        """What the page needs to build its controls."""
        return {"size": int(self.target.size), "style_dim": int(self.source.style_dim), "layers": list(self.layers),
                "default_layer": self.default_layer, "source": self.source_name, "target": self.target_name,
                "pairing": self.pairing, "max_seed": MAX_SEED, "truncation_range": list(self.TRUNCATION_RANGE),
                "strength_range": list(self.STRENGTH_RANGE), "toonify": toonify_available(),
                "precision": self.precision}

    @property
    def default_layer(self) -> int:
        """The layer the pages start at: 2 where it can swap (the paper's demos and the quickstart grid)."""
        return 2 if 2 in self.layers else self.layers[0]

    def _layer(self, swap_layer) -> int:
        layer = _int(swap_layer, "swap layer", 1, self.target.n_blocks)
        if layer not in self.layers:
            raise ValueError(f"swap layer must be one of {', '.join(map(str, self.layers))}, got {layer}")
        return layer

    def _label(self, layer: int) -> str:
        res = arch.swap_resolution(layer)
        return f"swapped (l={layer}, {res} px)"

    def draw(self, seed, truncation=0.7, swap_layer=None) -> list[tuple[str, np.ndarray]]:
        """Seed -> source | target | target with the source's feature at ``swap_layer``, as
        ``python -m tf_cartoon.generate --seeds SEED --truncation PSI --swap_layer L --pairing P`` writes them."""
        from tf_cartoon import generate as gen

        seed = _int(seed, "seed", 0, MAX_SEED)
        psi = _float(truncation, "truncation", *self.TRUNCATION_RANGE)
        layer = self._layer(self.default_layer if swap_layer is None else swap_layer)
        with self._lock:
            r = gen.swap_images(self.source, self.target, [seed], [layer], psi, self.source_mean, self.target_mean,
                                pairing=self.pairing)
        return [("source", to_uint8(r.source[0])), ("target", to_uint8(r.target[0])),
                (self._label(layer), to_uint8(r.swapped[layer][0]))]

    def sefa(self, seed, index=0, strength=0.0, truncation=0.7, swap_layer=None) -> list[tuple[str, np.ndarray]]:
        """The seed's source w moved ``strength`` along SeFa direction ``index`` -> source | target | swapped,
        as ``python -m tf_cartoon.sefa --render`` renders one cell (its latents are always the source's w)."""
        from tf_cartoon import sefa

        seed = _int(seed, "seed", 0, MAX_SEED)
        index = _int(index, "direction index", 0, self.source.style_dim - 1)
        strength = _float(strength, "strength", *self.STRENGTH_RANGE)
        psi = _float(truncation, "truncation", *self.TRUNCATION_RANGE)
        layer = self._layer(self.default_layer if swap_layer is None else swap_layer)
        with self._lock:
            panels = sefa.render_direction(self.source, self.directions[:, index], [seed], [strength], psi,
                                           self.target, [layer], self.source_mean, self.target_mean)
        src, tgt, swapped = (to_uint8(p[0, 0]) for p in panels)
        return [("source", src), ("target", tgt), (self._label(layer), swapped)]

    def toonify(self, photo: np.ndarray):
        """An uploaded photo (uint8 [H, W, 3]) -> tf_cartoon.toonify's result with every swappable layer.

        The projection takes seconds; results are kept per photo (its bytes' digest), so asking again,
        e.g. for another swap layer, returns at once. Raises tf_cartoon.toonify.NoFaceError without a face."""
        photo = np.ascontiguousarray(photo, np.uint8)
        if photo.ndim != 3 or photo.shape[-1] != 3:
            raise ValueError(f"photo must be [H, W, 3] uint8, got shape {photo.shape}")
        from tf_cartoon import toonify

        key = hashlib.sha256(photo.tobytes() + repr(photo.shape).encode()).hexdigest()
        with self._lock:
            result = self._toonified.pop(key, None)
            if result is None:
                result = toonify.toonify_photo(photo, self.source, self.target, fast=True,
                                               swap_layers=self.layers, steps=self.toonify_steps)
            self._toonified[key] = result
            while len(self._toonified) > TOONIFY_CACHE:
                self._toonified.pop(next(iter(self._toonified)))
        return result


def swappable_layers(source, target, flag_name: str | None = None) -> tuple[int, ...]:
    """The layers at which a pair can swap (latent.check_pair's rule, layer by layer); IncompatiblePairError
    (prefixed with ``flag_name``) where there is none."""
    layers = []
    for layer in range(1, target.n_blocks + 1):
        try:
            layers += latent.check_pair(source, target, [layer])
        except cli.IncompatiblePairError:
            continue
    if not layers:
        prefix = f"{flag_name}: " if flag_name else ""
        raise cli.IncompatiblePairError(f"{prefix}source and target have different channels at every swap layer "
                                        f"(1..{target.n_blocks}): nothing to swap")
    return tuple(layers)


def toonify_available() -> bool:
    """Whether tf_cartoon.toonify (photo -> cartoon) is part of this installation."""
    import importlib.util

    return importlib.util.find_spec("tf_cartoon.toonify") is not None


def png_bytes(image) -> bytes:
    """One HWC image (uint8, or float in [-1, 1]) as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def decode_photo(data: bytes) -> np.ndarray:
    """Uploaded file bytes -> uint8 [H, W, 3] (EXIF rotation applied, alpha composited on white), else
    ValueError saying what is wrong."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ValueError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_UPLOAD_PIXELS:
                raise ValueError(f"the photo has {im.width}x{im.height} pixels, more than this studio takes "
                                 f"({MAX_UPLOAD_PIXELS} pixels)")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            return np.asarray(im.convert("RGB"), np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"the upload is not an image this studio can read ({cli.one_line(e)})") from None


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

# The browser may load nothing but the studio's own page and the images it returns (data: URLs).
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")


def _panels_json(panels) -> list[dict]:
    return [{"label": label, "src": data_url(image)} for label, image in panels]


class Handler(BaseHTTPRequestHandler):
    """Routes: ``GET /`` the page; ``GET /api/info``; ``GET /api/draw?seed=&truncation=&swap=``;
    ``GET /api/sefa?seed=&index=&strength=&truncation=&swap=``; ``POST /api/toonify`` (body: the photo
    file). Answers are JSON; a bad parameter or upload is ``400 {"error": ...}``, a photo without a face ``422``,
    a photo that needs alignment where MTCNN's weights are not installed ``501``."""

    studio: Studio  # set on the subclass the server is made with
    server_version = "tf_cartoon-studio"

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, status=HTTPStatus.OK):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status, message: str):
        self._json({"error": cli.one_line(message)}, status)

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        studio = self.studio
        try:
            if url.path in ("/", "/index.html"):
                return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            if url.path == "/api/info":
                return self._json(studio.info())
            if url.path == "/api/draw":
                panels = studio.draw(q.get("seed", 0), q.get("truncation", 0.7), q.get("swap"))
                return self._json({"panels": _panels_json(panels)})
            if url.path == "/api/sefa":
                panels = studio.sefa(q.get("seed", 0), q.get("index", 0), q.get("strength", 0.0),
                                     q.get("truncation", 0.7), q.get("swap"))
                return self._json({"panels": _panels_json(panels)})
            return self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:  # a bug: keep the traceback in the log, tell the page
            log.exception("studio: %s failed", self.path)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {cli.one_line(e)}")

    def do_POST(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/api/toonify":
            return self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_UPLOAD_BYTES:
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"uploads must be at most {MAX_UPLOAD_BYTES // 2 ** 20} MB")
        data = self.rfile.read(length)
        if not toonify_available():
            return self._error(HTTPStatus.NOT_IMPLEMENTED, "toonify is not part of this installation")
        from tf_cartoon.align import AlignUnavailable, NoFaceError

        try:
            result = self.studio.toonify(decode_photo(data))
        except NoFaceError as e:
            return self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(e))
        except AlignUnavailable as e:  # the installation's, not the photo's
            return self._error(HTTPStatus.NOT_IMPLEMENTED, str(e))
        except (ValueError, OSError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:
            log.exception("studio: toonify failed")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {cli.one_line(e)}")
        return self._json({
            "panels": _panels_json([("aligned", result.aligned), ("reconstruction", result.reconstruction),
                                    ("target", result.target)]),
            "swapped": {str(l): {"label": self.studio._label(l), "src": data_url(img)}
                        for l, img in sorted(result.swapped.items())},
            "mse": result.mse})


def make_server(studio: Studio, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A server bound to (host, port) (port 0: a free one; ``server.server_address`` says which), not yet
    serving: call ``serve_forever()`` (and ``shutdown()`` from another thread)."""
    handler = type("StudioHandler", (Handler,), {"studio": studio})
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = True
    return server


def url_of(server) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


# ---------------------------------------------------------------------------
# The page (one self-contained document: inline style and script, images as data: URLs)
# ---------------------------------------------------------------------------

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tf_cartoon studio</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }
header { background: #2b2d42; color: #fff; padding: 10px 20px; }
header h1 { font-size: 20px; margin: 0 0 4px 0; }
header p { margin: 0; font-size: 13px; opacity: .85; }
nav a { color: #fff; margin-right: 14px; font-size: 14px; }
section { background: #fff; margin: 14px 20px; padding: 12px 16px; border-radius: 8px;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); }
section h2 { font-size: 17px; margin: 0 0 8px 0; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 22px; align-items: center; font-size: 14px; }
.controls label { display: flex; align-items: center; gap: 6px; }
.controls input[type=range] { width: 170px; }
.controls input[type=number] { width: 90px; }
output { font-variant-numeric: tabular-nums; min-width: 3.5em; display: inline-block; }
.row { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 10px; }
figure { margin: 0; text-align: center; font-size: 13px; }
figure img { width: var(--cell); height: var(--cell); image-rendering: pixelated; background: #ddd;
             border-radius: 4px; display: block; }
.status { font-size: 13px; color: #666; min-height: 1.2em; margin-top: 6px; }
.status.error { color: #b00020; }
</style></head>
<body>
<header><h1>tf_cartoon studio</h1><p id="models">loading...</p>
<nav><a href="#draw">draw</a><a href="#sefa">SeFa directions</a><a href="#toonify">toonify a photo</a></nav>
</header>
<section id="draw"><h2>Draw a seed</h2>
<div class="controls">
 <label>seed <input id="draw-seed-range" type="range" min="0" max="999" value="0">
  <input id="draw-seed" type="number" min="0" value="0"></label>
 <label>truncation <input id="draw-truncation" type="range" min="0" max="1.5" step="0.05" value="0.7">
  <output id="draw-truncation-out">0.70</output></label>
 <label>swap layer <input id="draw-swap" type="range" min="0" max="0" value="0">
  <output id="draw-swap-out"></output></label>
</div>
<div class="row" id="draw-out"></div><div class="status" id="draw-status"></div></section>
<section id="sefa"><h2>Move along a SeFa direction</h2>
<div class="controls">
 <label>seed <input id="sefa-seed-range" type="range" min="0" max="999" value="0">
  <input id="sefa-seed" type="number" min="0" value="0"></label>
 <label>direction <input id="sefa-index" type="range" min="0" max="0" value="0">
  <output id="sefa-index-out">0</output></label>
 <label>strength <input id="sefa-strength" type="range" min="-10" max="10" step="0.5" value="0">
  <output id="sefa-strength-out">0.0</output></label>
 <label>truncation <input id="sefa-truncation" type="range" min="0" max="1.5" step="0.05" value="0.7">
  <output id="sefa-truncation-out">0.70</output></label>
 <label>swap layer <input id="sefa-swap" type="range" min="0" max="0" value="0">
  <output id="sefa-swap-out"></output></label>
</div>
<div class="row" id="sefa-out"></div><div class="status" id="sefa-status"></div></section>
<section id="toonify"><h2>Toonify a photo</h2>
<div class="controls">
 <label>photo <input id="toon-file" type="file" accept="image/*"></label>
 <label>swap layer <input id="toon-swap" type="range" min="0" max="0" value="0">
  <output id="toon-swap-out"></output></label>
</div>
<div class="row" id="toon-out"></div><div class="status" id="toon-status"></div></section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let INFO = null;
let toonResult = null;

function show(rowId, panels) {
  const row = $(rowId);
  panels.forEach((p, i) => {
    let fig = row.children[i];
    if (!fig) {
      fig = document.createElement("figure");
      fig.appendChild(document.createElement("img"));
      fig.appendChild(document.createElement("figcaption"));
      row.appendChild(fig);
    }
    fig.querySelector("img").src = p.src;
    fig.querySelector("img").alt = p.label;
    fig.querySelector("figcaption").textContent = p.label;
  });
  while (row.children.length > panels.length) row.removeChild(row.lastChild);
}

function status(id, text, isError) {
  $(id).textContent = text;
  $(id).className = isError ? "status error" : "status";
}

// One request in flight per part; a change while it runs asks again once it is done.
function live(name, query) {
  const state = { busy: false, again: false };
  function refresh() {
    if (!INFO) return;
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    status(name + "-status", "rendering...", false);
    fetch("/api/" + name + "?" + new URLSearchParams(query()))
      .then((r) => r.json().then((j) => ({ ok: r.ok, j })))
      .then(({ ok, j }) => {
        if (!ok) throw new Error(j.error);
        show(name + "-out", j.panels);
        status(name + "-status", "", false);
      })
      .catch((e) => status(name + "-status", String(e.message || e), true))
      .finally(() => {
        state.busy = false;
        if (state.again) { state.again = false; refresh(); }
      });
  }
  return refresh;
}

function layerOf(id) { return INFO.layers[Number($(id).value)]; }
function layerText(l) { return "l=" + l + " (" + (1 << (l + 2)) + " px)"; }

function bindSeed(prefix, refresh) {
  const range = $(prefix + "-seed-range"), box = $(prefix + "-seed");
  range.addEventListener("input", () => { box.value = range.value; refresh(); });
  box.addEventListener("input", () => {
    if (!/^[0-9]+$/.test(box.value)) return;  // mid-edit (empty): wait for a number
    range.value = Math.min(Number(box.value), Number(range.max));
    refresh();
  });
}

function bindOutput(id, fmt, refresh) {
  const el = $(id), out = $(id + "-out");
  const update = () => { out.textContent = fmt(el.value); };
  el.addEventListener("input", () => { update(); refresh(); });
  update();
}

const drawRefresh = live("draw", () => ({
  seed: $("draw-seed").value, truncation: $("draw-truncation").value, swap: layerOf("draw-swap") }));
const sefaRefresh = live("sefa", () => ({
  seed: $("sefa-seed").value, index: $("sefa-index").value, strength: $("sefa-strength").value,
  truncation: $("sefa-truncation").value, swap: layerOf("sefa-swap") }));

function showToon() {
  if (!toonResult) return;
  const l = String(layerOf("toon-swap"));
  const swapped = toonResult.swapped[l];
  show("toon-out", toonResult.panels.concat(swapped ? [swapped] : []));
}

function upload() {
  const file = $("toon-file").files[0];
  if (!file) return;
  status("toon-status", "projecting " + file.name + " into the source (seconds on a CPU)...", false);
  fetch("/api/toonify", { method: "POST", body: file })
    .then((r) => r.json().then((j) => ({ ok: r.ok, j })))
    .then(({ ok, j }) => {
      if (!ok) throw new Error(j.error);
      toonResult = j;
      showToon();
      status("toon-status", file.name + ": reconstruction MSE " + j.mse.toFixed(4), false);
    })
    .catch((e) => status("toon-status", file.name + ": " + String(e.message || e), true));
}

fetch("/api/info").then((r) => r.json()).then((info) => {
  INFO = info;
  document.documentElement.style.setProperty("--cell", Math.max(info.size, 160) + "px");
  $("models").textContent = "source " + info.source + " | target " + info.target + " | " + info.size +
    " px | pairing " + info.pairing + " | " + info.precision;
  for (const id of ["draw-swap", "sefa-swap", "toon-swap"]) {
    $(id).max = info.layers.length - 1;
    $(id).value = info.layers.indexOf(info.default_layer);
  }
  $("sefa-index").max = Math.min(info.style_dim, 64) - 1;
  bindSeed("draw", drawRefresh);
  bindSeed("sefa", sefaRefresh);
  bindOutput("draw-truncation", (v) => Number(v).toFixed(2), drawRefresh);
  bindOutput("draw-swap", (v) => layerText(info.layers[v]), drawRefresh);
  bindOutput("sefa-index", (v) => v, sefaRefresh);
  bindOutput("sefa-strength", (v) => Number(v).toFixed(1), sefaRefresh);
  bindOutput("sefa-truncation", (v) => Number(v).toFixed(2), sefaRefresh);
  bindOutput("sefa-swap", (v) => layerText(info.layers[v]), sefaRefresh);
  bindOutput("toon-swap", (v) => layerText(info.layers[v]), showToon);
  if (info.toonify) {
    $("toon-file").addEventListener("change", upload);
  } else {
    $("toon-file").disabled = true;
    status("toon-status", "toonify is not part of this installation", true);
  }
  drawRefresh();
  sefaRefresh();
}).catch((e) => { $("models").textContent = "cannot reach the studio: " + e; });
</script>
</body></html>
"""


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m tf_cartoon.studio", __doc__)
    cli.add_role(p, "target", default=None,
                 help=f"target (fine-tuned) generator (default: {DEFAULT_TARGET}, the quickstart's workdir)")
    cli.add_role(p, "source", default=DEFAULT_SOURCE, help=f"source (pretrained) generator (default: {DEFAULT_SOURCE})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--pairing", default="shared_w", choices=("shared_w", "own_z"),
                   help="how source and target render a seed (as python -m tf_cartoon.generate --pairing)")
    p.add_argument("--truncation_samples", type=int, default=4096, help="z samples behind each mean latent")
    p.add_argument("--toonify_steps", type=int, default=None,
                   help="projection steps of an uploaded photo (default: toonify's fast mode)")
    cli.add_precision(p)
    return p


def _prepare(args):
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.truncation_samples < 1:
        raise ValueError(f"--truncation_samples must be >= 1, got {args.truncation_samples}")
    if args.toonify_steps is not None and args.toonify_steps < 1:
        raise ValueError(f"--toonify_steps must be >= 1, got {args.toonify_steps}")
    target = args.target
    if target is None:
        if not os.path.isdir(DEFAULT_TARGET):
            raise cli.UsageError(f"--target: not given, and {DEFAULT_TARGET} (the quickstart's workdir) does not "
                                 "exist here: train it first (python -m tf_cartoon.train --flagfile=quickstart, "
                                 "about 6 minutes on a CPU) or pass --target")
        target = DEFAULT_TARGET
    concrete = cli.resolve_precision(args.precision)
    source_g = cli.load_generator(args.source, cli.flag(args, "source"), precision=concrete)
    target_g = cli.load_generator(target, cli.flag(args, "target"), precision=concrete)
    latent.check_pair(source_g, target_g, (), "--target")
    swappable_layers(source_g, target_g, "--target")
    return source_g, target_g, target


@cli.command(setup="generate")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    with cli.user_input():
        source_g, target_g, target = _prepare(args)
        studio = Studio(source_g, target_g, truncation_samples=args.truncation_samples, pairing=args.pairing,
                        toonify_steps=args.toonify_steps, source_name=args.source, target_name=target)
        try:
            server = make_server(studio, args.host, args.port)
        except OSError as e:
            raise cli.UsageError(f"--port: cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("studio: listening on %s: every machine that reaches this address can use it", args.host)
    print(f"studio: {url_of(server)} (source {args.source}, target {target}, {studio.precision}; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    cli.run(main)
