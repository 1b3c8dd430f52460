#!/usr/bin/env python
"""Screenshot of a Dagster asset page with its report image, taken in a real browser (headless Chromium).

    .venv/bin/python scripts/ui_screenshot.py --out docs/screenshots/dagster-asset-report.png

What it does, so that what a user sees is what is checked:

1. a temporary Dagster instance (``DAGSTER_HOME`` in a temp folder; the project's ``.dagster`` is never touched)
   gets a materialization of the asset (default ``evaluation_report``) whose metadata is built by the same function
   the asset uses (:func:`orchestration.defs.report_images.images_markdown`) from report PNGs (``--image``, default
   ``reports/eval.png``, the last pipeline run's plot); ``--dagster-home`` reuses an existing instance instead (e.g.
   ``.dagster`` after ``make run``), showing whatever its last materialization holds (only the instance's "welcome
   dialog seen" flag, ``.nux/nux.yaml``, is written there);
2. ``dagster-webserver`` serves the project's definitions (``-m orchestration.definitions``) on a free port;
3. Chromium (``--headless``, driven over the DevTools protocol on a local port) opens ``/assets/<key>``, clicks
   the metadata entry's "[Show Markdown]" (long markdown opens in a dialog; short markdown is shown in the row),
   waits until the images have loaded and takes the screenshot.

It prints one JSON object: the entry's images with their natural size and box on the screenshot (CSS pixels =
screenshot pixels), and the screenshot path; it exits 1 when no image loaded (a broken image has ``naturalWidth``
0). ``tests/test_ui_screenshot.py`` runs it and compares the screenshot's pixels in that box with
the PNG. Chromium: Debian's ``chromium`` package (``scripts/chromium.sh install``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]
WIDTH, HEIGHT = 1400, 1400


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or ``chromium-browser`` / ``google-chrome``) on PATH; ``CHROMIUM`` wins."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, timeout_s: float, probe, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            found = probe()
            if found:
                return found
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{what}: the process exited ({proc.returncode}):\n{tail}")
        if time.time() > deadline:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{what}: not ready within {timeout_s:.0f} s\n{tail}")
        time.sleep(0.5)


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def _background(args: list[str], log: Path, **kw) -> Iterator[subprocess.Popen]:
    """``args`` in its own process group (its children stop with it), output to ``log``."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        try:
            yield proc
        finally:
            _stop_group(proc)


def prepare_instance(home: Path, asset: str, images: list[Path], metadata_key: str) -> None:
    """A fresh instance in ``home`` holding one materialization of ``asset`` with ``images`` in its metadata."""
    from dagster import AssetMaterialization, DagsterInstance

    from orchestration.defs.report_images import images_markdown

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=asset, metadata={metadata_key: images_markdown(images)},
                                 description="report images (scripts/ui_screenshot.py)")
        )


