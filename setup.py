"""Build of geoops and its compiled extension geoops._C.

The C++ CPU kernels are always built (C++17, OpenMP).  The CUDA kernels are
added when torch was built with CUDA and nvcc is found, or forced with
GEOOPS_BUILD_CUDA=1 (=0 never builds them); TORCH_CUDA_ARCH_LIST is
respected.  GEOOPS_PORTABLE=1 drops -march=native (for wheels that travel).

Build in the environment that has torch (no build isolation):
    pip install --no-build-isolation -e .
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    want = os.environ.get("GEOOPS_BUILD_CUDA", "auto").lower()
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    use_cuda = want in ("1", "true", "yes") or (want == "auto" and torch.version.cuda is not None and has_nvcc)

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-Wno-psabi"]
    if os.environ.get("GEOOPS_PORTABLE", "0") != "1":
        cxx.append("-march=native")
    define_macros = []
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("GEOOPS_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "geoops._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            **kwargs,
        )
    else:
        ext = CppExtension("geoops._C", sources, define_macros=define_macros, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["geoops", "geoops.*"]) + ["geoops.kernels", "geoops.bench"],
    package_dir={"geoops.kernels": "kernels", "geoops.bench": "bench"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
