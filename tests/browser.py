"""A page as headless Chromium renders it: how many of its images decoded, how tall it is, and a screenshot.

Used by the report and comparison-page tests; they skip, with a reason, where Chromium is not installed (.ci/run
installs Debian's chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Appended to a copy of the page: after load, it records on <body> how many images decoded, and the page's height.
CHECKER = (
    "<script>\n"
    "window.addEventListener('load', () => {\n"
    "  const images = [...document.images];\n"
    "  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;\n"
    "  document.body.setAttribute('data-check', "
    "`images=${images.length} loaded=${loaded} height=${document.body.scrollHeight}`);\n"
    "});\n"
    "</script></body>"
)


class Chromium:
    def __init__(self, workdir: Path):
        """Its profile and the probe pages go under `workdir`, never beside the page under test."""
        self.workdir = workdir
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            pytest.skip("no headless Chromium installed (.ci/run installs Debian's chromium)")
        self.flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        self.flags += ["--no-first-run", "--disable-background-networking", "--disable-component-update"]
        self.flags += ["--disable-sync", f"--user-data-dir={workdir / 'chromium-profile'}"]

    def run(self, *args: str) -> str:
        return subprocess.run([*self.flags, *args], capture_output=True, text=True, timeout=120).stdout

    def images_and_height(self, page: Path) -> tuple[str, int]:
        """('images=N loaded=M', height in pixels) of `page` once loaded; the DOM's tail when the check is missing."""
        probe = self.workdir / f"probe-{page.name}"  # the pages embed their images, so they load from here too
        probe.write_text(page.read_text().replace("</body>", CHECKER))
        dom = self.run("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
        assert 'data-check="' in dom, dom[-500:]
        check = dom.split('data-check="')[1].split('"')[0]
        images, height = check.split(" height=")
        return images, int(height)

    def screenshot_contrast(self, page: Path, shot: Path) -> float:
        """The standard deviation of a grey 1200x2400 screenshot of `page`: a blank page gives about 0."""
        self.run(f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
        return float(np.asarray(Image.open(shot).convert("L")).std())
