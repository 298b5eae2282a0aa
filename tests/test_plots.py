"""tf_cartoon.plots: the Pillow figures (image rows, scatter, line panels)."""

import numpy as np
import pytest

from tf_cartoon import plots


def test_figures_have_one_band_per_row_and_draw_every_point():
    images = np.full((3, 8, 8, 3), 200, np.uint8)
    fig = plots.labelled_rows([("a", images), ("b", images)], scale=2, label_width=50)
    assert fig.shape == (2 * (16 + 2), 50 + 3 * (16 + 2), 3)
    assert (fig[0:16, 50:66] == 200).all()  # first tile, enlarged
    plot = plots.scatter([("p", 1.0, 2.0), ("q", 3.0, 0.5)], "x", "y", size=(300, 200))
    assert plot.shape == (200, 300, 3)
    red = (plot[..., 0] == 200) & (plot[..., 1] == 40)
    assert red.sum() > 20  # both markers drawn


def test_moving_mean():
    v = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(plots.moving_mean(v, 2), [1.5, 3.0, 6.0, 12.0])
    np.testing.assert_allclose(plots.moving_mean(v, 5), [31.0 / 5])
    np.testing.assert_allclose(plots.moving_mean(v, 1), v)


RED, BLUE = (214, 39, 40), (31, 119, 180)


def _has(image, colour) -> int:
    return int(np.all(image == np.array(colour, np.uint8), axis=-1).sum())


@pytest.mark.parametrize("smooth", [1, 4])
def test_line_panels_stack_one_band_per_panel_with_each_series_in_its_colour(smooth):
    xs = np.arange(1, 41)
    panels = [("rising", [("a", BLUE, xs, xs * 0.5), ("b", RED, xs, xs * 0.5 + 3)]),
              ("flat", [("a", BLUE, xs, np.ones(40)), ("b", RED, xs, np.ones(40))]),
              ("one point", [("a", BLUE, [7], [2.0]), ("b", RED, [7], [2.5])])]
    fig = plots.line_panels(panels, size=(400, 150), smooth=smooth)
    assert fig.shape == (3 * 150, 400, 3) and fig.dtype == np.uint8
    for p in range(3):
        band = fig[p * 150:(p + 1) * 150]
        # both series drawn in every panel (dark: the legend and the moving mean or the lines themselves)
        assert _has(band, BLUE) > 20 and _has(band, RED) > 20, p
    if smooth == 1:  # the rising panel's plot area: the red series (3 above the blue one) is higher in each column
        band = fig[30:120, 80:380]
        for c in range(0, 300, 50):
            rows_b = np.nonzero(np.all(band[:, c] == BLUE, axis=-1))[0]
            rows_r = np.nonzero(np.all(band[:, c] == RED, axis=-1))[0]
            assert len(rows_b) and len(rows_r) and rows_r.max() < rows_b.min(), c
