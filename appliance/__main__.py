"""The ``appliance`` command's entry point (``python -m appliance`` and the console script).

``serve`` keeps numpy out of the long-running process: pydicom imports it eagerly when it is
installed, which costs ~20 MiB of idle memory. Pixel work (decompression, previews) runs in the
separate process of ``pixels.py`` instead, started on demand. pydicom also imports ``requests``
(~5 MiB), only to download its test files, Pillow, only for colour management of decoded pixels
(numpy's work), and ``pydicom.examples``, which looks up 13 of its test files: all three are kept
out while pydicom loads, which saves ~0.6 s of the boot under software emulation, and are
importable again afterwards (a hook may use them).
"""

from __future__ import annotations

import gc
import sys
import types

KEPT_OUT = ("requests", "PIL", "pydicom.examples")


def import_for_serving() -> None:
    """Import the command line with numpy kept out for good and ``KEPT_OUT`` while pydicom
    loads. The OS image's build calls it too, to list the files ``serve`` reads at start-up.
    The cyclic collector is off until ``runtime.serve`` runs: what the imports allocate lives as
    long as the process, and walking it cost 3% of their time."""
    gc.disable()
    sys.modules["numpy"] = None  # type: ignore[assignment]  # "import numpy" now fails
    sys.modules["requests"] = sys.modules["PIL"] = None  # type: ignore[assignment]
    # pydicom imports it unconditionally: an empty stand-in while it loads
    sys.modules["pydicom.examples"] = types.ModuleType("pydicom.examples")
    from . import cli  # noqa: F401

    for name in KEPT_OUT:
        del sys.modules[name]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve" and "pydicom" not in sys.modules:
        import_for_serving()
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
