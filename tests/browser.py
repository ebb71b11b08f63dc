"""Render an HTML report in headless Chromium and report what loaded.

The slow tier opens report.html and sweep_report.html in a real browser (Debian's `chromium`;
.ci/run installs it when missing) to prove that every image decodes and every table lays out,
which an HTML parser cannot: a corrupt data URI or a broken relative path parses fine.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Appended to a copy of the page: once every resource has loaded, write what the browser saw
# into a <pre> that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({
    src: i.getAttribute("src").slice(0, 40), ok: i.complete && i.naturalWidth > 0,
    width: i.naturalWidth, height: i.naturalHeight}));
  const tables = [...document.querySelectorAll("table")].map(t => ({
    rows: t.rows.length, cells: t.rows.length ? t.rows[0].cells.length : 0,
    width: t.getBoundingClientRect().width}));
  const pre = document.createElement("pre");
  pre.id = "plusultra-probe";
  pre.textContent = JSON.stringify({images, tables, title: document.title});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The browser's executable; skips the test outside CI when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def render(page: Path) -> dict:
    """What headless Chromium loaded from ``page``: images (ok, size) and tables (rows, cells).

    The page is copied next to itself with the probe appended, so relative links resolve as
    they would for a reader.
    """
    text = page.read_text(encoding="utf-8")
    probed = page.with_name(f".probe-{page.name}")
    body_end = text.lower().rfind("</body>")
    probed.write_text(
        text[:body_end] + PROBE + text[body_end:] if body_end >= 0 else text + PROBE,
        encoding="utf-8",
    )
    try:
        proc = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probed.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probed.unlink(missing_ok=True)
    found = re.search(r'<pre id="plusultra-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium did not load {page}: {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def assert_renders(page: Path, min_images: int = 1, min_tables: int = 1) -> dict:
    """Every image of ``page`` decodes to a non-empty bitmap and every table has rows."""
    seen = render(page)
    broken = [i for i in seen["images"] if not i["ok"] or i["width"] < 50 or i["height"] < 50]
    assert not broken, f"{page}: images that did not load: {broken}"
    assert len(seen["images"]) >= min_images, seen["images"]
    empty = [t for t in seen["tables"] if t["rows"] < 2 or t["cells"] < 1 or t["width"] <= 0]
    assert not empty, f"{page}: tables without rows or width: {empty}"
    assert len(seen["tables"]) >= min_tables, seen["tables"]
    return seen
