"""The Dagster UI shows an asset's report image: headless Chromium opens the asset page that
`scripts/ui_screenshot.py` serves, and the screenshot holds the embedded plot (pixels compared with the PNG).

Needs Debian's chromium (`scripts/chromium.sh install`; `.ci/run` installs it): skipped when it is missing,
except in CI, where a missing browser fails."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "ui_screenshot.py"


@pytest.fixture
def chromium() -> str:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ui_screenshot import find_chromium
    finally:
        sys.path.remove(str(SCRIPT.parent))
    found = find_chromium()
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed: .ci/run installs it with scripts/chromium.sh")
        pytest.skip("chromium is not installed (Debian: `scripts/chromium.sh install` as root); CI installs it")
    return found


def test_the_asset_page_shows_the_report_image(chromium, tmp_path):
    from orchestration.defs.report_images import png_bytes

    image, shot = REPO / "reports" / "eval.png", tmp_path / "asset.png"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(shot), "--asset", "evaluation_report", "--metadata-key", "plot",
         "--image", str(image)],
        cwd=REPO, env=dict(os.environ, CHROMIUM=chromium), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["url"].endswith("/assets/evaluation_report")
    embedded = Image.open(io.BytesIO(png_bytes(image))).convert("L")
    (shown,) = [i for i in result["images"] if i["src_prefix"].startswith("data:image/png;base64,")]
    # loaded in the browser (a broken image has naturalWidth 0) and it is the embedded PNG
    assert (shown["naturalWidth"], shown["naturalHeight"]) == embedded.size
    # ... and it is on the screenshot: the pixels in its box are the plot's (a broken icon or a blank box is not)
    left, top, width, height = (round(v) for v in shown["box"])
    assert width > 100 and height > 100, shown
    screen = Image.open(shot).convert("L")
    assert left >= 0 and top >= 0 and left + width <= screen.width and top + height <= screen.height, shown
    crop = np.asarray(screen.crop((left, top, left + width, top + height)), dtype=float)
    expected = np.asarray(embedded.resize((width, height), Image.Resampling.LANCZOS), dtype=float)
    correlation = np.corrcoef(crop.ravel(), expected.ravel())[0, 1]
    assert correlation > 0.9, f"the screenshot's box does not show the plot (correlation {correlation:.2f})"
    assert np.abs(crop - expected).mean() < 15
