#!/usr/bin/env bash
# Builds and runs every check: formatting, lints, the rule fixtures, the templates and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo run --quiet --locked -- rules check
cargo run --quiet --locked -- rules test
cargo run --quiet --locked -- templates check
cargo test --locked --all-targets
