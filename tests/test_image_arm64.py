"""The arm64 image (``image/build --arch arm64``), booted under qemu's aarch64 emulation.

Opt-in (``APPLIANCE_TEST_ARM64=1 ./tools/test -m image_arm64``): its build runs Debian's package
scripts under qemu-user-static and its boot emulates another instruction set on a shared 2-core
machine, so it costs far more than the x86 test for what differs by architecture: the packages
and wheels, the firmware, the boot loader, the kernel and its console. The checks are the x86
test's own, imported to run again against the arm64 VM.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .test_image import (  # noqa: F401 (test functions imported run again on this module's vm)
    ARM64,
    Vm,
    booted,
    cached_image,
    test_health,
    test_service_ready_and_system_as_designed,
    test_store_and_web_from_the_host,
    test_the_appliance_files_were_read_ahead,
)

pytestmark = [
    pytest.mark.image_arm64,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("APPLIANCE_TEST_ARM64") != "1",
                       reason="the arm64 image is opt-in: APPLIANCE_TEST_ARM64=1 ./tools/test "
                              "-m image_arm64 (installs qemu-user-static; a 10+ minute build)"),
]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    """The arm64 test image of this tree (cached like the x86 one), booted and set up."""
    image = cached_image("test", ["--debug-shell"], ARM64)
    with booted(Vm(image, tmp_path_factory.mktemp("arm64-vm"), ARM64)) as machine:
        yield machine


def test_boots_as_arm64(vm: Vm) -> None:
    """The kernel and the appliance's Python both run as aarch64, not something the host runs."""
    assert vm.check("uname -m") == "aarch64"
    machine = "import platform, numpy, PIL._imaging; print(platform.machine())"
    assert vm.check(f"/opt/appliance/venv/bin/python3 -c '{machine}'") == "aarch64"
