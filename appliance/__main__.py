"""The ``appliance`` command's entry point (``python -m appliance`` and the console script).

``serve`` keeps numpy out of the long-running process: pydicom imports it eagerly when it is
installed, which costs ~20 MiB of idle memory. Pixel work (decompression, previews) runs in the
separate process of ``pixels.py`` instead, started on demand. pydicom also imports ``requests``
(~5 MiB), only to download its test files, and Pillow, only for colour management of decoded
pixels (numpy's work): both are kept out while pydicom loads, which also saves ~0.3 s of the boot
under software emulation, and importable again afterwards (a hook may use them).
"""

from __future__ import annotations

import sys


def main() -> int:
    serving = len(sys.argv) > 1 and sys.argv[1] == "serve" and "pydicom" not in sys.modules
    if serving:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # "import numpy" now fails
        sys.modules["requests"] = sys.modules["PIL"] = None  # type: ignore[assignment]
    from .cli import main as cli_main

    if serving:
        del sys.modules["requests"], sys.modules["PIL"]
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
