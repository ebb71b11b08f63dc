"""Replace the generated block between ``<!-- MARK -->`` and ``<!-- /MARK -->`` in a doc page.

Shared by the scripts that write figures into docs/ (benchmarks, pretraining, RL results), so
a page's hand-written text stays untouched and the page is rewritten atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def write_marked(doc: Path, mark: str, body: str, append: bool = False) -> Path:
    """Put `body` between `doc`'s ``<!-- mark -->`` markers (the markers are kept).

    Args:
        doc: the markdown page.
        mark: the marker name, e.g. ``bench:rl_env`` or ``rl-results``.
        body: the generated markdown.
        append: markers not found: append a new block (else exit naming the markers).
    """
    text = doc.read_text()
    block = f"<!-- {mark} -->\n{body.strip()}\n<!-- /{mark} -->"
    pattern = re.compile(rf"<!-- {re.escape(mark)} -->.*?<!-- /{re.escape(mark)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif append:
        text = f"{text}\n{block}\n"
    else:
        raise SystemExit(f"{doc}: markers <!-- {mark} --> ... <!-- /{mark} --> not found")
    tmp = doc.with_suffix(doc.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)
    return doc
