"""Build the compiled core. Metadata lives in pyproject.toml.

BEMCP_DEBUG=1 builds with -O0 -g, line tracing, annotated HTML and the BEMCP_DEBUG macro.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = bool(os.environ.get("BEMCP_DEBUG"))
MODULES = ["_framing", "_watchdog", "_dispatch", "_protocol", "_tasklog"]

extensions = [
    Extension(
        f"bemcp._core.{name}",
        [f"bemcp/_core/{name}.pyx"],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
        define_macros=[("BEMCP_DEBUG", "1"), ("CYTHON_TRACE", "1")] if DEBUG else [],
    )
    for name in MODULES
]
extensions = cythonize(
    extensions,
    language_level=3,
    annotate=DEBUG,
    # A debug build must never reuse a release .c (and the reverse).
    force=DEBUG,
    compiler_directives={"linetrace": DEBUG, "embedsignature": True},
)
# cythonize() drops Extension(optional=...): a failed compile must fail the build,
# so the pure twins never silently replace the compiled core.
for ext in extensions:
    ext.optional = False

setup(ext_modules=extensions)
