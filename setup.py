"""Build script: compiles the Cython core (stock ledger, rate limiter).

FLASHGATE_DEBUG=1 compiles the ledger's invariant checks in and turns on
Cython's bounds checks.
"""

import os
import sys

from setuptools import setup

EXTENSIONS = [
    ("flashgate.core._stock", "flashgate/core/_stock.pyx"),
    ("flashgate.core._hll", "flashgate/core/_hll.pyx"),
    ("flashgate.limiter._gcra", "flashgate/limiter/_gcra.pyx"),
    ("flashgate.gateway._http", "flashgate/gateway/_http.pyx"),
    ("flashgate.gateway._protocol", "flashgate/gateway/_protocol.pyx"),
    ("flashgate.gateway._net", "flashgate/gateway/_net.pyx"),
    ("flashgate.gateway._token", "flashgate/gateway/_token.pyx"),
    ("flashgate.gateway._buy", "flashgate/gateway/_buy.pyx"),
    ("flashgate.gateway._commit", "flashgate/gateway/_commit.pyx"),
]


def _fail(msg: str) -> None:
    sys.stderr.write("\nflashgate: cannot build the native core: " + msg + "\n\n")
    sys.exit(1)


def _extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        _fail(
            "Cython is not installed.\n"
            "  Install it first (pip install 'Cython>=3.0'), or let pip do it with a\n"
            "  normal 'pip install -e .' (build isolation installs it for you)."
        )
    import sysconfig

    from setuptools import Extension

    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        _fail(
            "the Python development headers (Python.h) are missing.\n"
            "  On Debian/Ubuntu: apt-get install python3-dev"
        )
    debug = os.environ.get("FLASHGATE_DEBUG") == "1"
    directives = {
        "language_level": "3",
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": debug,
    }
    macros = [("FLASHGATE_DEBUG", "1")] if debug else []
    exts = [
        Extension(name, [src], define_macros=macros, extra_compile_args=["-O2"])
        for name, src in EXTENSIONS
    ]
    return cythonize(
        exts,
        compiler_directives=directives,
        quiet=True,
    )


def _check_compiler():
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    exe = cc.compiler[0] if getattr(cc, "compiler", None) else "cc"
    from shutil import which

    if which(exe) is None:
        _fail(
            f"no C compiler found ('{exe}' is not on PATH).\n"
            "  On Debian/Ubuntu: apt-get install build-essential"
        )
    return DistutilsError


if any(a in sys.argv for a in ("build_ext", "bdist_wheel", "develop", "install", "editable_wheel", "build")):
    _check_compiler()

setup(ext_modules=_extensions())
