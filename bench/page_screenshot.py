"""The page at / as a user sees it, for the README: `neumeta serve` on its default set (what `make run` serves),
headless Chromium (Debian's) through Playwright, the control moved to a width, saved as a PNG.

    .venv/bin/python bench/page_screenshot.py --out docs/page.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

BIN = Path(sys.executable).parent / "neumeta"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/page.png"))
    parser.add_argument("--ratio", type=float, default=0.25, help="where the control is put")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "NEUMETA_CHECKPOINTS"}
    proc = subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 1200})
            page.goto(f"{url}/")
            page.wait_for_selector("#main:not([hidden])")
            page.select_option("#mode", "ratio")
            page.fill("#value", str(args.ratio))
            page.wait_for_function("document.getElementById('o-width').textContent !== '-'")
            page.wait_for_timeout(300)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
