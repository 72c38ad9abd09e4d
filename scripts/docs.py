"""Build geoops' API reference with pdoc and check that nothing public is undocumented.

    python scripts/docs.py                 # HTML into docs/api/ (open docs/api/index.html)
    python scripts/docs.py --check         # the same, and fail on a missing docstring or a pdoc warning
    python scripts/docs.py --serve         # live preview on http://localhost:8080

The reference covers the package ``geoops`` and every public submodule found by
walking it (``geoops.<family>`` through ``geoops.__all__``, which lists the
families, ``geoops.reference.*``) plus ``geoops.nn`` and its submodules, so new
families appear without editing this file.  Left out: the kernel modules
(``geoops.kernels``, backend internals) and the tools ``geoops.parity`` and
``geoops.bench`` (command-line programs, documented by their ``--help``).
A module's public names are its ``__all__`` when it has one, else the names
that do not start with an underscore (pdoc's rule).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCLUDE = ("geoops.kernels", "geoops.parity", "geoops.bench", "geoops._C")


EXTRA = ("geoops.nn",)  # packages pdoc would skip: it walks only the submodules in geoops.__all__
SPECS = ["geoops"] + ["!" + e for e in EXCLUDE]


def _modules() -> list[str]:
    """The modules to document (and, as a side effect, SPECS completed with EXTRA where needed)."""
    import importlib.util

    import pdoc.extract

    found = pdoc.extract.walk_specs(SPECS)
    for extra in EXTRA:
        if extra not in found and importlib.util.find_spec(extra) is not None:
            SPECS.insert(1, extra)
    return pdoc.extract.walk_specs(SPECS)


def _missing(mod) -> tuple[int, list[str]]:
    """(public objects checked, those without a docstring) of one pdoc Module."""
    import pdoc.doc

    checked, missing = 1, []
    if not mod.docstring.strip():
        missing.append(f"module {mod.fullname}")

    def visit(doc, owner):
        nonlocal checked
        for name, m in doc.members.items():
            if name.startswith("_") or m.modulename != owner:
                continue  # private, or imported from elsewhere (checked where it is defined)
            if isinstance(m, (pdoc.doc.Function, pdoc.doc.Class)):
                if isinstance(doc, pdoc.doc.Class) and m.is_inherited:
                    continue
                checked += 1
                if not m.docstring.strip():
                    kind = "class" if isinstance(m, pdoc.doc.Class) else "function"
                    missing.append(f"{kind} {m.fullname}  ({m.source_file}:{m.source_lines[0] if m.source_lines else '?'})")
                if isinstance(m, pdoc.doc.Class):
                    visit(m, owner)

    visit(mod, mod.modulename)
    return checked, missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail on a missing docstring or a pdoc warning")
    ap.add_argument("--serve", action="store_true", help="live preview (pdoc's web server) instead of writing files")
    ap.add_argument("--out", default=str(ROOT / "docs" / "api"), help="output folder (default docs/api)")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()

    os.environ.setdefault("TRITON_INTERPRET", "0")
    import pdoc
    import pdoc.doc
    import pdoc.render

    import geoops

    pdoc.render.configure(
        docformat="restructuredtext",
        footer_text=f"geoops {geoops.__version__}",
        search=True,
        show_source=True,
    )
    mods = _modules()
    if args.serve:
        from pdoc.web import DocServer

        print(f"serving {len(mods)} modules on http://localhost:{args.port} (Ctrl-C stops)")
        with DocServer(("localhost", args.port), SPECS) as httpd:
            httpd.serve_forever()
        return 0

    out = Path(args.out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*SPECS, output_directory=out)
    # pdoc's own complaints (unresolvable links, modules that failed to import, ...)
    problems = [f"pdoc: {w.message}" for w in caught if "pdoc" in (w.filename or "")]

    n_checked, missing = 0, []
    for name in mods:
        c, m = _missing(pdoc.doc.Module.from_name(name))
        n_checked += c
        missing += m
    print(f"API reference: {len(mods)} modules ({', '.join(mods)}) -> {out}/index.html")
    for p in problems:
        print("WARNING", p)
    for m in missing:
        print("MISSING docstring:", m)
    print(f"docstrings: {n_checked - len(missing)} passed, {len(missing)} failed")
    if args.check and (missing or problems):
        print("docs check failed: document every public module, class and function (formula, shapes, dtypes,\n"
              "gradients, numerics, differences from the peer), or make the name private (_name / __all__).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
