"""The book's own Sphinx extension (loaded through ``local_extensions`` in ``_config.yml``).

- **Repository link, configurable.** ``companion_repository_url`` in ``_config.yml`` (under
  ``sphinx.config``), or the environment variable ``KDLIB_REPOSITORY_URL`` for one build, turns on the
  repository, issue and edit buttons; with no URL the book shows none of them (rather than a link
  to nowhere).
- **.md downloads of notebook pages.** Every notebook page is also written to ``_sources`` as a MyST
  Markdown notebook (the format Jupytext and MyST-NB read), and the page's download menu offers it
  next to the ``.ipynb``. Both are plain files of the built site, so they download offline.
- **The companion's styles** (``book/_ext/static/companion.css``): experiment tables and provenance
  blocks of :mod:`kdlib.report`, and display equations that scroll in their own box at narrow widths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config

REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button", "use_edit_page_button")


def configure_repository(app: Sphinx | None, config: Config) -> None:
    """Take the repository URL from ``KDLIB_REPOSITORY_URL`` or ``_config.yml``; no URL, no buttons."""
    options = dict(config.html_theme_options or {})
    url = os.environ.get("KDLIB_REPOSITORY_URL", "").strip() or str(config.companion_repository_url).strip()
    for key in REPOSITORY_BUTTONS:
        options[key] = bool(url)
    if url:
        options["repository_url"] = url.rstrip("/")
        options["repository_branch"] = config.companion_repository_branch
        options["path_to_docs"] = ""
    else:
        options.pop("repository_url", None)
    config.html_theme_options = options


def notebook_to_myst(notebook: dict) -> str:
    """A notebook as MyST Markdown (Jupytext's ``myst`` format): markdown cells as text, code as cells."""
    language = notebook.get("metadata", {}).get("kernelspec", {}).get("language", "python")
    lines = [
        "---",
        "jupytext:",
        "  text_representation:",
        "    extension: .md",
        "    format_name: myst",
        "kernelspec:",
        "  display_name: Python 3",
        f"  language: {language}",
        "  name: python3",
        "---",
        "",
    ]
    previous = None
    for cell in notebook["cells"]:
        source = "".join(cell["source"]).rstrip("\n")
        if cell["cell_type"] == "markdown":
            if previous == "markdown":
                lines += ["+++", ""]
            lines += [source, ""]
        elif cell["cell_type"] == "code":
            fence = "````" if "```" in source else "```"
            lines.append(f"{fence}{{code-cell}} ipython3")
            tags = cell.get("metadata", {}).get("tags")
            if tags:
                lines.append(f":tags: [{', '.join(tags)}]")
                lines.append("")
            lines += [source, fence, ""]
        previous = cell["cell_type"]
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_name(pagename: str) -> str:
    return f"{pagename}.md"


def add_markdown_download(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Offer the page's MyST Markdown next to its .ipynb in the download menu of a notebook page."""
    if context.get("page_source_suffix") != ".ipynb":
        return
    for group in context.get("header_buttons", []):
        if group.get("label") != "download-buttons":
            continue
        buttons = group["buttons"]
        at = next((i for i, b in enumerate(buttons) if b.get("label") == "download-source-button"), 0)
        buttons.insert(
            at + 1,
            {
                "type": "link",
                "url": f"{context['pathto']('_sources', 1)}/{_md_name(pagename)}",
                "text": ".md",
                "tooltip": "Download the page as a MyST Markdown notebook",
                "icon": "fas fa-file-lines",
                "label": "download-markdown-button",
            },
        )


def write_markdown_sources(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for docname in app.env.found_docs:
        source = Path(app.env.doc2path(docname))
        if source.suffix != ".ipynb":
            continue
        target = Path(app.outdir) / "_sources" / _md_name(docname)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(notebook_to_myst(json.loads(source.read_text(encoding="utf-8"))), encoding="utf-8")


STATIC = Path(__file__).parent / "static"


def add_static(app: Sphinx, config: Config) -> None:
    """Serve ``book/_ext/static`` with the book's other static files."""
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", add_static)
    app.add_css_file("companion.css")
    app.add_config_value("companion_repository_url", "", "html")
    app.add_config_value("companion_repository_branch", "main", "html")
    app.connect("config-inited", configure_repository, priority=900)
    # After sphinx-book-theme's add_header_buttons (priority 501) has built the download menu.
    app.connect("html-page-context", add_markdown_download, priority=600)
    app.connect("build-finished", write_markdown_sources)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
