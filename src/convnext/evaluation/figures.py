"""Saving a matplotlib figure as a PNG, for every picture a run or an evaluation writes (curves.png, confusion
matrices, Grad-CAM overlays).

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global backend is switched and
nothing needs a display.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as an RGB PNG, atomically: a reader (a browser refreshing curves.png, TensorBoard,
    a crashed run) sees the old file or the new one, never half of one; the file follows the umask like
    every other run file. Drawn with Agg and encoded by PIL at zlib level 1: a photo-sized figure saves in
    a third of savefig's time (its RGBA at level 6) for a file ~5% larger."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            Image.fromarray(rgb).save(f, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
