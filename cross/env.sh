# Shared by devtool and the cross/ scripts: idempotent installers. Sourced, not run.

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
TARGET=aarch64-unknown-linux-gnu
APT_UPDATED=""

# ensure_apt PKG...: installs the packages that are missing (one apt-get update per run at most).
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get -q -o DPkg::Lock::Timeout=300 update
        APT_UPDATED=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
        install --no-install-recommends "${missing[@]}"
}

# ensure_rust: the toolchain pinned in rust-toolchain.toml, with its components and targets.
ensure_rust() {
    if ! command -v rustup >/dev/null; then
        echo "rustup is missing: install it from https://rustup.rs, then run this again" >&2
        exit 1
    fi
    rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
}
