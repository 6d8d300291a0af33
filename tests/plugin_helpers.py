"""Helpers shared by the napari plugin tests (tests/test_plugin_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLUGIN = "napari-medvae"
TIMEOUT_MS = 120_000  # CPU-only CI with other work running: generous


def open_volume(viewer, path: Path):
    """Open one file through the plugin's reader; the single image layer it adds."""
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    return layers[0]


def dock(viewer, title: str):
    """Add one of the plugin's dock widgets by its display name; the widget."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    return widget


def wait_layer(qtbot, viewer, name: str, job=None):
    """Wait until a layer called ``name`` exists (and the widget's job has finished)."""
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=TIMEOUT_MS)
    if job is not None:
        qtbot.waitUntil(lambda: not job.running, timeout=TIMEOUT_MS)
    return viewer.layers[name]


def assert_same_grid(layer, src) -> None:
    """``layer`` sits on ``src``'s world grid: shape, scale, translate, affine (and metadata copied)."""
    assert layer.data.shape == src.data.shape
    np.testing.assert_allclose(layer.scale, src.scale)
    np.testing.assert_allclose(layer.translate, src.translate)
    np.testing.assert_allclose(layer.affine.affine_matrix, src.affine.affine_matrix)
    assert layer.metadata.get("medvae_geometry") == src.metadata.get("medvae_geometry")


class Notifications:
    """Collects the messages of napari notifications (show_error/show_info) while a test runs."""

    def __init__(self):
        from napari.utils.notifications import notification_manager

        self.messages: list[str] = []
        self._manager = notification_manager
        notification_manager.notification_ready.connect(self._add)

    def _add(self, event) -> None:
        self.messages.append(str(event.message))

    def close(self) -> None:
        self._manager.notification_ready.disconnect(self._add)
