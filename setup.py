"""Build the optional compiled statistics kernel; everything else is in pyproject.toml.

Without a C compiler the build goes on without it and weissi uses its numpy kernel
(`weissi_cli.kernel.AVAILABLE` tells which one runs).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - any build failure means "no kernel"
            print(f"warning: weissi's C kernel was not built ({error}); using numpy")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            print(f"warning: weissi's C kernel was not built ({error}); using numpy")


setup(
    ext_modules=[
        Extension(
            "weissi_cli._kernel",
            ["weissi_cli/_kernel.c"],
            extra_compile_args=["-O3", "-Wno-psabi"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
