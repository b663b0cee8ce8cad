"""Package discovery for the server distribution (the rest is in pyproject.toml).

The `imagegw` namespace (PEP 420) spans one folder per service; every package found
below them is shipped, under the import name that is the tail of its path, so a new
module can never be left out. The worker's libdeflate shim for tar2sqfs is built here as
a plain shared library (optional: without libdeflate-dev the worker falls back to zlib),
and so are the compiled layer scanner (`_scan`) and flatten (`_flat`) (optional: without
them the Python paths run).
"""

from setuptools import Extension, find_namespace_packages, setup

ROOTS = ("services/common", "services/gateway", "services/worker", "services/cli")


def discover() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for root in ROOTS:
        for package in find_namespace_packages(root, include=["imagegw.*"]):
            packages.append(package)
            package_dir[package] = f"{root}/{package.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = discover()

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=[
        Extension(
            "imagegw.pipeline.native.sqfs_libdeflate",
            sources=["services/common/imagegw/pipeline/native/sqfs_libdeflate.c"],
            libraries=["deflate", "dl"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            optional=True,
        ),
        # The compiled layer scanner (issue 21; imagegw.pipeline.native_scan) and the
        # one-pass flatten's emitter (native_onepass): Python's C API only. Optional:
        # without it compact.scan_layer uses the Python scanner. tarout.c and onepass.c
        # are compiled into both extensions (the same tar bytes, the same one-pass state).
        Extension(
            "imagegw.pipeline.native._scan",
            sources=["services/common/imagegw/pipeline/native/scan.c",
                     "services/common/imagegw/pipeline/native/tarout.c",
                     "services/common/imagegw/pipeline/native/onepass.c"],
            depends=["services/common/imagegw/pipeline/native/tarout.h",
                     "services/common/imagegw/pipeline/native/onepass.h"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            optional=True,
        ),
        # The compiled OCI merge and tar writer (issue 21); pure C and the Python C API.
        Extension(
            "imagegw.pipeline.native._flat",
            sources=["services/common/imagegw/pipeline/native/flat.c",
                     "services/common/imagegw/pipeline/native/tarout.c",
                     "services/common/imagegw/pipeline/native/onepass.c"],
            depends=["services/common/imagegw/pipeline/native/tarout.h",
                     "services/common/imagegw/pipeline/native/onepass.h"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            optional=True,
        ),
    ],
)
