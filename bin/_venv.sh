# Sourced by bin/serve and bin/test: a virtual environment in .venv with the given requirements file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "omlweb needs Python 3.11 or newer: set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

ensure_venv() {
    local requirements=$1
    if [ ! -x .venv/bin/python ]; then
        echo "Creating the virtual environment in .venv"
        "$PYTHON" -m venv .venv
    fi
    # Install only when a requirements file changed since the last install.
    local stamp=".venv/.installed-$(basename "$requirements")"
    local wanted
    wanted=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        echo "Installing $requirements"
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -r "$requirements"
        echo "$wanted" > "$stamp"
    fi
}

# Packages from the operating system: bubblewrap isolates runs, libseccomp2 filters their system calls;
# chromium drives the browser tests.
ensure_system_packages() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing system packages: ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "Missing system packages (install them as root): ${missing[*]}" >&2
        return 1
    fi
}
