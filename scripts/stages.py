#!/usr/bin/env python3
"""The worker's CPU split by stage, from `perf script` output (stacks).

Reads `perf script` text on stdin. Each sample is charged to the first frame,
from the leaf towards the root, that names a stage: one of the worker's own
modules, or a library that only one stage uses (sqlx and SQLite: store;
lapin: broker; lettre's message builder: MIME; the SMTP client: SMTP;
handlebars: render). Libraries shared by stages (serde_json, the allocator,
memmove, the kernel) are charged to whoever called them. Samples with no such
frame are `runtime` (tokio's scheduler, epoll, idle wake-ups) when they are
on a runtime thread, `store` on sqlx's SQLite threads, else `other`.

Usage: perf script -i perf.data | stages.py CPU_MS_PER_EVENT
Prints one line per stage (share, ms per event, share in the kernel), then
`stages: decode=… route=… store=… render=… mime=… smtp=… broker=… runtime=… other=…`
in ms of CPU per event.
"""

import re
import sys

STAGES = ["decode", "route", "store", "render", "mime", "smtp", "broker", "runtime", "other"]

# (pattern, stage), tried in order on each frame's symbol.
FRAMES = [
    (re.compile(r"referral_router::decode"), "decode"),
    (re.compile(r"referral_router::(route|directory|flow::directory|preferences)"), "route"),
    (re.compile(r"referral_router::store|sqlx_|sqlx::|libsqlite3|sqlite3[A-Z_a-z]"), "store"),
    (re.compile(r"referral_router::render::(message|encode)|lettre::message|quoted_printable|referral_router::dispatch::email::Letterhead"), "mime"),
    (re.compile(r"referral_router::render|handlebars::"), "render"),
    (re.compile(r"referral_router::dispatch::(email|smtp)|lettre::"), "smtp"),
    (re.compile(r"referral_router::(broker|consume|dispatch::action_center)|lapin::|amq_protocol"), "broker"),
]

HEADER = re.compile(r"^(\S.*?)\s+\d+(/\d+)?\s+(\[\d+\]\s+)?\d+\.\d+:")


def classify(comm, frames):
    for symbol in frames:
        for pattern, stage in FRAMES:
            if pattern.search(symbol):
                return stage
    if "sqlx-sqlite" in comm or "sqlite" in comm:
        return "store"
    if "tokio" in comm or "referral-router" in comm:
        return "runtime"
    return "other"


def samples(lines):
    comm, frames, kernel = None, [], False
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames, kernel
            comm, frames, kernel = None, [], False
            continue
        if comm is None:
            m = HEADER.match(line)
            comm = m.group(1).strip() if m else line.split()[0]
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        if not frames:
            kernel = "[kernel.kallsyms]" in rest
        frames.append(rest.rsplit(" (", 1)[0])
    if comm is not None:
        yield comm, frames, kernel


def main():
    per_event = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    counts = {s: 0 for s in STAGES}
    kernel = {s: 0 for s in STAGES}
    total = 0
    for comm, frames, in_kernel in samples(sys.stdin):
        stage = classify(comm, frames)
        counts[stage] += 1
        kernel[stage] += in_kernel
        total += 1
    if total == 0:
        print("stages: no samples")
        return
    for s in STAGES:
        share = counts[s] / total
        k = kernel[s] / counts[s] if counts[s] else 0
        print(f"  {s:<8} {100 * share:5.1f}%  {share * per_event:.3f} ms/event  ({100 * k:.0f}% of it in the kernel)")
    print("stages: " + " ".join(f"{s}={counts[s] / total * per_event:.3f}" for s in STAGES) + f" samples={total}")


if __name__ == "__main__":
    main()
