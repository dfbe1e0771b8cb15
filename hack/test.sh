#!/usr/bin/env bash
# Runs vigil's whole test suite: unit tests, integration tests against the real binaries over
# real sockets. The integration tests start the built binaries, so build them first.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
