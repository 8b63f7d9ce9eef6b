"""The built book (`make book` -> _build/html): its pages, its numbering, its references, and that it
reads offline without raw TeX or clipped equations.

`make test` builds the book first and sets KDLIB_REQUIRE_BOOK=1, so a missing build fails there; a
plain `pytest` without a build skips these tests and says why.

The browser tests drive Debian's headless Chromium with Playwright for Python
(``executable_path=/usr/bin/chromium``; Playwright's own browser download is never used). The built
site is served on 127.0.0.1; every request for another host is aborted *and recorded*, and the tests
assert that none was attempted. On every page, at a 1280 px window, MathJax must typeset every
formula with its own fonts, no TeX may be left in the text (a Markdown trap such as a line starting
with ``- `` inside ``$...$`` leaves it there), and no display equation may be wider than the box
that shows it (the rest would be behind an invisible scroller). A failure names the page and the
equation; ``test_browser_check_catches_planted_faults`` shows that the check catches both faults.
"""

from __future__ import annotations

import functools
import html.parser
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
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


def test_chapter_2_pages_fold_every_code_cell(html_dir):
    # the introduction promises that on chapter 2's pages the bookkeeping code is folded away; a page
    # regenerated from a script loses its cell tags silently, so both the notebooks and the HTML are checked
    assert "folded away" in _text(_read(html_dir, INTRO))
    pages = sorted((ROOT / "notebooks").glob("ch2_*.ipynb"))
    assert len(pages) >= 5
    for nb_path in pages:
        cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
        bare = [i for i, c in enumerate(cells) if "hide-input" not in c.get("metadata", {}).get("tags", [])]
        assert cells and not bare, f"{nb_path.name}: code cells {bare} are not folded (tag hide-input)"
        page = _read(html_dir, f"notebooks/{nb_path.stem}.html")
        assert page.count('class="cell_input') == len(cells)
        assert page.count('<details class="admonition hide above-input"') == len(cells), nb_path.name


def test_introduction_page(html_dir):
    page = _read(html_dir, INTRO)
    text = _text(page)
    for phrase in (
        "Rényi divergence in knowledge distillation",
        "dark knowledge",
        "zebra",
        "(B1.1)",
    ):
        assert phrase in text, f"intro lacks {phrase!r}"
    rerunning = _text(_read(html_dir, "book/rerunning.html"))
    for phrase in ("make book", "make test", "make pdf", "KDLIB_PROFILE"):
        assert phrase in rerunning, f"the rerunning page lacks {phrase!r}"
    # The loss carries the thesis's number, and the reference to it resolved to a link with that number.
    assert 'id="eq-intro-loss"' in page and r"\tag{1.13}" in page
    assert re.search(r'href="#eq-intro-loss"[^>]*>\s*(?:<span[^>]*>)?\s*\(1\.13\)', page), "ref unresolved"
    # The in-book section on rerunning and the notation page are linked.
    assert 'href="rerunning.html"' in page and 'href="notation.html"' in page
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
    assert 'id="eq-ts-softmax-t"' in page


def _bib_titles() -> dict[str, str]:
    from pybtex.database import parse_file

    db = parse_file(str(ROOT / "book" / "references.bib"))
    return {key: entry.fields["title"] for key, entry in db.entries.items()}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.replace("{", "").replace("}", "").lower()).strip()


def test_bibliography_lists_the_cited_works_only(html_dir):
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
    cited = set()
    for path in [*ROOT.glob("book/*.md"), *ROOT.glob("notebooks/*.ipynb")]:
        for keys in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", path.read_text(encoding="utf-8")):
            cited |= {k.strip() for k in keys.split(",")}
    assert cited <= set(titles), f"cited but not in references.bib: {sorted(cited - set(titles))}"
    assert set(titles) <= cited, f"in references.bib but cited nowhere: {sorted(set(titles) - cited)}"
    bib_page = _text(_read(html_dir, BIBLIOGRAPHY))
    text = _norm(bib_page)
    missing = [key for key, title in titles.items() if _norm(title) not in text]
    assert not missing, f"bibliography page lacks {missing}"
    # The thesis is cited as a dated master's thesis, not "n.d." / "In preparation".
    intro = _text(_read(html_dir, INTRO))
    assert "n.d." not in intro and "Grätzer, 2025" in intro
    assert "In preparation" not in bib_page and "Master's thesis" in bib_page


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
# Numbering: the thesis's numbers on the thesis's equations, the book's own in a scheme of its own
# --------------------------------------------------------------------------------------------

