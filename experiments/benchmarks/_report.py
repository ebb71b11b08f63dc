"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone.

Each script owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; a new
section is appended. The page is rewritten atomically.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

from experiments._markers import write_marked

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure on this page is produced by a script in `experiments/benchmarks/` (the command is
given in each section) and is a ratio against a reference measured in the same run. Run them all
with `make bench`. Timings are wall-clock medians; machine details are stated per section.
"""


def machine() -> str:
    """One line describing where the numbers were measured."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{datetime.now(UTC):%Y-%m-%d}"
    )


def write_section(name: str, markdown: str) -> Path:
    """Replace (or append) the section `name` of docs/benchmarks.md with `markdown`."""
    if not DOC.exists():
        DOC.write_text(HEADER)
    return write_marked(DOC, f"bench:{name}", markdown, append=True)
