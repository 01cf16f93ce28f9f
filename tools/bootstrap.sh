# Sourced by tools/serve and tools/test: installs what the appliance needs, idempotently.
# Usage: bootstrap <extra> where extra is "" (run) or "test" (test suite and its peers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

RUN_PACKAGES=(python3 python3-venv python3-dev build-essential pkg-config libsystemd-dev dcmtk)
TEST_PACKAGES=(orthanc curl procps prometheus chromium chromium-driver)
# image/build and its boot test (tests/test_image.py) under qemu with UEFI firmware.
IMAGE_PACKAGES=(mmdebstrap e2fsprogs dosfstools mtools fdisk zstd qemu-system-x86 qemu-utils ovmf
                openssh-client)
# The arm64 image's build and boot test, opt-in (APPLIANCE_TEST_ARM64=1): qemu-user-static alone
# is 60 MB to fetch and 380 MB installed, for a test the default run skips.
IMAGE_ARM64_PACKAGES=(qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "bootstrap: installing ${missing[*]}" >&2
    as_root apt-get -o DPkg::Lock::Timeout=900 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >&2
    # Debian starts these services on install; tests run their own instances.
    for service in orthanc prometheus; do
        if printf '%s\n' "${missing[@]}" | grep -qx "$service"; then
            as_root systemctl disable --now "$service" >/dev/null 2>&1 || as_root service "$service" stop >/dev/null 2>&1 || true
        fi
    done
}

python_env() {
    local extra="$1"
    local stamp="$VENV/.installed-$extra"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
        if [ -n "$extra" ]; then
            "$VENV/bin/python" -m pip install -q -e "$ROOT[$extra]" >&2
        else
            "$VENV/bin/python" -m pip install -q -e "$ROOT" >&2
        fi
        echo "$want" > "$stamp"
    fi
}

bootstrap() {
    local extra="${1:-}"
    apt_install "${RUN_PACKAGES[@]}"
    if [ "$extra" = "test" ]; then
        apt_install "${TEST_PACKAGES[@]}"
        apt_install "${IMAGE_PACKAGES[@]}"
        [ "${APPLIANCE_TEST_ARM64:-}" != 1 ] || apt_install "${IMAGE_ARM64_PACKAGES[@]}"
    fi
    python_env "$extra"
}