CHAPTER1 = {
    "temperature": "notebooks/ch1_temperature_scaling.html",
    "kl": "notebooks/ch1_kl_gradient.html",
    "t2": "notebooks/ch1_t2_scaling.html",
    "renyi": "notebooks/ch1_renyi_divergence.html",
    "rkd": "notebooks/ch1_renyi_distillation.html",
}

#: Thesis equation -> (page, the label of the display on that page that reproduces it).
THESIS_EQUATIONS = {
    "1.3": ("temperature", "eq-ts-softmax-t"),
    "1.4": ("kl", "eq-klg-definitions"),
    "1.8": ("kl", "eq-klg-gradient"),
    "1.11": ("t2", "eq-t2-loss"),
    "1.13": ("t2", "eq-t2-loss"),
    "1.15": ("t2", "eq-t2-thesis-approximation"),
    "1.16": ("renyi", "eq-rd-definition"),
    "1.20": ("renyi", "eq-rd-conditional"),
    "1.27": ("renyi", "eq-rd-order-zero"),
    "1.31": ("renyi", "eq-rd-order-one"),
    "1.33": ("renyi", "eq-rd-order-infinity"),
}

THESIS_TAG = re.compile(r"^1\.(?:[1-9]|[12][0-9]|3[0-3])$")  # (1.1)-(1.33), the thesis's range
BOOK_TAG = re.compile(r"^B[12]\.[1-9][0-9]*$")  # (B1.1), (B2.1): the book's own


