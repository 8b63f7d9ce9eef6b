"""The built book (`make book` -> _build/html): its pages, its references, and that it reads offline.

`make test` builds the book first and sets KDLIB_REQUIRE_BOOK=1, so a missing build (or a missing
Chromium) fails there; a plain `pytest` without a build skips these tests and says why.

The offline test opens pages in headless Chromium, driven over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: standard library only, no websocket client). The built site is served by
a local HTTP server on 127.0.0.1, and ``--host-resolver-rules`` makes every other host unresolvable.
The test records every request the page makes and asserts that none leaves 127.0.0.1, that every
local request is answered with 200, and that MathJax typeset every formula with its own fonts.
"""

from __future__ import annotations

import fcntl
import functools
import html.parser
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import needs

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
REQUIRED = os.environ.get("KDLIB_REQUIRE_BOOK") == "1"

INTRO = "book/intro.html"
TEMPERATURE = "notebooks/ch1_temperature_scaling.html"
BIBLIOGRAPHY = "book/bibliography.html"


def _missing(reason: str) -> None:
    """Fail under `make test` (KDLIB_REQUIRE_BOOK=1), skip otherwise."""
    if REQUIRED:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def html_dir() -> Path:
    if not (HTML / "index.html").is_file():
        _missing(f"no built book at {HTML}: run `make book` first")
    return HTML


def _read(html_dir: Path, page: str) -> str:
    path = html_dir / page
    assert path.is_file(), f"{page} is missing from the built book"
    return path.read_text(encoding="utf-8")


