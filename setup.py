"""Build of geoops and its compiled extension geoops._C.

The C++ CPU kernels are always built (C++17, OpenMP).  The CUDA kernels are
added when torch was built with CUDA and a matching nvcc is found, or forced
with GEOOPS_BUILD_CUDA=1 (=0 never builds them).  TORCH_CUDA_ARCH_LIST is
respected; without it and without a visible GPU the CUDA build targets
8.0;9.0+PTX.  GEOOPS_PORTABLE=1 drops -march=native (for wheels that travel);
GEOOPS_MARCH=<cpu> builds for another CPU than this one (-march=<cpu>, e.g. znver3 or
haswell: the AVX2 kernels on an AVX-512 machine, for tests and A/B runs).
GEOOPS_NO_BUILD=1 installs the Python package alone, compiling nothing (every op
then runs the eager reference on the CPU and Triton on CUDA); scripts/gpu_check.sh
installs so and builds geoops._C beside its first tests.

    pip install .                                # or, in a dev checkout:
    pip install --no-build-isolation -e .

geoops._C links against torch's C++ library, whose ABI changes with every torch
release, so it must be compiled against the torch that will import it: the
torch of the environment being installed into.  torch is therefore not a build
requirement (an isolated build would fetch the newest torch, a multi-GB CUDA
build, and compile against the wrong one); when pip builds in an isolated
environment, this script finds the target environment's torch by asking the
same interpreter without pip's isolation.

Object files live in build/temp-<python>-<torch>-<cpu|cuda>-<native|portable|march-CPU>,
so that every build (editable, wheel, build_ext --inplace) is incremental.  With GCC the
units that use at::vec share a precompiled header of the torch headers, built there too
(pch/geoops_pch.h.gch, see _pch_ninja); GEOOPS_PCH=0 builds without it.
"""
import glob
import os
import shutil
import subprocess
import sys

import setuptools
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _say(msg):
    print(f"geoops build: {msg}", file=sys.stderr, flush=True)


def _fail(msg):
    raise SystemExit(f"\ngeoops build error: {msg}\n")


def _no_torch():
    _fail(
        f"torch is not installed in {sys.prefix}.\n"
        "geoops compiles its kernels against the torch it will run with, so install torch first\n"
        "(the CPU or CUDA build you want, see https://pytorch.org), then build geoops:\n"
        "    pip install torch\n"
        "    pip install .          # or: pip install --no-build-isolation .\n"
        "(`python -m build` and uv build in a separate virtualenv that has no torch: use\n"
        " `pip wheel --no-build-isolation --no-deps .` for a wheel)"
    )


def _outer_python(code):
    """Run `code` in this interpreter without pip's build isolation.

    pip's isolated build environment hides the target environment's
    site-packages (PYTHONPATH=<pip's sitecustomize>, PYTHONNOUSERSITE=1); the
    same interpreter without them sees it.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def _check_torch_present():
    """Fail early (while pip prepares metadata, before it collects a torch wheel) when there is no torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        if _outer_python("import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)").returncode:
            _no_torch()


def _import_torch():
    """torch of the environment geoops is installed into (see the module docstring)."""
    try:
        import torch

        return torch
    except ImportError:
        pass
    r = _outer_python("import sys, torch; print(torch.__version__); print('\\n'.join(sys.path))")
    if r.returncode != 0:
        _no_torch()
    lines = r.stdout.splitlines()
    sys.path.extend(p for p in lines[1:] if p and p not in sys.path)
    import torch

    _say(f"isolated build: compiling against torch {torch.__version__} of {sys.prefix} (the environment installed into)")
    return torch


