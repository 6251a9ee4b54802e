"""Headless Chromium settings and checking what OHIF shows, for bench/viewer.py (and the
browser tests): each slice as the viewer should show it, compared with a screenshot of
Cornerstone's canvas on a coarse grid of block means.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np

from bench.synthetic import INTERCEPT

CHROMIUM = Path("/usr/bin/chromium")
# Headless on a machine whose network reaches only package registries.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The window the synthetic series carries, which OHIF applies on first display.
WINDOW_CENTER, WINDOW_WIDTH = 40.0, 400.0
GRID = 64  # compare pictures on a 64x64 grid of block means
MIN_CORRELATION = 0.9


def block_means(image: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Downscale an image to ``grid`` x ``grid`` by averaging blocks (centre square crop)."""
    size = (min(image.shape[:2]) // grid) * grid
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    square = image[top : top + size, left : left + size]
    block = size // grid
    return square.reshape(grid, block, grid, block).mean(axis=(1, 3))


def windowed_views(slices: list[np.ndarray]) -> list[np.ndarray]:
    """Each stored slice as a viewer shows it (window 40/400, 0..1) on the comparison grid."""
    low = WINDOW_CENTER - WINDOW_WIDTH / 2
    return [
        block_means(np.clip((s.astype(np.float64) + INTERCEPT - low) / WINDOW_WIDTH, 0.0, 1.0))
        for s in slices
    ]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized (Pearson) correlation of two pictures; 0 when either is flat."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def canvas_picture(png: bytes) -> np.ndarray:
    """The image area of a screenshot of Cornerstone's canvas, gray 0..1.

    Cornerstone fits the square image to the canvas's smaller side and centres it.
    """
    gray = imagecodecs.png_decode(png)[..., :3].astype(np.float64).mean(axis=2) / 255.0
    side = min(gray.shape)
    top, left = (gray.shape[0] - side) // 2, (gray.shape[1] - side) // 2
    return gray[top : top + side, left : left + side]


def best_match(picture: np.ndarray, views: list[np.ndarray]) -> tuple[int, float]:
    """(index, correlation) of the view that matches ``picture`` best."""
    grid = block_means(picture)
    scores = [correlation(grid, view) for view in views]
    index = int(np.argmax(scores))
    return index, scores[index]
