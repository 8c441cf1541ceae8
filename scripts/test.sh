#!/usr/bin/env bash
# Builds and runs every check: formatting, lints, the rule fixtures, the
# templates, the deploy files and the test suite. This is what CI runs.
# The integration tests need the local RabbitMQ and PostgreSQL (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo run --quiet --locked -- rules check
cargo run --quiet --locked -- rules test
cargo run --quiet --locked -- templates check
if ! command -v check-jsonschema >/dev/null || ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check check-jsonschema kubernetes-validate
fi
./deploy/validate.sh
cargo test --locked --all-targets
