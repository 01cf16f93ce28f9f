"""The ``appliance`` command's entry point (``python -m appliance`` and the console script).

``serve`` keeps numpy out of the long-running process: pydicom imports it eagerly when it is
installed, which costs ~20 MiB of idle memory. Pixel work (decompression, previews) runs in the
separate process of ``pixels.py`` instead, started on demand.
"""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve" and "pydicom" not in sys.modules:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # "import numpy" now fails
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
