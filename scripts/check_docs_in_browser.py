"""Open the built docs in headless Chromium and check that math is typeset.

For each page: the page is served from ``site/`` on localhost, Chromium renders it with
JavaScript (``--dump-dom``), and the check asserts that KaTeX produced output
(``class="katex"``), that no raw ``$$`` or ``\\(`` is left in the rendered text, that the
console logged no JavaScript error, and (on tutorial pages) that the notebook's plots are in
the page. Screenshots go to ``--shots`` for a human to judge: the top of each page and, on
tutorial pages, a tall one that reaches its first plot.

    python scripts/check_docs_in_browser.py [--site site] [--shots site-screenshots]
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PAGES = ("concepts/", "api/miras_ref/", "tutorials/02_two_viewpoints/",
         "tutorials/04_retention_gates/")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]


#: height (px) of the tutorial screenshot that reaches down to the first plot
PLOT_SHOT_HEIGHT = 9000


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the report readable
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def chromium(args: list[str]) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def text_of(dom: str) -> str:
    """Visible text without scripts, styles, code and KaTeX's own MathML annotations."""
    dom = re.sub(r"<(script|style|code|pre|annotation)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def heading_before_first_plot(dom: str) -> str | None:
    """The id of the last heading above the page's first inline PNG (a notebook plot), or
    None when the page has no such image."""
    at = dom.find('src="data:image/png')
    if at < 0:
        return None
    ids = re.findall(r'<h[1-3][^>]*\bid="([^"]+)"', dom[:at])
    return ids[-1] if ids else ""


def check(site: Path, shots: Path) -> list[str]:
    server, port = serve(site)
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    try:
        for page in PAGES:
            url = f"http://127.0.0.1:{port}/{page}"
            run = chromium(["--dump-dom", url])
            dom = run.stdout
            n_katex = dom.count('class="katex"')
            text = text_of(dom)
            errors = [line for line in run.stderr.splitlines()
                      if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
            raw = [tok for tok in ("$$", "\\(", "\\[") if tok in text]
            print(f"{page:35s} katex elements: {n_katex:4d}  raw delimiters: {raw or 'none'}  "
                  f"console errors: {len(errors)}")
            if n_katex == 0:
                problems.append(f"{page}: no typeset math")
            if raw:
                problems.append(f"{page}: raw math delimiters left: {raw}")
            problems += [f"{page}: {e}" for e in errors]
            name = page.strip("/").replace("/", "_") or "index"
            chromium(["--window-size=1280,2400", f"--screenshot={shots / (name + '.png')}", url])
            if page.startswith("tutorials/"):
                anchor = heading_before_first_plot(dom)
                if anchor is None:
                    problems.append(f"{page}: no plot (data:image/png) in the rendered notebook")
                    continue
                print(f"{'':35s} first plot below #{anchor}")
                # headless Chromium paints nothing after scrolling to a fragment: take the
                # page from the top, tall enough to reach the first plot
                chromium([f"--window-size=1280,{PLOT_SHOT_HEIGHT}",
                          f"--screenshot={shots / (name + '_plot.png')}", url])
    finally:
        server.shutdown()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="site", type=Path)
    parser.add_argument("--shots", default="site-screenshots", type=Path)
    args = parser.parse_args(argv)
    if not (args.site / "index.html").exists():
        print(f"{args.site}/index.html not found: run `mkdocs build` first", file=sys.stderr)
        return 2
    problems = check(args.site, args.shots)
    for p in problems:
        print("FAIL", p)
    print("screenshots in", args.shots)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