def _book_pages(html_dir: Path) -> list[str]:
    """Every content page of the build (not Sphinx's generated index, search and redirect pages)."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir).as_posix()
        if rel.startswith("_") or rel in ("index.html", "genindex.html", "search.html", "prf-prf.html"):
            continue
        pages.append(rel)
    return pages


def _displays(page_html: str) -> dict[str, str]:
    """Label -> the TeX of the display it labels (MyST writes ``(label)=`` as the display's id)."""
    out = {}
    pattern = r'<div class="(?:amsmath )?math notranslate nohighlight" id="([^"]+)">(.*?)</div>'
    for m in re.finditer(pattern, page_html, re.S):
        out[m.group(1)] = m.group(2)
    return out


def _tags(tex: str) -> list[str]:
    return re.findall(r"\\tag\{([^}]*)\}", tex)


def test_thesis_equations_carry_the_thesis_numbers(html_dir):
    displays = {key: _displays(_read(html_dir, page)) for key, page in CHAPTER1.items()}
    wrong = []
    for number, (page, label) in THESIS_EQUATIONS.items():
        tex = displays[page].get(label)
        if tex is None:
            wrong.append(f"({number}): no display labelled {label} on {CHAPTER1[page]}")
        elif number not in _tags(tex):
            wrong.append(f"({number}): {label} on {CHAPTER1[page]} is tagged {_tags(tex)}")
    assert not wrong, "\n".join(wrong)


def test_every_equation_number_is_the_thesis_s_or_the_book_s(html_dir):
    """No number Sphinx assigns (which would collide with the thesis's), and every tag in one of the
    two schemes; the book's own numbers are not reused."""
    bad, seen = [], {}
    for page in _book_pages(html_dir):
        page_html = _read(html_dir, page)
        if 'class="eqno"' in page_html:
            bad.append(f"{page}: an equation numbered by Sphinx")
        for tag in _tags(page_html):
            if THESIS_TAG.match(tag):
                continue
            if not BOOK_TAG.match(tag):
                bad.append(f"{page}: tag ({tag}) is in neither scheme")
            elif seen.setdefault(tag, page) != page:
                bad.append(f"{page}: (B) number ({tag}) also used on {seen[tag]}")
        # Blocks: no "Theorem 1.2" that could be read as the thesis's numbering.
        for title in re.findall(r'<p class="admonition-title"[^>]*>(.*?)</p>', page_html, re.S):
            title = _text(title).strip()
            if re.match(r"(Theorem|Lemma|Proposition|Definition|Corollary) \d", title) and (
                "of the thesis" not in title
            ):
                bad.append(f"{page}: block numbered like the thesis: {title!r}")
    assert not bad, "\n".join(bad)


def test_equation_references_show_the_number_of_their_target(html_dir):
    tags = {}
    for page in _book_pages(html_dir):
        for label, tex in _displays(_read(html_dir, page)).items():
            if _tags(tex):
                tags[label] = _tags(tex)
    assert len(tags) >= 30, f"only {len(tags)} tagged displays found"
    wrong, checked = [], 0
    for page in _book_pages(html_dir):
        for m in re.finditer(r'<a class="reference internal" href="[^"#]*#([^"]+)"[^>]*>(.*?)</a>',
                             _read(html_dir, page), re.S):
            label, text = m.group(1), _text(m.group(2)).strip()
            if label not in tags:
                continue
            checked += 1
            shown = re.findall(r"\(([^()]+)\)", text)
            if not shown or not set(shown) <= set(tags[label]) | {t for t in shown if t in tags[label]}:
                wrong.append(f"{page}: link to {label} reads {text!r}, the display is tagged {tags[label]}")
    assert checked >= 40, f"only {checked} equation references found"
    assert not wrong, "\n".join(wrong)


def test_navigation(html_dir):
    intro = _read(html_dir, INTRO)
    captions = re.findall(r'class="caption"[^>]*><span class="caption-text">([^<]+)<', intro)
    assert captions == ["Theory", "Experiments", "Back matter"], captions
    # The chapter-2 landing page has no sections of its own numbered after its children, and no
    # landing page lists its children twice (a prose list and a toctree).
    for page in ("book/chapter1.html", "book/chapter2.html"):
        article = _read(html_dir, page).split('<article class="bd-article">', 1)[1].split("</article>", 1)[0]
        toctree = re.search(r'<div class="toctree-wrapper.*?</div>', article, re.S)
        assert not toctree or "<li" not in toctree.group(0), f"{page} lists its children twice"
        assert not re.search(r"<h2", article), f"{page} has numbered sections of its own"
    # The proof index (it listed internal labels and nothing linked to it) is gone from every page.
    for page in _book_pages(html_dir):
        assert "prf-prf.html" not in _read(html_dir, page), f"{page} links the proof index"


def test_download_buttons_work_offline(html_dir):
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = _read(html_dir, f"notebooks/{path.stem}.html")
        for suffix in (".ipynb", ".md"):
            link = f"../_sources/notebooks/{path.stem}{suffix}"
            assert f'href="{link}"' in page, f"{path.stem}: no {suffix} download"
            assert (html_dir / "_sources" / "notebooks" / f"{path.stem}{suffix}").is_file()
        md = (html_dir / "_sources" / "notebooks" / f"{path.stem}.md").read_text(encoding="utf-8")
        assert md.startswith("---\njupytext:") and "```{code-cell} ipython3" in md
    assert (html_dir / "_sources" / "book" / "intro.md").is_file()


# --------------------------------------------------------------------------------------------
# Headless Chromium (Playwright): typesetting, raw TeX, clipping, with no request leaving the machine
# --------------------------------------------------------------------------------------------


def _chromium() -> str:
    path = os.environ.get("KDLIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    needs(bool(path), "headless Chromium (for the browser tests of the book)",
          "`sudo apt-get install chromium` (Debian), or set KDLIB_CHROMIUM to a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        needs(False, "Playwright for Python (the test extra)", "`pip install -c constraints.txt -e .[test]`")
    return path


class _Recorder(SimpleHTTPRequestHandler):
    log: list[tuple[str, int]]

    def log_request(self, code="-", size="-") -> None:
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence stderr
        pass


class _Site:
    """A local server for ``root`` and a browser context that may reach nothing else.

    Every request is recorded; one for any host other than the server's is aborted before it leaves
    (Playwright's routing), and recorded in ``blocked``."""

    def __init__(self, root: Path, browser) -> None:
        handler = type("Recorder", (_Recorder,), {"log": []})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.log = handler.log
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 900}, service_workers="block"
        )
        self.context.route("**/*", self._route)
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        self.page = self.context.new_page()

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.origin + "/") or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def probe(self, page: str) -> dict:
        self.page.goto(f"{self.origin}/{page}", wait_until="load")
        return self.page.evaluate(_PROBE)

    def close(self) -> None:
        self.context.close()
        self.server.shutdown()
        self.server.server_close()


