"""The package's figures, drawn with Pillow (no plotting library): labelled image rows, a labelled scatter plot and
panels of line plots."""

from __future__ import annotations

import numpy as np


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int = 3, label_width: int = 200) -> np.ndarray:
    """One row per (label, images [N, H, W, 3] uint8): the label on the left, the images side by side,
    enlarged ``scale`` times (nearest neighbour, so pixels stay visible)."""
    from PIL import Image, ImageDraw

    n, h, w = rows[0][1].shape[:3]
    cell_h, cell_w, pad = h * scale, w * scale, 2
    canvas = Image.new("RGB", (label_width + n * (cell_w + pad), len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 6), label, fill="black", font=_font())
        for c, image in enumerate(images):
            tile = Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (cell_w + pad), y))
    return np.asarray(canvas)


def scatter(points: list[tuple[str, float, float]], x_label: str, y_label: str, size=(720, 480)) -> np.ndarray:
    """A labelled scatter plot of (label, x, y) with axes from 0 to the largest value (plus a margin)."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 30, 20, 50
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x_max = max(p[1] for p in points) * 1.15 or 1.0
    y_max = max(p[2] for p in points) * 1.15 or 1.0

    def at(x, y):
        return (left + x / x_max * (width - left - right), height - bottom - y / y_max * (height - top - bottom))

    draw.line([at(0, 0), at(x_max, 0)], fill="black")
    draw.line([at(0, 0), at(0, y_max)], fill="black")
    for i in range(5):
        fx, fy = x_max * i / 4, y_max * i / 4
        px, py = at(fx, 0)
        draw.text((px - 10, py + 6), f"{fx:.3g}", fill="black", font=font)
        px, py = at(0, fy)
        draw.text((4, py - 6), f"{fy:.3g}", fill="black", font=font)
    draw.text((width // 2 - 40, height - 20), x_label, fill="black", font=font)
    draw.text((4, 2), y_label, fill="black", font=font)
    for label, x, y in points:
        px, py = at(x, y)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(200, 40, 40))
        draw.text((px + 6, py - 6), label, fill=(40, 40, 40), font=font)
    return np.asarray(canvas)


def moving_mean(values, window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (len(values) - window + 1 of them; window >= 1)."""
    v = np.asarray(values, np.float64)
    if window <= 1 or len(v) < window:
        return v
    c = np.concatenate([[0.0], np.cumsum(v)])
    return (c[window:] - c[:-window]) / window


def _tint(colour, amount: float = 0.65):
    """``colour`` blended toward white (``amount`` 1: white)."""
    return tuple(int(round(c + (255 - c) * amount)) for c in colour)


def line_panels(panels, size=(720, 220), smooth: int = 1) -> np.ndarray:
    """One line plot per panel, stacked top to bottom: ``panels`` is a list of (title, series), each series
    (label, RGB colour, xs, ys). Each series is drawn light at every point and, with ``smooth`` > 1, dark as the
    moving mean of ``smooth`` consecutive points (placed at their mean x); the legend names the series. Each panel
    has its own y range (the values' min to max plus a margin). Returns [len(panels) * height, width, 3] uint8."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 20, 24, 30
    canvas = Image.new("RGB", (width, height * len(panels)), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for p, (title, series) in enumerate(panels):
        y0 = p * height
        xs_all = np.concatenate([np.asarray(s[2], np.float64) for s in series])
        ys_all = np.concatenate([np.asarray(s[3], np.float64) for s in series])
        x_lo, x_hi = float(xs_all.min()), float(xs_all.max())
        y_lo, y_hi = float(ys_all.min()), float(ys_all.max())
        if x_hi == x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        pad = (y_hi - y_lo) * 0.05 or max(abs(y_hi) * 0.1, 1e-3)
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def at(x, y, x_lo=x_lo, x_hi=x_hi, y_lo=y_lo, y_hi=y_hi, y0=y0):
            return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                    y0 + height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom))

        draw.rectangle([at(x_lo, y_hi), at(x_hi, y_lo)], outline="black")  # (top left, bottom right)
        for i in range(5):
            fx, fy = x_lo + (x_hi - x_lo) * i / 4, y_lo + (y_hi - y_lo) * i / 4
            px, py = at(fx, y_lo)
            draw.text((px - 10, py + 6), f"{fx:.4g}" if x_hi - x_lo < 8 else f"{fx:.0f}", fill="black", font=font)
            px, py = at(x_lo, fy)
            draw.text((4, py - 6), f"{fy:.4g}", fill="black", font=font)
        caption = title + (f"  (light: every point; dark: mean of {smooth})" if smooth > 1 else "")
        draw.text((left, y0 + 6), caption, fill="black", font=font)
        # Every series' light line first, then the dark ones (an earlier series wider, so that one lying on
        # another still shows around it), then the legend.
        for label, colour, xs, ys in series:
            raw = [at(x, y) for x, y in zip(np.asarray(xs, np.float64), np.asarray(ys, np.float64))]
            if len(raw) > 1:
                draw.line(raw, fill=_tint(colour) if smooth > 1 else colour, width=1)
            elif raw:
                (px, py), = raw
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        for k, (label, colour, xs, ys) in enumerate(series):
            if smooth > 1 and len(xs) >= smooth:
                mean = [at(x, y) for x, y in zip(moving_mean(xs, smooth), moving_mean(ys, smooth))]
                if len(mean) > 1:
                    draw.line(mean, fill=colour, width=2 + 2 * (len(series) - 1 - k))
            lx = width - right - 90 * (len(series) - k)
            draw.line([(lx, y0 + 12), (lx + 20, y0 + 12)], fill=colour, width=2)
            draw.text((lx + 24, y0 + 6), label, fill="black", font=font)
    return np.asarray(canvas)
