#!/usr/bin/env python3
"""Draws the results table of benches/compare.sh as SVG bar charts.

    python3 benches/charts.py RESULTS.md OUT_DIR

One chart per workload family (appends, catch-up, fan-out, creates), each
workload a group of bars: our storage modes in blue, the peers in grey, the
ceilings (bare hyper) hatched. Only the standard library is used; the SVG is
plain text so that it diffs and renders on GitHub.
"""

import html
import os
import re
import sys

FAMILIES = [
    # file name, title, workloads, unit, whether more is better
    ("appends", "Appends per second (1 KiB, more is better)",
     ["append16", "append64"], "appends/s", True),
    ("catch-up", "Catch-up reads, MB/s (4 readers, more is better)",
     ["catchup64k", "catchup1k"], "MB/s", True),
    ("fan-out", "Fan-out delivery latency, p99 ms (1,000 subscribers, less is better)",
     ["fanout-sse", "fanout-long-poll"], "ms p99", False),
    ("creates", "Creates per second (100,000 streams, more is better)",
     ["streams"], "creates/s", True),
]

LABELS = {
    "append16": "16 connections, 1 stream",
    "append64": "64 connections, 64 streams",
    "catchup64k": "64 MiB in 64 KiB appends",
    "catchup1k": "16 MiB in 1 KiB appends",
    "fanout-sse": "SSE, 20 messages/s",
    "fanout-long-poll": "long-poll, 20 messages/s",
    "streams": "16 connections",
}


def parse(path):
    """{workload: [(server, value)]} from the table rows, in table order."""
    results = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("server", "---") or cells[2] == "failed":
            continue
        server, workload, result, p99 = cells[0], cells[1], cells[2], cells[4]
        text = p99 if workload.startswith("fanout") else result
        number = re.match(r"[\d.]+", text.replace(",", ""))
        if number:
            results.setdefault(workload, []).append((server, float(number.group())))
    return results


def colour(server):
    if server.startswith("ours-"):
        return "#2563eb"
    if server.startswith("bare-"):
        return "url(#ceiling)"
    return "#9ca3af"


def chart(title, workloads, unit, results):
    rows = [(w, results[w]) for w in workloads if w in results]
    if not rows:
        return None
    bar, gap, left, width = 18, 14, 190, 420
    top = 48
    height = top + sum(len(r) * bar + gap + 22 for _, r in rows) + 30
    peak = max(v for _, r in rows for _, v in r) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        '<defs><pattern id="ceiling" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fde68a"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#d97706" stroke-width="2"/></pattern></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="10" y="38" fill="#555">blue: this crate; grey: peers; '
        f'hatched: bare hyper (ceiling)</text>',
    ]
    y = top
    for workload, entries in rows:
        out.append(f'<text x="10" y="{y + 12}" font-weight="bold">'
                   f'{html.escape(LABELS.get(workload, workload))}</text>')
        y += 18
        for server, value in entries:
            w = max(1, round(value / peak * width))
            out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">'
                       f'{html.escape(server)}</text>')
            out.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar - 3}" '
                       f'fill="{colour(server)}"/>')
            shown = f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
            out.append(f'<text x="{left + w + 5}" y="{y + 12}">{shown} {html.escape(unit)}</text>')
            y += bar
        y += gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results = parse(sys.argv[1])
    os.makedirs(sys.argv[2], exist_ok=True)
    for name, title, workloads, unit, _ in FAMILIES:
        svg = chart(title, workloads, unit, results)
        if svg:
            path = os.path.join(sys.argv[2], f"{name}.svg")
            with open(path, "w") as f:
                f.write(svg)
            print(path)


if __name__ == "__main__":
    main()
