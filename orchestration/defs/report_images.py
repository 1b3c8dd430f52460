"""Report images (training curves, projections, evaluation plots) in asset metadata, as the Dagster UI can show them.

The UI renders markdown metadata in the browser, which cannot load a path on the machine that ran the step: an
absolute file path in ``![plot](/abs/path.png)`` is a broken image (and a run pod's disk is gone anyway). So each
PNG is embedded in the markdown as a base64 ``data:`` URI. The event log stores the metadata with every
materialization, so an image larger than ``max_bytes`` is downscaled (Pillow) until it fits; one wider than
``MAX_IMAGE_WIDTH`` too, since the UI's markdown dialog shows images at their natural size and clips wider ones.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from pathlib import Path

from dagster import MetadataValue, MarkdownMetadataValue
from PIL import Image

MAX_IMAGE_BYTES = 200_000  # per image, before base64 (which adds a third)
MAX_IMAGE_WIDTH = 1000  # CSS pixels: the metadata dialog of the Dagster UI is about 1,100 wide


def png_bytes(path: Path, max_bytes: int = MAX_IMAGE_BYTES, max_width: int = MAX_IMAGE_WIDTH) -> bytes:
    """The PNG at ``path``, downscaled (aspect kept, optimised PNG) until it is at most ``max_bytes`` and
    ``max_width`` pixels wide; the file's bytes as they are when it already is."""
    data = Path(path).read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    if len(data) <= max_bytes and image.width <= max_width:
        return data
    scale = min((max_bytes / len(data)) ** 0.5, max_width / image.width)
    while True:
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_bytes or size == (1, 1):
            return buffer.getvalue()
        scale *= 0.8


def png_data_uri(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """``data:image/png;base64,...`` of the PNG at ``path`` (downscaled as :func:`png_bytes` says)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(path, max_bytes)).decode("ascii")


def images_markdown(paths: Iterable[Path], max_bytes: int = MAX_IMAGE_BYTES) -> MarkdownMetadataValue:
    """Markdown showing each PNG of ``paths`` (other files are skipped) under its file name, embedded as data URIs.

    Empty input gives a line saying so rather than an empty value (the UI would show nothing at all).
    """
    parts = [
        f"**{p.name}**\n\n![{p.stem}]({png_data_uri(p, max_bytes)})\n"
        for p in map(Path, paths)
        if p.suffix.lower() == ".png"
    ]
    return MetadataValue.md("\n".join(parts) or "no plots")
