"""Builds hooks/ into tlsprof/_shim*.so: a plain shared library, not a Python module.

It is built as an Extension only so that regular and editable installs place it inside the package;
it exports no PyInit symbol and links neither libpython nor libssl, so it loads into any process.
"""
import os
import shutil
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildShim(build_ext):
    def get_export_symbols(self, ext):
        return []  # not a Python module: no PyInit_ to export

    def copy_file(self, infile, outfile, *args, **kwargs):
        """An editable install copies the built shim into tlsprof/. Writing over the old file in
        place would change the pages every profiled process has mapped from it (they crash): write
        a new file and rename it over the old one, so running processes keep theirs."""
        if not str(outfile).endswith(".so") or getattr(self, "dry_run", False):
            return super().copy_file(infile, outfile, *args, **kwargs)
        if os.path.isdir(outfile):
            outfile = os.path.join(outfile, os.path.basename(infile))
        tmp = f"{outfile}.{os.getpid()}.tmp"
        shutil.copyfile(infile, tmp)
        shutil.copymode(infile, tmp)
        os.replace(tmp, outfile)
        return outfile, 1


shim = Extension(
    "tlsprof._shim",
    sources=sorted(glob("hooks/*.c")),
    depends=sorted(glob("hooks/*.h")),
    libraries=["dl", "pthread"],
    extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden", "-mtls-dialect=gnu2", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-fno-omit-frame-pointer"],
    # nodelete: hooks may still be running when someone dlcloses us; no-undefined: a missing
    # symbol must fail the build, not the target at its first allocation
    extra_link_args=["-Wl,-z,nodelete", "-Wl,--no-undefined"],
)

setup(ext_modules=[shim], cmdclass={"build_ext": BuildShim})
