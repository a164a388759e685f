"""Builds hooks/ into tlsprof/_shim*.so: a plain shared library, not a Python module.

It is built as an Extension only so that regular and editable installs place it inside the package;
it exports no PyInit symbol and links neither libpython nor libssl, so it loads into any process.
"""
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildShim(build_ext):
    def get_export_symbols(self, ext):
        return []  # not a Python module: no PyInit_ to export


shim = Extension(
    "tlsprof._shim",
    sources=sorted(glob("hooks/*.c")),
    depends=sorted(glob("hooks/*.h")),
    libraries=["dl", "pthread"],
    extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-fno-omit-frame-pointer"],
    # nodelete: hooks may still be running when someone dlcloses us; no-undefined: a missing
    # symbol must fail the build, not the target at its first allocation
    extra_link_args=["-Wl,-z,nodelete", "-Wl,--no-undefined"],
)

setup(ext_modules=[shim], cmdclass={"build_ext": BuildShim})