# Runs in a loaded page: waits for MathJax and its fonts, then reports every formula that was not
# typeset or raised a TeX error, every piece of TeX left in the visible text, and every display
# equation wider than the box that shows it, each with the TeX of the equation.
_PROBE = r"""
async () => {
  const main = document.querySelector('article') || document.querySelector('main') || document.body;
  const out = {mathjax: false, math: 0, typeset: 0, errors: [], raw: [], clipped: [], fonts_loaded: 0};
  if (window.MathJax && MathJax.startup) {
    await MathJax.startup.promise;
    await document.fonts.ready;
    out.mathjax = true;
    out.version = MathJax.version;
    const els = [...main.querySelectorAll('.math')];
    out.math = els.length;
    out.typeset = els.filter(el => el.querySelector('mjx-container')).length;
    const col = main.getBoundingClientRect();
    for (const item of MathJax.startup.document.math) {
      const root = item.typesetRoot;
      if (!root || !main.contains(root)) continue;
      const tex = item.math.replace(/\s+/g, ' ').trim().slice(0, 160);
      if (root.querySelector('mjx-merror, [data-mjx-error]')) out.errors.push(tex);
      if (!item.display) continue;
      let hidden = 0, scrolls = true;  // width behind a scroller: the equation's box or any box around it
      for (let el = root; el && el !== main; el = el.parentElement) {
        const extra = el.scrollWidth - el.clientWidth;
        if (extra > 1) {  // a box narrower than its content: it must let the reader scroll to the rest
          scrolls = scrolls && ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
        }
        hidden = Math.max(hidden, extra);
      }
      const r = (root.querySelector('mjx-math') || root).getBoundingClientRect();
      // beyond the text column (only where no box scrolls)
      const outside = hidden > 1 ? 0 : Math.max(0, r.right - col.right, col.left - r.left);
      const px = Math.round(Math.max(hidden, outside));
      if (px > 1) out.clipped.push({tex, px, scrolls: hidden > 1 && scrolls});
    }
    out.fonts_loaded = [...document.fonts]
      .filter(f => f.family.includes('MJX') && f.status === 'loaded').length;
  }
  out.page_overflow = document.documentElement.scrollWidth - window.innerWidth;  // the page scrolls sideways
  const skip = 'script, style, pre, code, mjx-container, .highlight, textarea';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);  // sidebar too
  const tex = /\\[A-Za-z]{2,}|\\[()\[\]]|\$\$|\$[^$\s][^$]*\$/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest(skip)) continue;
    const text = n.textContent.replace(/\s+/g, ' ');
    const m = text.match(tex);
    if (m) out.raw.push(text.slice(Math.max(0, m.index - 40), m.index + 60).trim());
  }
  return out;
}
"""

#: Display equations known to be too wide that live in files this book does not own, with the reason.
#: (Each entry is matched against the start of the equation's TeX; keep this list empty if you can.)
KNOWN_WIDE: dict[str, dict[str, str]] = {}

#: Pages checked at 400 px only for typesetting and raw TeX, not for width, with the reason (open work).
KNOWN_NARROW_WIDE = {
    "book/api.html": "inside autodoc's definition lists the long docstring equations widen the page "
                     "(MathJax's assistive MathML sticks out of the scrolling box) instead of scrolling",
}


