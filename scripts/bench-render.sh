#!/usr/bin/env bash
# The render benchmark: Rust (release) against handlebars.js on the same
# templates and the same emails; prints µs per email and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d bench/node_modules/handlebars ]; then
  npm install --prefix bench --no-audit --no-fund --silent
fi
cargo bench --locked --bench render
