#!/usr/bin/env bash
# Builds and runs every check: formatting, lints, the rule fixtures and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo run --quiet --locked -- rules check
cargo run --quiet --locked -- rules test
cargo test --locked --all-targets
