"""Model widget: the model card's radiologist summary is shown whole, word-wrapped, scrollable and free of jargon."""

from __future__ import annotations

import pytest
from plugin_helpers import TIMEOUT_MS, dock
from qtpy.QtWidgets import QTextBrowser

pytestmark = pytest.mark.napari


def _plain(markdown_line: str) -> str:
    """A summary line as Qt shows it: without the Markdown heading and bullet marks."""
    return markdown_line.lstrip("#").strip().removeprefix("- ").strip()


def test_model_widget_shows_the_whole_radiologist_summary(make_napari_viewer, qtbot):
    from napari_medvae.engine.model.card import card_summary
    from napari_medvae.widgets import _common

    viewer = make_napari_viewer(show=True)
    m = dock(viewer, "Model")
    qtbot.waitUntil(lambda: not m.job.running and _common.current_model() is not None, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: m.card.toPlainText() != "", timeout=TIMEOUT_MS)
    card = m.card
    assert isinstance(card, QTextBrowser) and card.isReadOnly()
    assert card.lineWrapMode() == QTextBrowser.LineWrapMode.WidgetWidth
    shown = " ".join(card.toPlainText().split())
    lines = [_plain(s) for s in card_summary(_common.current_model().config).splitlines() if s.strip()]
    assert len(lines) > 10
    for line in lines:  # every line of the summary, the last limitation included: nothing cut off
        assert " ".join(line.split()) in shown, line
    assert "SliceVAE" not in shown and "latent" not in shown and "quantile" not in shown
    assert "1.0 is the anomaly threshold, the calibrated healthy limit" in shown
    qtbot.waitUntil(lambda: card.isVisible(), timeout=TIMEOUT_MS)
    card.resize(260, 200)  # a narrow dock: lines wrap (no sideways scrolling), the rest scrolls down
    qtbot.waitUntil(lambda: card.verticalScrollBar().maximum() > 0, timeout=TIMEOUT_MS)
    assert card.horizontalScrollBar().maximum() == 0
