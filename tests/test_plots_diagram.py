"""The residual block diagram: a Figure with one panel per shortcut, every part of the block named."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no window, ever

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from tinylib import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(ax):
    return [t.get_text() for t in ax.texts]


def test_residual_block_diagram_draws_both_shortcuts_with_every_part_named():
    fig = plots.residual_block_diagram()
    assert isinstance(fig, matplotlib.figure.Figure)
    identity, projection = fig.axes
    assert "identity" in identity.get_title() and "projection" in projection.get_title()
    for ax in fig.axes:
        labels = texts(ax)
        assert sum("3×3 conv" in t for t in labels) == 2  # conv-BN-ReLU-conv-BN on the main path
        assert sum(t.startswith("BatchNorm") for t in labels) >= 2
        assert labels.count("ReLU") == 2  # inside the block, and after the addition
        assert "+" in labels and "output" in labels
        assert ax.lines  # the shortcut is drawn as a line beside the main path
    assert not any("1×1 conv" in t for t in texts(identity))
    assert any("1×1 conv" in t for t in texts(projection))
    fig.canvas.draw()  # renders without error


def test_residual_block_diagram_draws_one_panel_or_refuses_an_unknown_shortcut():
    assert len(plots.residual_block_diagram("identity").axes) == 1
    assert "residual_block_diagram" in plots.__all__
    with pytest.raises(ValueError):
        plots.residual_block_diagram(("identity", "dense"))
    with pytest.raises(ValueError):
        plots.residual_block_diagram(())
