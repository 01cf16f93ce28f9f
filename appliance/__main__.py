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

import sys
import types

KEPT_OUT = ("requests", "PIL", "pydicom.examples")


def main() -> int:
    serving = len(sys.argv) > 1 and sys.argv[1] == "serve" and "pydicom" not in sys.modules
    if serving:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # "import numpy" now fails
        sys.modules["requests"] = sys.modules["PIL"] = None  # type: ignore[assignment]
        # pydicom imports it unconditionally: an empty stand-in while it loads
        sys.modules["pydicom.examples"] = types.ModuleType("pydicom.examples")
    from .cli import main as cli_main

    if serving:
        for name in KEPT_OUT:
            del sys.modules[name]
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
