"""The README's picture of the page: serve the bundled models, drop one image, screenshot.

    python tools/screenshot_page.py tests/fixtures/busbra/Images/bus_0007-l.png docs/images/page.png
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

PORT = 8765


def main(image: str, out: str) -> None:
    server = subprocess.Popen([sys.executable, "-m", "busdx.cli.main", "serve", "--port",
                               str(PORT)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"http://127.0.0.1:{PORT}/")
            page.set_input_files("#file", image)
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            time.sleep(0.5)
            page.screenshot(path=out)
            browser.close()
    finally:
        server.terminate()
    print(f"wrote {Path(out)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
