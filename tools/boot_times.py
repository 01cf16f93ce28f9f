"""Boot OS images in turn under qemu, as the boot test does, and report how long each takes.

    tools/bench --boot [--rounds N] IMAGE.raw [IMAGE.raw ...]

Per boot: power-on to the kernel's start (firmware and boot loader), to the appliance's READY=1
(exact: the guest's clock placed by its uptime), and to the first C-ECHO answered from the host
(also waits for DHCP). Images are booted in turn, round after round, so that a change of the
machine's load affects them alike. Build images with ``image/build --debug-shell --config
tests/image-config.json --out DIR`` (the boot test's shell is how the guest is read).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_image import Vm  # noqa: E402  (the boot test's machine, on purpose)


def boot_once(image: Path) -> tuple[float, float, float]:
    """(to the kernel, to READY=1, to the first C-ECHO), in seconds from power-on."""
    vm = Vm(image, Path(tempfile.mkdtemp(prefix="boot-times-")))
    try:
        echo = vm.boot()
        kernel = vm.seconds_to_kernel()
        return kernel, kernel + vm.ready_monotonic(), echo
    finally:
        vm.power_cut()


def main() -> int:
    parser = argparse.ArgumentParser(description="boot images in turn; print the times")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    results: dict[Path, list[tuple[float, float, float]]] = {image: [] for image in args.images}
    for _ in range(args.rounds):
        for image in args.images:
            times = boot_once(image)
            results[image].append(times)
            print(f"{image}: kernel {times[0]:.1f} s, READY {times[1]:.1f} s, "
                  f"C-ECHO {times[2]:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    for image, runs in results.items():
        medians = [statistics.median(run[i] for run in runs) for i in range(3)]
        print(f"{image}: median of {len(runs)}: kernel {medians[0]:.1f} s, "
              f"READY {medians[1]:.1f} s, C-ECHO {medians[2]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