def _faults(page: str, report: dict, expect_math: bool, width: int = 1280) -> list[str]:
    """What is wrong with a probed page. At 1280 px no display equation may be wider than its box. At a
    narrow window (400 px, a phone) a long equation may be wider than the column, but then only in a
    box that scrolls sideways (``overflow-x: auto``, book/_ext/static/companion.css): the reader can
    reach the rest, the page itself does not scroll, and the equation number stays with it."""
    faults = []
    if expect_math:
        if not report["mathjax"]:
            return [f"{page}: MathJax did not load"]
        if report["typeset"] != report["math"]:
            missing = report["math"] - report["typeset"]
            faults.append(f"{page}: {missing} of {report['math']} formulas not typeset")
        if report["fonts_loaded"] == 0 and report["math"]:
            faults.append(f"{page}: MathJax's fonts did not load")
    faults += [f"{page}: TeX error in {tex}" for tex in report["errors"]]
    faults += [f"{page}: raw TeX in the text: ...{raw}..." for raw in report["raw"]]
    for c in report["clipped"]:
        if any(c["tex"].startswith(k) for k in KNOWN_WIDE.get(page, {})):
            continue
        if width < 1280 and c["scrolls"]:
            continue
        faults.append(f"{page}: display equation clipped by {c['px']} px at {width} px: {c['tex']}")
    return faults


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright (its own browser download is never used)."""
    path = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser(html_dir, chromium) -> Iterator[_Site]:
    site = _Site(html_dir, chromium)
    yield site
    site.close()


def test_every_page_typesets_offline_without_raw_tex_or_clipped_equations(html_dir, browser):
    reports, faults = {}, []
    for page in _book_pages(html_dir):
        page_html = _read(html_dir, page)
        reports[page] = r = browser.probe(page)
        has_math = bool(re.search(r'<(div|span) class="[^"]*\bmath\b', page_html))
        faults += _faults(page, r, expect_math=has_math)
    print(json.dumps({p: {k: r[k] for k in ("math", "typeset")} for p, r in reports.items()}, indent=1))
    assert not faults, "\n".join(faults)
    assert reports[INTRO]["version"].startswith("3."), reports[INTRO]["version"]
    assert reports[TEMPERATURE]["math"] >= 3

    # Offline: nothing was even attempted outside the local server, and everything local was served.
    assert not browser.blocked, "requests for other hosts (aborted):\n" + "\n".join(browser.blocked)
    local = (browser.origin + "/", "data:", "blob:", "about:")
    external = [u for u in browser.requests if not u.startswith(local)]
    assert not external, "requests left the machine:\n" + "\n".join(external)
    assert not browser.failed, f"failed requests: {browser.failed}"
    served = {unquote(urlsplit(path).path) for path, _ in browser.log}
    assert f"/{INTRO}" in served and f"/{TEMPERATURE}" in served
    assert any(p.startswith("/_static/mathjax/") and p.endswith(".woff") for p in served), "no MathJax font"
    # 304: a revalidated cached file. Chromium probes /favicon.ico on its own when a page declares no
    # icon; that is not the book's request.
    not_ok = [(path, code) for path, code in browser.log if code not in (200, 304) and path != "/favicon.ico"]
    assert not not_ok, f"local requests that failed: {not_ok}"


def test_every_page_at_400px_typesets_and_scrolls_long_equations_in_their_box(html_dir, browser):
    """A phone-sized window: every formula typeset, no raw TeX, and an equation wider than the column
    scrolls inside its own box (a visible scroller; accepted at this width, see :func:`_faults`)."""
    faults, scrolled = [], 0
    browser.page.set_viewport_size({"width": 400, "height": 900})
    try:
        for page in _book_pages(html_dir):
            has_math = bool(re.search(r'<(div|span) class="[^"]*\bmath\b', _read(html_dir, page)))
            r = browser.probe(page)
            if page in KNOWN_NARROW_WIDE:
                r = {**r, "clipped": [], "page_overflow": 0}
            faults += _faults(page, r, expect_math=has_math, width=400)
            scrolled += sum(c["scrolls"] for c in r["clipped"])
            if r["page_overflow"] > 1:
                faults.append(f"{page}: the page scrolls sideways by {r['page_overflow']} px at 400 px")
    finally:
        browser.page.set_viewport_size({"width": 1280, "height": 900})
    print(f"{scrolled} display equations scroll in their box at 400 px")
    assert not faults, "\n".join(faults)


def test_browser_check_catches_planted_faults(html_dir, chromium, tmp_path):
    """A copy of a real page with a raw-TeX line (the Markdown list trap), an over-long display
    equation and a request for another host: the check names all three."""
    site = tmp_path / "site"
    (site / "book").mkdir(parents=True)
    (site / "_static").symlink_to(html_dir / "_static")
    page = _read(html_dir, "book/chapter1.html")
    planted = (
        '<p>the variance is</p><ul><li><p>(1-\\alpha)$\\operatorname{Var}(\\mathbf z)$ leaks</p></li></ul>'
        '<div class="math notranslate nohighlight">\\['
        + " + ".join(f"\\frac{{a_{{{i}}}}}{{b_{{{i}}}}}" for i in range(60))
        + "\\]</div>" '<img src="https://example.org/tracker.png" alt="">'
    )
    page = page.replace('<section', planted + "<section", 1)
    (site / "book" / "planted.html").write_text(page, encoding="utf-8")
    b = _Site(site, chromium)
    try:
        faults = _faults("book/planted.html", b.probe("book/planted.html"), expect_math=True)
    finally:
        b.close()
    assert any("raw TeX in the text" in f and "operatorname{Var}" in f for f in faults), faults
    long_one = "\\frac{a_{0}}{b_{0}} + \\frac{a_{1}}"
    assert any("display equation clipped" in f and long_one in f for f in faults), faults
    assert all(f.startswith("book/planted.html: ") for f in faults)
    assert b.blocked == ["https://example.org/tracker.png"], b.blocked
