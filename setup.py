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


NATIVE = "services/common/imagegw/pipeline/native/"


def compiled_flatten(name: str, source: str) -> Extension:
    """An extension of the compiled flatten (issue 21): Python's C API only, optional
    (without it the Python flatten runs). tarout.c and onepass.c are compiled into each
    (the same tar bytes, the same one-pass state)."""
    return Extension(
        f"imagegw.pipeline.native.{name}",
        sources=[NATIVE + source, NATIVE + "tarout.c", NATIVE + "onepass.c"],
        depends=[NATIVE + "tarout.h", NATIVE + "onepass.h"],
        extra_compile_args=["-Wall", "-Wextra", "-Werror"],
        optional=True,
    )


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
        # one-pass flatten's emitter (native_onepass). Without it compact.scan_layer uses
        # the Python scanner.
        compiled_flatten("_scan", "scan.c"),
        # The compiled OCI merge and tar writer (issue 21; native_flat).
        compiled_flatten("_flat", "flat.c"),
    ],
)
