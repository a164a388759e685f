"""Builds hooks/ into tlsprof/_shim*.so and tlsprof/_shim_preload*.so: plain shared libraries, not
Python modules.

They are built as Extensions only so that regular and editable installs place them inside the
package; they export no PyInit symbol and link neither libpython nor libssl, so they load into any
process. The two differ in how they reach their thread-local state (every allocator hook does):
- _shim (attach: dlopen'ed into a running process) asks through TLS descriptors, a call per access,
  because a library loaded late may find no room left in the static TLS block;
- _shim_preload (run: LD_PRELOAD) is loaded with the program, when its TLS gets a place in the
  static block: initial-exec, no call (0.5 ms of a 22 ms context build, bench/shim_variants.py).
"""

import os
import shutil
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildShim(build_ext):
    def build_extension(self, ext):
        """Both libraries compile hooks/, with different flags: their object files are kept apart."""
        temp = self.build_temp
        self.build_temp = os.path.join(temp, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = temp

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


FLAGS = [
    "-std=gnu11",
    "-O2",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
]


def shim(name, tls_flag):
    return Extension(
        name,
        sources=sorted(glob("hooks/*.c")),
        depends=sorted(glob("hooks/*.h")),
        libraries=["dl", "pthread"],
        extra_compile_args=[*FLAGS, tls_flag],
        # nodelete: hooks may still be running when someone dlcloses us; no-undefined: a missing
        # symbol must fail the build, not the target at its first allocation
        extra_link_args=["-Wl,-z,nodelete", "-Wl,--no-undefined"],
    )


setup(
    ext_modules=[
        shim("tlsprof._shim", "-mtls-dialect=gnu2"),
        shim("tlsprof._shim_preload", "-ftls-model=initial-exec"),
    ],
    cmdclass={"build_ext": BuildShim},
)
