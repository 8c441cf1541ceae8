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
# The console's browser tests drive headless Chromium through WebDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
cargo test --locked --all-targets
