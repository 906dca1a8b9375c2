#!/usr/bin/env bash
# Installs code-server (pinned by code-server/package-lock.json and VS Code's own
# npm-shrinkwrap.json) into DIR for the extension's end-to-end test, and prints the path of
# its launcher. Nothing is fetched outside the package registry: install scripts that would
# download from elsewhere are skipped, the native modules VS Code's server loads are built
# from source, and VS Code's search uses Debian's ripgrep.
#
# Needs Node 20 (what code-server 4.100 runs on), a C++ toolchain, Node's headers, and `rg`.
set -euo pipefail
mkdir -p "${1:?usage: install-code-server.sh DIR}"
dir="$(cd "$1" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
stamp="$dir/.installed"
# The pins and this script's own steps: a change to either reinstalls.
wanted="$(cat "$here/code-server/package-lock.json" "$0" | sha256sum)"
launcher="$dir/node_modules/code-server/out/node/entry.js"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    echo "$dir/node_modules/.bin/code-server"
    exit 0
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" != 20 ]; then
    echo "code-server 4.100 runs on Node 20; this is Node $(node --version)" >&2
    exit 2
fi
rg="$(command -v rg || true)"
if [ -z "$rg" ]; then
    echo "ripgrep (rg) is missing: VS Code's file search needs it (apt-get install ripgrep)" >&2
    exit 2
fi

rm -rf "$dir"
mkdir -p "$dir"
cp "$here/code-server/package.json" "$here/code-server/package-lock.json" "$dir/"
export npm_config_loglevel=error npm_config_audit=false npm_config_fund=false
# node-pty's build step runs `npx node-gyp`; let it install without a prompt.
export npm_config_yes=true
{
    (cd "$dir" && npm ci --ignore-scripts && npm rebuild argon2)
    vscode="$dir/node_modules/code-server/lib/vscode"
    (cd "$vscode" && npm install --omit=dev --ignore-scripts \
        && npm rebuild @vscode/spdlog node-pty native-watchdog @vscode/deviceid)
    # What code-server's own postinstall does besides `npm install`.
    ln -sfn node_modules "$vscode/node_modules.asar"
    ln -sfn code-linux.sh "$vscode/bin/remote-cli/code-server"
    ln -sfn browser-linux.sh "$vscode/bin/helpers/browser.sh"
    mkdir -p "$vscode/node_modules/@vscode/ripgrep/bin"
    ln -sfn "$rg" "$vscode/node_modules/@vscode/ripgrep/bin/rg"
} >&2
test -f "$launcher"
echo "$wanted" > "$stamp"
echo "$dir/node_modules/.bin/code-server"