def _text(page_html: str) -> str:
    """The visible text of a page, whitespace collapsed (crude, but enough for content checks)."""
    page_html = re.sub(r"<(script|style)\b.*?</\1>", " ", page_html, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", page_html)
    for entity, char in (("&amp;", "&"), ("&#8217;", "’"), ("&#39;", "'"), ("&quot;", '"'), ("&nbsp;", " ")):
        text = text.replace(entity, char)
    return re.sub(r"\s+", " ", text)


class _AssetParser(html.parser.HTMLParser):
    """Collect the URLs a browser would fetch on its own: scripts, stylesheets, icons, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed") and a.get("src"):
            self.urls.append((tag, a["src"]))
        if tag == "link" and a.get("href"):
            rel = a.get("rel", "").lower()
            if any(
                r in rel for r in ("stylesheet", "preload", "icon", "modulepreload", "prefetch", "manifest")
            ):
                self.urls.append((f"link rel={rel}", a["href"]))
        if tag == "object" and a.get("data"):
            self.urls.append((tag, a["data"]))


def _is_external(url: str) -> bool:
    return bool(re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url, flags=re.I))


# --------------------------------------------------------------------------------------------
# Structure and content of the build
# --------------------------------------------------------------------------------------------


def test_index_leads_to_the_introduction(html_dir):
    index = _read(html_dir, "index.html")
    target = re.search(r'http-equiv="Refresh"\s+content="0;\s*url=([^"]+)"', index, flags=re.I)
    if target:  # Jupyter Book writes a redirect when the root page is not at the top level
        assert target.group(1) == INTRO
    else:
        assert "Why distil a network" in _text(index)
    assert (html_dir / INTRO).is_file()


def test_introduction_page(html_dir):
    page = _read(html_dir, INTRO)
    text = _text(page)
    for phrase in (
        "Rényi divergence in knowledge distillation",
        "dark knowledge",
        "zebra",
        "make book",
        "make test",
    ):
        assert phrase in text, f"intro lacks {phrase!r}"
    # The numbered equation exists and the {eq} reference to it resolved to a link with its number.
    assert 'id="equation-eq-intro-loss"' in page
    assert re.search(r'href="#equation-eq-intro-loss"[^>]*>\s*(?:<span[^>]*>)?\s*\(1\)', page), (
        "{eq} ref unresolved"
    )
    # Citations resolved to the bibliography page (author-year style).
    assert re.search(r'href="bibliography\.html#id\d+" title="Geoffrey Hinton, Oriol Vinyals', page), (
        "citation not linked"
    )
    # The sidebar lists the temperature page and the bibliography.
    assert 'href="../notebooks/ch1_temperature_scaling.html"' in page
    assert 'href="bibliography.html"' in page


def test_temperature_page(html_dir):
    page = _read(html_dir, TEMPERATURE)
    text = _text(page)
    assert "Temperature scaling" in text
    for value in ("0.6850", "0.1867", "0.1283", "0.9933"):  # the stored, nbval-verified outputs
        assert value in text, f"temperature page lacks the printed probability {value}"
    # Both glued figures are rendered as images that exist, with numbered captions.
    for name in ("fig-ts-bars", "fig-ts-sweep"):
        block = re.search(rf'<figure[^>]*id="{name}".*?</figure>', page, flags=re.S)
        assert block, f"figure {name} missing"
        img = re.search(r'<img[^>]*src="([^"]+)"', block.group(0))
        assert img and (html_dir / "notebooks" / unquote(img.group(1))).resolve().is_file()
        assert re.search(r"Fig\. \d", block.group(0)), f"figure {name} has no numbered caption"
    assert "prop-ts-entropy-monotone" in page  # the sphinx-proof proposition
    assert 'id="equation-eq-ts-softmax-t"' in page


def _bib_titles() -> dict[str, str]:
    from pybtex.database import parse_file

    db = parse_file(str(ROOT / "book" / "references.bib"))
    return {key: entry.fields["title"] for key, entry in db.entries.items()}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.replace("{", "").replace("}", "").lower()).strip()


def test_bibliography_lists_every_entry(html_dir):
    titles = _bib_titles()
    for key in (
        "hinton2015distilling",
        "vanerven2014renyi",
        "cho2019efficacy",
        "bucilua2006model",
        "renyi1961measures",
        "kullback1951information",
        "gratzer2025thesis",
    ):
        assert key in titles, f"references.bib lacks {key}"
    text = _norm(_text(_read(html_dir, BIBLIOGRAPHY)))
    missing = [key for key, title in titles.items() if _norm(title) not in text]
    assert not missing, f"bibliography page lacks {missing}"


def test_no_page_references_another_host_for_assets(html_dir):
    offenders = []
    for page in sorted(html_dir.rglob("*.html")):
        parser = _AssetParser()
        parser.feed(page.read_text(encoding="utf-8"))
        offenders += [
            f"{page.relative_to(html_dir)}: <{tag}> {url}" for tag, url in parser.urls if _is_external(url)
        ]
    for css in sorted((html_dir / "_static").rglob("*.css")):
        for url in re.findall(
            r"""url\(\s*['"]?([^'")]+)""", css.read_text(encoding="utf-8", errors="replace")
        ):
            if _is_external(url):
                offenders.append(f"{css.relative_to(html_dir)}: url({url})")
        for url in re.findall(
            r"""@import\s+['"]([^'"]+)""", css.read_text(encoding="utf-8", errors="replace")
        ):
            if _is_external(url):
                offenders.append(f"{css.relative_to(html_dir)}: @import {url}")
    assert not offenders, "assets from other hosts:\n" + "\n".join(offenders)


def test_mathjax_is_bundled(html_dir):
    page = _read(html_dir, INTRO)
    src = re.search(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert src, "the intro loads no MathJax"
    assert src.group(1).split("?")[0] == "../_static/mathjax/tex-chtml.js"  # Sphinx may add ?v=<checksum>
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert list((html_dir / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


# --------------------------------------------------------------------------------------------
# Headless Chromium: typesetting with no request leaving the machine
# --------------------------------------------------------------------------------------------


class _Recorder(SimpleHTTPRequestHandler):
    log: list[tuple[str, int]]

    def log_request(self, code="-", size="-") -> None:
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence stderr
        pass


class _DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe",
            # Any host other than the local server resolves to nothing: an external fetch cannot succeed.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        # The browser's ends of the pipes must be fds 3 and 4 in the browser: a tiny Python trampoline
        # moves them there (from fds >= 10, so the moves cannot collide) and execs Chromium.
        a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        trampoline = (
            f"import os, sys; os.dup2({a}, 3); os.dup2({b}, 4); os.close({a}); os.close({b}); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, chromium, *flags],
            pass_fds=(a, b),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(a)
        os.close(b)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe (crashed?)")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


# Runs in the page after load: waits for MathJax's first typesetting pass and the web fonts, then reports.
_TYPESET_PROBE = r"""
(async () => {
  if (!window.MathJax || !MathJax.startup) return {mathjax: false};
  await MathJax.startup.promise;
  await document.fonts.ready;
  const math = [...document.querySelectorAll('.math')];
  const body = document.querySelector('main') || document.body;
  return {
    mathjax: true,
    version: MathJax.version,
    math: math.length,
    typeset: math.filter(el => el.querySelector('mjx-container')).length,
    errors: document.querySelectorAll('mjx-merror, mjx-container [data-mjx-error]').length,
    raw_tex: /\\\(|\\\[|\$\$/.test(body.innerText),
    fonts_loaded: [...document.fonts].filter(f => f.family.includes('MJX') && f.status === 'loaded').length,
  };
})()
"""


def test_equations_typeset_offline_in_chromium(html_dir, tmp_path):
    chromium = (
        os.environ.get("KDLIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    needs(bool(chromium), "headless Chromium (for the offline-rendering test)",
          "`sudo apt-get install chromium` (Debian), or set KDLIB_CHROMIUM to a Chromium binary")

    _Recorder.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Recorder, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    browser = _DevTools(chromium, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Page", "Runtime"):
            browser.call(f"{domain}.enable", session=session)

        reports = {}
        for page in (INTRO, TEMPERATURE):
            browser.call("Page.navigate", {"url": f"{origin}/{page}"}, session=session)
            browser.wait_for("Page.loadEventFired", session)
            probe = {"expression": _TYPESET_PROBE, "awaitPromise": True, "returnByValue": True}
            result = browser.call("Runtime.evaluate", probe, session=session, timeout=90)
            assert "exceptionDetails" not in result, result
            reports[page] = result["result"]["value"]
        requests = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    finally:
        browser.close()
        server.shutdown()
        server.server_close()

    print(json.dumps(reports, indent=1))
    for page, r in reports.items():
        assert r["mathjax"], f"{page}: MathJax did not load"
        assert r["version"].startswith("3."), f"{page}: MathJax {r['version']}"
        assert r["math"] >= 3, f"{page}: expected formulas, found {r['math']}"
        assert r["typeset"] == r["math"], f"{page}: {r['math'] - r['typeset']} formulas not typeset"
        assert r["errors"] == 0, f"{page}: {r['errors']} TeX errors"
        assert not r["raw_tex"], f"{page}: raw TeX delimiters left in the text"
        assert r["fonts_loaded"] > 0, f"{page}: MathJax's fonts did not load"

    external = [
        u for u in requests if not (u.startswith(origin + "/") or u.startswith(("data:", "blob:", "about:")))
    ]
    assert not external, "requests left the machine:\n" + "\n".join(external)
    assert not failed, f"failed requests: {failed}"
    served = {unquote(urlsplit(path).path) for path, _ in _Recorder.log}
    assert f"/{INTRO}" in served and f"/{TEMPERATURE}" in served
    assert any(p.startswith("/_static/mathjax/") and p.endswith(".woff") for p in served), (
        "no MathJax font served"
    )
    # 304: a revalidated cached file. Chromium probes /favicon.ico on its own when a page declares no
    # icon; that is not the book's request.
    not_ok = [
        (path, code) for path, code in _Recorder.log if code not in (200, 304) and path != "/favicon.ico"
    ]
    assert not not_ok, f"local requests that failed: {not_ok}"