def _cuda_home_fix():
    """Point CUDA_HOME at the toolkit when `nvcc` on PATH is a wrapper outside it.

    torch guesses CUDA_HOME as the parent of nvcc's folder, which is wrong for a
    wrapper such as /usr/local/bin/nvcc -> /usr/local/cuda-X/bin/nvcc.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guess = os.path.dirname(os.path.dirname(nvcc))
    if os.path.exists(os.path.join(guess, "include", "cuda_runtime_api.h")):
        return
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return
    for line in out.splitlines():
        if line.startswith("#$ TOP="):
            top = line.split("=", 1)[1].strip()
            if os.path.exists(os.path.join(top, "include", "cuda_runtime_api.h")):
                top = os.path.normpath(top)
                os.environ["CUDA_HOME"] = top
                _say(f"CUDA_HOME={top} (where {nvcc} forwards to)")
            return


def _nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, TypeError, subprocess.SubprocessError):
        return None
    for tok in out.replace(",", " ").split():
        if tok.startswith("V") and tok[1:2].isdigit():
            return tok[1:]
    return None


def _write_if_changed(path, text):
    """Write a generated file only when its text changes: ninja rebuilds by time stamps."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _bindings_unit():
    """csrc/ops.cpp and every csrc/bind/*.cpp as one translation unit: build/gen/bindings.cpp, which #includes them.

    Each of those files is a few lines of pybind11 definitions behind torch/extension.h, whose parsing is most of
    its compile time (~25 s of CPU at -O3): one unit parses it once instead of six times (~150 s -> ~35 s per
    build).  The files stay as they are (a family still adds its own csrc/bind/<family>.cpp and edits no shared
    file); every binding name is per family (GEOOPS_BINDINGS), so they share a unit without clashes.  The file is
    rewritten only when its text changes (ninja rebuilds by time stamps; its includes are tracked as dependencies).
    """
    parts = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/bind/*.cpp"))
    text = ("// Generated by setup.py (_bindings_unit): the module's bindings as one translation unit. Do not edit.\n"
            + "".join(f'#include "{os.path.relpath(p, "csrc")}"\n' for p in parts))
    rel = os.path.join("build", "gen", "bindings.cpp")
    _write_if_changed(os.path.join(ROOT, rel), text)
    return rel


# The precompiled header (see _pch_ninja): what every at::vec unit parses first.  cpu_capability.h leads, as it
# does in those units, so the .gch is built for the unit's own ISA (torch's Half.h and the at::vec headers read
# CPU_CAPABILITY); the units that do not include it (gaunt, ssm, the bindings) keep parsing their headers.
_PCH_TEXT = """// Generated by setup.py (_pch_ninja): the headers the at::vec units share, precompiled. Do not edit.
#include "geoops/cpu_capability.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
"""


def _first_include_is_capability(path, depth=0):
    """True when the file's first #include is geoops/cpu_capability.h, directly or as the first include of the
    local header it includes first (stereographic_lanes*.cpp -> stereographic_lanes.h -> cpu_capability.h)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        line = line.strip()
        if not line.startswith("#include"):
            continue
        name = line[len("#include"):].strip()
        if name.startswith('"geoops/cpu_capability.h"'):
            return True
        if name.startswith('"') and depth < 4:
            local = os.path.join(os.path.dirname(path), name[1:].split('"', 1)[0])
            return _first_include_is_capability(local, depth + 1)
        return False
    return False


def _pch_ninja(ninja_file, build_temp):
    """Add a precompiled header to torch's build.ninja, for the units that include cpu_capability.h first.

    Parsing the torch headers is ~15 s of CPU in every unit; the .gch (built once per build variant, ~35 s, ~400 MB)
    is loaded in ~2 s.  It is built by ninja from build_temp/pch/geoops_pch.h with the compile rule's own flags
    (same compiler, -march or none (GEOOPS_PORTABLE), -fopenmp, -std, defines), so it always matches the objects;
    each at::vec unit gets `-include geoops_pch.h` and depends on the .gch (a changed torch header rebuilds the
    .gch, by its depfile, and then every unit that uses it).  The force-included header is the unit's own first
    lines (cpu_capability.h, then ATen), so a unit's at::vec ISA is the one it picks itself; where GCC cannot use
    the .gch it parses geoops_pch.h instead (-Winvalid-pch says so), with the same result.  GCC only (clang's
    precompiled headers work differently); GEOOPS_PCH=0 turns it off.
    """
    with open(ninja_file) as f:
        lines = f.read().split("\n")
    hdr = os.path.join(os.path.abspath(build_temp), "pch", "geoops_pch.h")
    gch = hdr + ".gch"
    out, used = [], 0
    for line in lines:
        out.append(line)
        src = line.partition(": compile ")[2]
        if line.startswith("build ") and src and _first_include_is_capability(src.replace("$ ", " ")):
            out[-1] = f"{line} | {gch}"
            out.append(f"  cflags = $cflags -include {hdr} -Winvalid-pch")
            used += 1
    if not used:
        return 0
    _write_if_changed(hdr, _PCH_TEXT)
    out += ["rule geoops_pch",
            "  command = $cxx -x c++-header -MMD -MF $out.d $cflags -c $in -o $out $post_cflags",
            "  depfile = $out.d",
            "  deps = gcc",
            f"build {gch}: geoops_pch {hdr}",
            ""]
    with open(ninja_file, "w") as f:
        f.write("\n".join(out))
    return used


def _compiler_cache_env():
    """Settings for ccache, which torch's BuildExtension puts in front of the compiler when it is on PATH.

    With them a build in another checkout of the same sources (CI's fresh clone, a worktree) reuses the cached
    objects: CCACHE_BASEDIR makes the absolute paths under the checkout (sources, -I, the precompiled header, a
    venv inside it) relative in ccache's hash; CCACHE_SLOPPINESS lets the units that force-include the precompiled
    header (_pch_ninja) be cached at all.  A hit is what the compiler would write (ccache keys on the compiler, its
    flags and the preprocessed or hashed input), so the build is the same.  Values set in the environment win;
    TORCH_NO_COMPILER_WRAPPER=1 (torch's switch) builds without ccache.
    """
    if os.environ.get("TORCH_NO_COMPILER_WRAPPER") or not shutil.which("ccache"):
        return
    os.environ.setdefault("CCACHE_BASEDIR", ROOT)
    os.environ.setdefault("CCACHE_SLOPPINESS", "pch_defines,time_macros")


def _pch_wanted():
    """GEOOPS_PCH=0 builds without the precompiled header; otherwise it is used with GCC on Linux (see _pch_ninja)."""
    want = os.environ.get("GEOOPS_PCH", "1").lower()
    if want not in ("0", "1", "false", "true", "no", "yes", ""):
        _fail(f"GEOOPS_PCH={want!r}: expected 0 or 1")
    if want in ("0", "false", "no") or not sys.platform.startswith("linux"):
        return False
    from torch.utils.cpp_extension import get_cxx_compiler

    try:
        version = subprocess.run([get_cxx_compiler(), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "clang" not in version.lower()


def _extensions():
    torch = _import_torch()
    want = os.environ.get("GEOOPS_BUILD_CUDA", "auto").lower()
    if want not in ("auto", "0", "1", "true", "false", "yes", "no"):
        _fail(f"GEOOPS_BUILD_CUDA={want!r}: expected auto, 0 or 1")
    force = want in ("1", "true", "yes")
    use_cuda = False
    if want not in ("0", "false", "no") and torch.version.cuda is not None:
        _cuda_home_fix()
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    if want not in ("0", "false", "no"):
        nvcc_ver = _nvcc_version(CUDA_HOME) if (CUDA_HOME or shutil.which("nvcc")) else None
        if torch.version.cuda is None:
            if force:
                _fail(
                    f"GEOOPS_BUILD_CUDA=1, but torch {torch.__version__} is a CPU-only build.\n"
                    "Install a CUDA build of torch (https://pytorch.org), or build the CPU kernels only:\n"
                    "    GEOOPS_BUILD_CUDA=0 pip install --no-build-isolation ."
                )
        elif nvcc_ver is None:
            if force:
                _fail(
                    "GEOOPS_BUILD_CUDA=1, but nvcc was not found. Put the CUDA toolkit's bin/ on PATH or set\n"
                    "CUDA_HOME=/path/to/cuda, or build the CPU kernels only: GEOOPS_BUILD_CUDA=0 pip install ."
                )
            _say(f"torch has CUDA {torch.version.cuda} but nvcc was not found: CPU kernels only (Triton still runs on GPUs)")
        elif nvcc_ver.split(".")[0] != torch.version.cuda.split(".")[0]:
            msg = (f"nvcc {nvcc_ver} and torch's CUDA {torch.version.cuda} differ in their major version, "
                   "which torch refuses to build with")
            if force:
                _fail(msg + ".\nPoint CUDA_HOME at a CUDA " + torch.version.cuda.split(".")[0]
                      + ".x toolkit, or build the CPU kernels only: GEOOPS_BUILD_CUDA=0 pip install .")
            _say(msg + ": CPU kernels only (set CUDA_HOME to a matching toolkit for the CUDA kernels)")
        else:
            use_cuda = True

    portable = os.environ.get("GEOOPS_PORTABLE", "0") == "1"
    march = os.environ.get("GEOOPS_MARCH", "native").strip() or "native"
    if not all(ch.isalnum() or ch in "-_.+" for ch in march):
        _fail(f"GEOOPS_MARCH={march!r}: expected a GCC -march name such as native, znver3, haswell or skylake-avx512")
    # csrc/bind/<family>.cpp: each family's Python bindings (GEOOPS_BINDINGS, csrc/include/geoops/bind.h)
    sources = [_bindings_unit()] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No -std: torch's BuildExtension adds the standard its headers need
    # (C++17 up to torch 2.13, C++20 from 2.14 on, whose headers reject C++17).
    # -g0: Python's own CFLAGS (which setuptools puts first) carry -g; the debug info made every object ~50x
    # larger (a 148 MB extension, a 44 MB wheel) and cost ~25 % of each file's compile time.  Code generation is
    # the same with or without it (GCC's rule: -g never changes the instructions), so the kernels are unchanged.
    # Hidden visibility (with the version script in extra_link_args): the module exports PyInit__C alone.  With
    # default visibility every inline function's local static and inline variable (the families' binder list, a row
    # op's path table) was an STB_GNU_UNIQUE symbol, unified process-wide: a second build of _C loaded into the same
    # process (an in-process A/B) bound the first build's functions into its module and read its tables, so it ran
    # the first build's kernels.  Exported functions were also called through the PLT (interposable).
    cxx = ["-O3", "-fopenmp", "-Wno-psabi", "-g0", "-fvisibility=hidden", "-fvisibility-inlines-hidden"]
    if not portable:
        cxx.append(f"-march={march}")
    define_macros = []
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")],
        # The headers of the standard library and torch force default visibility on what they declare (their
        # template instantiations, RTTI of function types, two GNU_UNIQUE tables of std::to_chars): the version
        # script makes those local too, so the dynamic symbol table holds PyInit__C alone (csrc/exports.map).
        extra_link_args=["-fopenmp", "-Wl,--version-script=" + os.path.join(ROOT, "csrc", "exports.map")],
    )
    if use_cuda:
        visible = torch.cuda.is_available() and torch.cuda.device_count() > 0
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not visible:
            # torch would build for the visible GPUs; with none it crashes on an empty list.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
            _say(f"no visible GPU and no TORCH_CUDA_ARCH_LIST: building for {DEFAULT_CUDA_ARCHS}")
        _say(f"CUDA kernels: nvcc {nvcc_ver} at {CUDA_HOME}, TORCH_CUDA_ARCH_LIST="
             f"{os.environ.get('TORCH_CUDA_ARCH_LIST') or 'the visible GPUs'}")
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("GEOOPS_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "geoops._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "-Xcompiler", "-fvisibility=hidden"]},
            **kwargs,
        )
    else:
        ext = CppExtension("geoops._C", sources, define_macros=define_macros, extra_compile_args={"cxx": cxx}, **kwargs)

    variant = "-".join([
        sys.implementation.cache_tag,
        "torch" + torch.__version__.replace("+", "_"),
        "cuda" if use_cuda else "cpu",
        "portable" if portable else ("native" if march == "native" else f"march-{march}"),
    ])
    _say(f"{'C++ + CUDA' if use_cuda else 'C++'} kernels, {'portable' if portable else f'-march={march}'}, "
         f"objects in build/temp-{variant} (incremental)")

    _compiler_cache_env()
    base = BuildExtension.with_options(use_ninja=True)

    class build_ext(base):
        """torch's BuildExtension with a fixed object folder per build variant.

        pip's editable installs build in a new temporary folder every time,
        which made every `pip install -e .` recompile everything.
        """

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", f"temp-{variant}")

        def build_extensions(self):
            # The precompiled header (_pch_ninja) goes into the ninja file torch writes.  torch has no hook for
            # per-file flags, so its writer is wrapped for this build; without it (another torch, another compiler,
            # GEOOPS_PCH=0) the units parse their headers as before.
            from torch.utils import cpp_extension

            write = getattr(cpp_extension, "_write_ninja_file", None)
            if write is None or not _pch_wanted():
                return super().build_extensions()

            def write_with_pch(*args, **kw):
                write(*args, **kw)
                path = kw["path"] if "path" in kw else args[0]
                if os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.build_temp):
                    n = _pch_ninja(path, self.build_temp)
                    _say(f"precompiled header for {n} units ({os.path.join(self.build_temp, 'pch')})")

            cpp_extension._write_ninja_file = write_with_pch
            try:
                return super().build_extensions()
            finally:
                cpp_extension._write_ninja_file = write

    return [ext], {"build_ext": build_ext}


def _license():
    # project.license as an SPDX string needs setuptools >= 77; older setuptools
    # (e.g. the 65.5 a Python 3.11 venv starts with) take the classic field.
    major = int(setuptools.__version__.split(".")[0])
    return {"license_expression": "Apache-2.0"} if major >= 77 else {"license": "Apache-2.0"}


# Metadata-only calls (egg_info / dist_info, e.g. pip's "Preparing metadata")
# need no torch: only commands that build the extension look for it.
_BUILD_CMDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel", "bdist_egg"}
_NO_BUILD = os.environ.get("GEOOPS_NO_BUILD", "0").lower()
if _NO_BUILD not in ("0", "1", "false", "true", "no", "yes", ""):
    _fail(f"GEOOPS_NO_BUILD={_NO_BUILD!r}: expected 0 or 1")
if _NO_BUILD in ("1", "true", "yes") and _BUILD_CMDS.intersection(sys.argv[1:]):
    _say("GEOOPS_NO_BUILD=1: the Python package only, geoops._C is not compiled")
    ext_modules, cmdclass = [], {}
elif _BUILD_CMDS.intersection(sys.argv[1:]):
    ext_modules, cmdclass = _extensions()
else:
    if "dist_info" in sys.argv[1:]:
        _check_torch_present()
    ext_modules, cmdclass = [], {}

setup(
    packages=find_packages(include=["geoops", "geoops.*"]) + ["geoops.kernels", "geoops.bench"],
    package_dir={"geoops.kernels": "kernels", "geoops.bench": "bench"},
    package_data={"geoops.bench": ["data/*/*"]},  # each family's bench data, one folder each (bench/data/<name>/)
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    **_license(),
)
