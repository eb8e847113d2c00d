"""Open the built docs in headless Chromium and check that math is typeset.

For each page: the page is served from ``site/`` on localhost, Chromium renders it with
JavaScript (``--dump-dom``), and the check asserts that KaTeX produced output
(``class="katex"``), that no raw ``$$`` or ``\\(`` is left in the rendered text, and that the
console logged no JavaScript error. Screenshots go to ``--shots`` for a human to judge.

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

PAGES = ("concepts/", "tutorials/02_two_viewpoints/", "tutorials/04_retention_gates/")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]


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
