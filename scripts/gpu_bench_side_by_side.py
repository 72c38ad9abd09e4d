#!/usr/bin/env python3
"""Side-by-side table of several `python -m bench` runs (one per geoops backend), for scripts/gpu_check.sh.

    python scripts/gpu_bench_side_by_side.py bench-triton.json bench-cuda.json > bench-side-by-side.md

Rows are matched on (op, pass, shape, dtype); per run: the backend that ran, its median ms, GB/s
(the row's rate: GB/s, or GFLOP/s for compute-bound rows) and the ratio to the run's own "limit" op; then the limit op's
ms (from the first run) and each run's copy bandwidth (y.copy_(x), bytes read + written).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def side_by_side(paths) -> str:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for r in runs:  # bench/_runner.py writes {"meta", "tables": [{"family", "rows"}]}; older runs {"meta", "rows"}
        if "rows" not in r:
            r["rows"] = [dict(row, op=f"{t.get('family', '')}.{row['op']}" if t.get("family") else row["op"])
                         for t in r.get("tables", []) for row in t["rows"]]
    names = []
    for p, r in zip(paths, runs):
        backends = sorted({row.get("backend", "?") for row in r["rows"]}) or ["?"]
        names.append("/".join(backends))
    keys, by_run = [], []
    for r in runs:
        table = {}
        for row in r["rows"]:
            key = (row["op"], row["pass"], "x".join(map(str, row["shape"])), row["dtype"])
            table[key] = row
            if key not in keys:
                keys.append(key)
        by_run.append(table)
    meta = runs[0]["meta"] if runs else {}
    lines = [f"# geoops backends side by side on {meta.get('device_name', '?')}", ""]
    for name, r in zip(names, runs):
        bw = r["meta"].get("copy_bandwidth") or {}
        lines.append(f"- {name}: {len(r['rows'])} rows, copy bandwidth {_f(bw.get('gbps'), '.0f')} GB/s "
                     f"({r['meta'].get('date', '?')}, torch {r['meta'].get('versions', {}).get('torch', '?')}, "
                     f"triton {r['meta'].get('versions', {}).get('triton', '?')})")
    lines.append("")
    hdr = ["op", "pass", "shape", "dtype"]
    for n in names:
        hdr += [f"{n} ms", f"{n} GB/s or GFLOP/s", f"{n} x limit"]
    hdr += ["limit ms"]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * len(hdr))
    for key in keys:
        cells = list(key)
        limit = None
        for table in by_run:
            row = table.get(key)
            if row is None:
                cells += ["-", "-", "-"]
                continue
            limit = limit if limit is not None else row.get("limit_ms")
            rate = row.get("rate", row.get("gbps"))  # bench/_runner.py: "rate" (GB/s or GFLOP/s)
            cells += [_f(row.get("geoops_ms"), ".3f"), _f(rate, ".0f"), _f(row.get("vs_limit"), ".2f")]
        cells.append(_f(limit, ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(side_by_side(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