def skip_welcome_dialog(home: Path) -> None:
    """Mark the instance's "join the Dagster community" dialog as seen (what its Skip button does), so it does not
    cover the page."""
    (home / ".nux").mkdir(parents=True, exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")


class DevTools:
    """The few Chrome DevTools Protocol calls this needs, over the page's websocket (``websockets.sync``)."""

    def __init__(self, ws):
        self._ws = ws
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


# The metadata row named KEY: long markdown shows as "[Show Markdown]", which opens it in a dialog (clicked here);
# short markdown is rendered in the row itself. "dialog" / "inline", or false while the row is not there yet.
_SHOW_ENTRY = """(() => {
  const rows = [...document.querySelectorAll('tr')].filter(r => r.cells.length && r.cells[0].innerText.trim() === KEY);
  if (!rows.length) return false;
  for (const row of rows) {
    const button = [...row.querySelectorAll('*')].find(e => e.children.length === 0 && e.innerText.trim() === '[Show Markdown]');
    if (button) { button.click(); return 'dialog'; }
  }
  return 'inline';
})()"""

# The images of the entry (in the open dialog, or in the row): loaded or not, natural size and on-screen box.
_IMAGES = """(() => {
  const rows = [...document.querySelectorAll('tr')].filter(r => r.cells.length && r.cells[0].innerText.trim() === KEY);
  const scope = document.querySelector('[role="dialog"]') || rows[0] || document.body;
  return [...scope.querySelectorAll('img')].map(img => {
    const r = img.getBoundingClientRect();
    return {src_prefix: (img.getAttribute('src') || '').slice(0, 30), complete: img.complete,
            naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, alt: img.alt,
            box: [r.left, r.top, r.width, r.height]};
  });
})()"""


def screenshot_asset_page(url: str, metadata_key: str, out: Path, chromium: str, timeout_s: float = 120) -> dict:
    """Open ``url`` in headless Chromium, show ``metadata_key``'s markdown, wait for its image, save ``out``."""
    with tempfile.TemporaryDirectory(prefix="mufasa-chromium-") as profile:
        log = Path(profile) / "chromium.log"
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        with _background(args, log) as proc:
            port_file = Path(profile) / "DevToolsActivePort"
            port = _wait("chromium DevTools", 60, lambda: port_file.read_text().split()[0], proc, log)
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(p for p in pages if p["type"] == "page")
            from websockets.sync.client import connect

            with connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
                tools = DevTools(ws)
                tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                           mobile=False)
                tools.call("Page.navigate", url=url)
                key = json.dumps(metadata_key)
                shown = _wait(f"the metadata entry {metadata_key!r} on {url}", timeout_s,
                              lambda: tools.evaluate(_SHOW_ENTRY.replace("KEY", key)))
                find_images = _IMAGES.replace("KEY", key)

                def loaded():
                    images = tools.evaluate(find_images)
                    return images if images and all(i["complete"] for i in images) else None

                try:
                    _wait("the report image", 30, loaded)
                except RuntimeError:
                    pass  # reported below: no image, or one that did not load
                time.sleep(1)  # the dialog's opening transition: boxes measured where the screenshot sees them
                images = tools.evaluate(find_images) or []
                shot = tools.call("Page.captureScreenshot", format="png")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(base64.b64decode(shot["data"]))
    return {"url": url, "screenshot": str(out), "shown": shown, "images": images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "dagster-asset-report.png")
    parser.add_argument("--asset", default="evaluation_report")
    parser.add_argument("--metadata-key", default="plot")
    parser.add_argument("--image", type=Path, nargs="+", default=[ROOT / "reports" / "eval.png"],
                        help="the PNG(s) to show (default: the last pipeline run's evaluation plot)")
    parser.add_argument("--dagster-home", type=Path, default=None,
                        help="reuse this instance (its last materialization of --asset) instead of a temporary one")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the webserver and for the page")
    args = parser.parse_args(argv)

    chromium = find_chromium()
    if chromium is None:
        print("chromium not found: `scripts/chromium.sh install` (Debian's package) or set CHROMIUM", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mufasa-ui-") as tmp:
        home = args.dagster_home.resolve() if args.dagster_home else Path(tmp) / "dagster_home"
        if args.dagster_home is None:
            prepare_instance(home, args.asset, [p.resolve() for p in args.image], args.metadata_key)
        elif not (home / "dagster.yaml").is_file():
            parser.error(f"--dagster-home {home}: no dagster.yaml there (not a Dagster instance folder)")
        skip_welcome_dialog(home)
        port = _free_port()
        env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONPATH=str(ROOT))
        log = Path(tmp) / "webserver.log"
        webserver = [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "orchestration.definitions",
                     "-h", "127.0.0.1", "-p", str(port)]
        with _background(webserver, log, cwd=ROOT, env=env) as proc:
            base = f"http://127.0.0.1:{port}"
            _wait("dagster-webserver", args.timeout, lambda: urllib.request.urlopen(f"{base}/server_info", timeout=5),
                  proc, log)
            result = screenshot_asset_page(f"{base}/assets/{args.asset}", args.metadata_key, args.out.resolve(),
                                           chromium, args.timeout)
    print(json.dumps(result))
    ok = any(i["naturalWidth"] > 0 for i in result["images"])
    if not ok:
        print(f"no report image loaded on {result['url']}: {result['images']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
