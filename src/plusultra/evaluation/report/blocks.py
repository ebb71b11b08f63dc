"""A page as a list of blocks, rendered to HTML or Markdown with the run report's table helpers.

A block is `("h2" | "h3" | "p" | "note", text)`, `("table", header, rows)` or `("img", name)`
where `plots[name]` is `(caption, PNG bytes)`. Layout code builds blocks; these two functions
only render them, so the HTML and Markdown pages always say the same thing.
"""

from __future__ import annotations

import base64
import html

from plusultra.evaluation.report.render import CSS, _html_table, _md

Block = tuple


def render_html(header: list[str], blocks: list[Block], plots: dict, title: str) -> str:
    """The self-contained HTML page (the run report's CSS, plots as data: URIs).

    Args:
        header: lines under the `title` heading (what, where, when).
        blocks: the page's content.
        plots: plot name -> (caption, PNG bytes), for the `img` blocks.
        title: the page's heading and `<title>`.
    """
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *(f'<p class="meta">{e(line)}</p>' for line in header),
    ]
    return "\n".join([*parts, *html_blocks(blocks, plots), "</body></html>"]) + "\n"


def html_blocks(blocks: list[Block], plots: dict) -> list[str]:
    """The HTML of `blocks` (one string per block); `plots` as in `render_html`."""
    e, parts = html.escape, []
    for kind, *rest in blocks:
        if kind in ("h2", "h3"):
            parts.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind in ("p", "note"):
            parts.append(f'<p class="{kind}">{e(rest[0])}</p>')
        elif kind == "table":
            parts.append(_html_table(*rest))
        else:
            caption, png = plots[rest[0]]
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img src="{uri}" alt="{e(caption)}"><figcaption>{e(caption)}'
                "</figcaption></figure>"
            )
    return parts


def render_markdown(
    header: list[str], blocks: list[Block], plots: dict, links: dict, title: str
) -> str:
    """The Markdown page; `links` maps plot name -> relative PNG path."""
    lines = [f"# {title}", "", *(f"{line}  " for line in header), ""]
    return "\n".join(lines + markdown_blocks(blocks, plots, links))


def markdown_blocks(blocks: list[Block], plots: dict, links: dict) -> list[str]:
    """The Markdown lines of `blocks`; `links` maps plot name -> relative PNG path."""
    lines = []
    for kind, *rest in blocks:
        if kind in ("h2", "h3"):
            lines += [("## " if kind == "h2" else "### ") + rest[0], ""]
        elif kind in ("p", "note"):
            lines += [rest[0], ""]
        elif kind == "table":
            lines += [_md(*rest), ""]
        else:
            caption = plots[rest[0]][0]
            lines += [f"![{caption}]({links[rest[0]]})", "", f"*{caption}*", ""]
    return lines
