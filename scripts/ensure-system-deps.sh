#!/usr/bin/env bash
# Checks the system packages formation-node needs and installs the missing ones.
#
# Usage: scripts/ensure-system-deps.sh [PURPOSE...]
#   PURPOSE is one or more of: venv run test (default: all of them).
#   venv  what building .venv needs (pip compiles some dependencies from source)
#   run   what `make run` needs beyond the venv
#   test  what `make test` needs beyond the venv (interop peers, ...)
#
# As root it installs what is missing with apt-get; otherwise it prints the exact
# command to run and exits 1. Idempotent, and only reads local state when nothing
# is missing, so it is cheap to run before every `make test`.
#
# Environment: PYTHON (default python3) is the interpreter .venv is built from;
# the venv and header checks ask it, not whatever python3 apt would install.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

# One entry per Debian package: "purposes|package|check".
#   check is  dpkg:NAME (package installed), cmd:NAME (command on PATH)
#   or        py:CODE (PYTHON -c CODE exits 0).
# To add a package, add an entry with a comment saying why it is needed.
REQUIREMENTS=(
    # `python3 -m venv` needs ensurepip, which Debian ships separately.
    "venv run test|python3-venv|py:import ensurepip, venv"
    # Python.h: pip compiles dependencies that have no wheel (fastecdsa, via py-libp2p).
    "venv run test|python3-dev|py:import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"
    # gmp.h: fastecdsa (pulled in by py-libp2p) compiles against GMP.
    "venv run test|libgmp-dev|dpkg:libgmp-dev"
    # The interop tests run JavaScript oracles (ethers, later js-libp2p) under node. A node
    # from elsewhere (nvm, nodesource) counts; Debian's (18 on Debian 12) only fills a gap.
    "test|nodejs|cmd:node"
    # npm installs tests/interop/js from its package-lock.json.
    "test|npm|cmd:npm"
    # The image builder (node/pack/base.py, builder.py): debootstrap makes the cached Debian base
    # root filesystem a Formfile build starts from.
    "run test|debootstrap|cmd:debootstrap"
    # qemu-img converts the built ext4 root filesystem into the qcow2 image a VM boots.
    "run test|qemu-utils|cmd:qemu-img"
    # mkfs.ext4 -d writes the image's filesystem from a directory (no loop mount); debugfs reads
    # files back out of an image in the tests.
    "run test|e2fsprogs|cmd:debugfs"
    # The VM driver (node/vmm/qemu.py) boots each instance under QEMU (TCG, or KVM when a probe
    # boot shows it works); qemu-system-x86 also brings the firmware q35 needs.
    "run test|qemu-system-x86|cmd:qemu-system-x86_64"
    # dnsmasq gives each VM its reserved address by DHCP on the bridge inside the VM netns.
    "run test|dnsmasq-base|cmd:dnsmasq"
    # `ip netns exec` runs QEMU and dnsmasq inside the VM netns (usually installed already).
    "run test|iproute2|cmd:ip"
    # The mesh data path (node/mesh/wireguard.py): these kernels have no WireGuard module, so
    # each node runs Debian's userspace wireguard-go on a TUN inside its netns.
    "run test|wireguard-go|cmd:wireguard-go"
    # wg reads a userspace interface's state over the same UAPI socket (debugging, tests).
    "run test|wireguard-tools|cmd:wg"
    # A host routes its instances' mesh addresses to their guests with nftables DNAT/SNAT
    # inside the VMs' netns (node/mesh/link.py).
    "run test|nftables|cmd:nft"
    # The mesh test and benchmark ping across the mesh (tests/real/test_mesh_wireguard.py).
    "test|iputils-ping|cmd:ping"
    # The DNS tests ask the node's DNS server with the real `dig` (tests/real/test_dns_dig.py).
    "test|dnsutils|cmd:dig"
)

ALL_PURPOSES="venv run test"

usage() {
    echo "usage: $0 [PURPOSE...]   where PURPOSE is one of: $ALL_PURPOSES" >&2
    exit 2
}

purposes=("$@")
if [ "${#purposes[@]}" -eq 0 ]; then
    read -r -a purposes <<<"$ALL_PURPOSES"
fi
for p in "${purposes[@]}"; do
    case " $ALL_PURPOSES " in
    *" $p "*) ;;
    *)
        echo "error: unknown purpose '$p'." >&2
        usage
        ;;
    esac
done

present() {
    local check="$1"
    case "$check" in
    dpkg:*)
        [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "${check#dpkg:}" 2>/dev/null)" = "ii " ]
        ;;
    cmd:*)
        command -v "${check#cmd:}" >/dev/null 2>&1
        ;;
    py:*)
        "$PYTHON" -c "${check#py:}" >/dev/null 2>&1
        ;;
    *)
        echo "error: bad check '$check' in $0; use dpkg:, cmd: or py:." >&2
        exit 2
        ;;
    esac
}

wanted() {
    local entry_purposes=" $1 " p
    for p in "${purposes[@]}"; do
        case "$entry_purposes" in *" $p "*) return 0 ;; esac
    done
    return 1
}

missing_packages() {
    local entry entry_purposes package check
    for entry in "${REQUIREMENTS[@]}"; do
        IFS='|' read -r entry_purposes package check <<<"$entry"
        if wanted "$entry_purposes" && ! present "$check"; then
            echo "$package"
        fi
    done
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: '$PYTHON' not found. Install Python 3.11+ (sudo apt-get install python3) or set PYTHON=/path/to/python3.11." >&2
    exit 1
fi

mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "system packages missing (for ${purposes[*]}): ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no apt-get on this machine; install the equivalents of: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: not root, so not installing them. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt (unattended-upgrades on a fresh machine) instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=300)
apt-get "${apt_opts[@]}" update -q
apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"

mapfile -t still_missing < <(missing_packages)
if [ "${#still_missing[@]}" -ne 0 ]; then
    echo "error: still missing after apt-get install: ${still_missing[*]}" >&2
    echo "  (if PYTHON=$PYTHON is not Debian's python3, its venv/headers must come from where it was installed)" >&2
    exit 1
fi
echo "installed: ${missing[*]}" >&2
