"""`make pdf`: the whole book as one PDF through Jupyter Book's LaTeX builder and xelatex.

The test builds the PDF into a temporary folder (about 40 s on two cores) and reads it back with
``pdftotext``: every page of the table of contents is in it, in the book's chapter numbering, and the
equations carry the same numbers as in the HTML (the thesis's (1.16), the book's (B1.1)). It needs
TeX from Debian (``.ci/run`` installs the packages; elsewhere it skips and says how to get them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs

ROOT = Path(__file__).resolve().parents[1]
TEX_PACKAGES = ("texlive-xetex texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended "
                "latexmk xindy tex-gyre fonts-freefont-otf lmodern poppler-utils")


def _titles() -> list[str]:
    """The title (first heading) of every page in _toc.yml, in order."""
    files = re.findall(r"file: (\S+)", (ROOT / "_toc.yml").read_text(encoding="utf-8"))
    titles = ["Rényi divergence in knowledge distillation"]
    for name in files:
        path = next(ROOT.glob(f"{name}.*"))
        if path.suffix == ".ipynb":
            text = "".join(json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"])
        else:
            text = path.read_text(encoding="utf-8")
        titles.append(re.search(r"^# (.+)$", text, flags=re.M).group(1).strip())
    return titles


@pytest.mark.slow
def test_pdf_builds_with_every_chapter(tmp_path):
    tools = [shutil.which(t) for t in ("xelatex", "latexmk", "pdftotext")]
    needs(all(tools), "TeX (xelatex, latexmk) and pdftotext (for the PDF test)",
          f"`sudo apt-get install --no-install-recommends {TEX_PACKAGES}`")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", str(ROOT), "--builder", "pdflatex", "--all", "--warningiserror", "--keep-going",
         "--path-output", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    pdf = tmp_path / "_build" / "latex" / "book.pdf"
    assert proc.returncode == 0 and pdf.is_file(), (proc.stdout + proc.stderr)[-4000:]
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    flat = re.sub(r"\s+", " ", text)
    flat = flat.replace("’", "'")
    missing = [t for t in _titles() if t not in flat]
    assert not missing, f"pages missing from the PDF: {missing}"
    # The book's chapter numbering (chapter 1 is chapter 1, not the introduction's sections).
    for heading in ("1.1 Temperature scaling", "1.4 The Rényi divergence", "2.1 Set-up and methods"):
        assert heading in flat, f"the PDF's table of contents lacks {heading!r}"
    # Equation numbers as in the HTML.
    for tag in ("(1.3)", "(1.13)", "(1.16)", "(1.27)", "(1.31)", "(1.33)", "(B1.1)", "(B1.19)", "(B2.1)"):
        assert tag in flat, f"equation {tag} is not numbered so in the PDF"
    assert pdf.stat().st_size > 200_000
