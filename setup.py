"""Build the compiled core. Metadata lives in pyproject.toml.

BEMCP_DEBUG=1 builds with -O0 -g, line tracing, annotated HTML and the BEMCP_DEBUG macro.
"""
import importlib.util
import os
import platform
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = bool(os.environ.get("BEMCP_DEBUG"))


def _load(path):
    # A module of the package by its path: the package itself cannot be imported before it is built.
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_sources = _load("bemcp/_core/_sources.py")
# The core's export list names the compiled modules.
MODULES = _load("bemcp/_core/_consts.py").MODULES

extensions = []
for name in MODULES:
    extensions += cythonize(
        [Extension(
            f"bemcp._core.{name}",
            [f"bemcp/_core/{name}.pyx"],
            extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
            define_macros=[("BEMCP_DEBUG", "1"), ("CYTHON_TRACE", "1")] if DEBUG else [],
        )],
        language_level=3,
        annotate=DEBUG,
        # A debug build must never reuse a release .c (and the reverse).
        force=DEBUG,
        compiler_directives={"linetrace": DEBUG, "embedsignature": True},
        # Each module carries the hash of its sources: the tests name a stale build.
        compile_time_env={"BEMCP_SOURCE_HASH": _sources.source_hash(name)},
    )
# The sandbox's spawner (plain C; it shares bemcp/security/confine.h with the exec helper).
SANDBOX_MACHINES = ("x86_64", "amd64", "aarch64", "arm64")
if sys.platform.startswith("linux") and platform.machine().lower() in SANDBOX_MACHINES:
    extensions.append(Extension("bemcp.security._spawn", ["bemcp/security/_spawn.c"],
                                depends=["bemcp/security/confine.h"],
                                extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"]))
# cythonize() drops Extension(optional=...): a failed compile must fail the build,
# so the pure twins never silently replace the compiled core.
for ext in extensions:
    ext.optional = False



class build_ext_and_helper(build_ext):
    """The extensions, then the sandbox's exec helper: a small freestanding C program.

    A program rather than an extension: it must run between fork and exec, where only
    an exec'd program (or CPython's slow, thread-unsafe preexec_fn) can be; see
    bemcp/security/sandbox_exec.c. Built for Linux on x86-64 and AArch64 (its own
    system calls); a failed build fails the install, so `--sandbox` never finds it
    missing where it could have been built. Elsewhere `--sandbox` refuses to start.
    """

    HELPER_SOURCE = "bemcp/security/sandbox_exec.c"
    HELPER = "bemcp/security/bemcp-sandbox-exec"

    def run(self):
        super().run()
        if self.builds_helper():
            self.build_helper()

    @staticmethod
    def builds_helper():
        return sys.platform.startswith("linux") and platform.machine().lower() in SANDBOX_MACHINES

    def build_helper(self):
        import shutil
        import tempfile
        target = os.path.join(self.build_lib, self.HELPER)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        freestanding = ["-ffreestanding", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
                        "-fno-builtin"]
        with tempfile.TemporaryDirectory() as tmp:
            objects = self.compiler.compile([self.HELPER_SOURCE], output_dir=tmp,
                                            extra_postargs=["-O2", "-Wall", *freestanding])
            self.compiler.link_executable(objects, target,
                                          extra_postargs=["-static", "-nostdlib", "-Wl,--build-id=none"])
        os.chmod(target, 0o755)
        if self.inplace:   # an editable install imports the package from the source tree
            shutil.copy2(target, self.HELPER)

    def get_outputs(self):
        outputs = super().get_outputs()
        if self.builds_helper():
            outputs.append(os.path.join(self.build_lib, self.HELPER))
        return outputs


setup(ext_modules=extensions, cmdclass={"build_ext": build_ext_and_helper})
