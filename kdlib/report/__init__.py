"""The report: what the book and ``python -m kdlib report`` show from the committed results.

The last stage of the flow ``kdlib`` (the math) → :mod:`kdlib.lab` (runs, records) → ``kdlib.report``
→ notebooks; nothing in the math or the lab imports it.

- :mod:`kdlib.report.tables`: fixed formats, the book's tables, provenance lines and the command
  line's report, of what :mod:`kdlib.lab.results`, :mod:`kdlib.lab.analysis` and
  :mod:`kdlib.lab.prereg` return;
- :mod:`kdlib.report.figures`: the book's figure style and the figures drawn from the summaries;
- :mod:`kdlib.report.book`: notebook helpers (page setup and header, smoke run, glue, the
  chapter-1 ``show`` and ``assert_identity``); needs the ``book`` extra.

The submodules are imported explicitly (``from kdlib.report import tables``), so that the command
line does not load the book's dependencies.
"""
