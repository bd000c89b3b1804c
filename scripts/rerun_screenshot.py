"""Screenshot a recording in rerun's web viewer, headless: for checking a layout by eye on a machine without a
display (not a dependency of genctl; not run by the tests).

Needs a Chromium and Playwright, outside the project's venv:
    apt-get install -y chromium && python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    /tmp/pw/bin/python scripts/rerun_screenshot.py runs/demo-gmpo/rollouts.rrd docs/img/eval.png --tab 2

It starts ``rerun --serve-web`` on 127.0.0.1 for the .rrd, opens the viewer, waits (the web viewer needs a real
wait, ~40 s on a CPU with the software rasteriser, longer on a busy machine: a screenshot taken earlier shows
"Loading" or half-streamed plots), saves the screenshot, then one more per ``--tab N`` after clicking tab N.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RERUN = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "rerun"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rrd")
    ap.add_argument("out", help="PNG path; tab screenshots get -tabN before the suffix")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds before the first screenshot")
    ap.add_argument("--tab", type=int, action="append", default=[], help="also click tab N (0-based) and shoot")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    # its own process group: the venv's `rerun` is a wrapper that starts the real binary, and terminating only
    # the wrapper would leave the viewer server running (and using a core) after this script ends
    server = subprocess.Popen([str(RERUN), "--serve-web", "--bind", "127.0.0.1", "--port", "9876",
                               "--web-viewer-port", "9090", args.rrd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = "http://127.0.0.1:9090/?url=rerun%2Bhttp%3A%2F%2F127.0.0.1%3A9876%2Fproxy"
    out = Path(args.out)
    try:
        time.sleep(3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=[
                "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            time.sleep(args.wait)
            page.screenshot(path=str(out))
            print(f"wrote {out}")
            for n in args.tab:
                # the tab bar is the first row under the top panel; tabs are ~190 px apart at this width
                page.mouse.click(80 + 190 * n, 50)
                time.sleep(5)
                shot = out.with_name(f"{out.stem}-tab{n}{out.suffix}")
                page.screenshot(path=str(shot))
                print(f"wrote {shot}")
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
