#!/usr/bin/env bash
# The end-to-end benchmark, side by side with the broker's own ceiling, in one run:
#   1. the ceiling: a bare lapin consumer (../shared/tools/amqp-ceiling, or
#      $CEILING_DIR) acking persistent messages of the events' mean size at
#      the worker's prefetch;
#   2. per store (SQLite, then PostgreSQL): the real worker against a real SMTP
#      sink on loopback; the directory is loaded first, then $EVENTS events of
#      the SPEC's mix are published while it runs; loadgen counts lost and
#      duplicate emails, latency publish -> SMTP-accepted, events/s, emails/s;
#      CPU time per event and peak RSS come from /proc;
#   3. memory: a backlog of $BACKLOG events published while the worker is
#      stopped, then consumed; its peak RSS;
#   4. replay: $REPLAY_EVENTS events of the mix routed from a file, and the
#      same through two rule sets (replay --against), events per second;
#   5. rendering against handlebars.js (scripts/bench-render.sh);
#   6. the I/O floor: amqp-ceiling --smtp, the least work any correct router
#      does per event (consume, the same number of emails of the same mean
#      size as the router sent on SQLite, over the same SMTP connections, one
#      fsync'd record per event, ack), on a quorum queue like the router's;
#   7. the peer: ../shared/tools/peer-node, the worker a team would write by
#      hand in Node.js, measured like the router (run from a copy under the
#      target folder, where its node_modules are installed once);
#   8. a profile: one more SQLite run under `perf` (not in the medians), its
#      CPU split by stage (scripts/stages.py).
# Needs RabbitMQ on 127.0.0.1:5672 (guest) and PostgreSQL on 127.0.0.1:5432
# (trust, user postgres). Everything it declares or creates is named bench.*
# / bench_* with a run id; each run's queues and database are deleted when the
# run ends, the exchanges and the work folder at exit. It writes nothing in
# the checkout outside target/.
# Last line: `bench: floor_ratio=X peer_ratio=Y pg_floor_ratio=Z render_ratio=R rss_mib=M`
# (router on SQLite / floor, router on SQLite / peer, router on PostgreSQL /
# floor, our render time / handlebars.js, peak RSS of the 100k backlog).
# Knobs (environment): EVENTS, BACKLOG (0 skips it), RUNS (medians over them),
# BACKLOG_LIMIT (seconds), REPLAY_EVENTS (0 skips replay), PREFETCH, CONCURRENCY, SMTP_POOL, PG_POOL, PG_WORKERS, PG_SSLMODE, STORES, RENDER,
# FLOOR (0 skips it), FLOOR_MESSAGES, PEER (0 skips it), PEER_DIR, PROFILE (0 skips it), PERF_DIR, WORKER_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

EVENTS=${EVENTS:-3000}
BACKLOG=${BACKLOG:-100000}
RUNS=${RUNS:-3}
PREFETCH=${PREFETCH:-256}
CONCURRENCY=${CONCURRENCY:-128}
SMTP_POOL=${SMTP_POOL:-32}
PG_POOL=${PG_POOL:-16}
PG_WORKERS=${PG_WORKERS:-1} # workers sharing the queue and the database in the PostgreSQL runs
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
# Plain on loopback, like every other connection of the bench (AMQP, SMTP) and
# of the floor; `prefer` or `require` measures the worker with TLS to the database.
PG_SSLMODE=${PG_SSLMODE:-disable}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
CEILING_DIR=${CEILING_DIR:-$ROOT/../shared/tools/amqp-ceiling}
WAIT_LIMIT=${WAIT_LIMIT:-150} # seconds any one phase may take to drain
STORES=${STORES:-sqlite postgres}
RENDER=${RENDER:-1}        # 0: skip the render comparison
PERF_DIR=${PERF_DIR:-}     # set: record a perf profile of the worker in each end-to-end run there
FLOOR=${FLOOR:-1}
FLOOR_MESSAGES=${FLOOR_MESSAGES:-20000}
PEER=${PEER:-1}
PEER_DIR=${PEER_DIR:-$ROOT/../shared/tools/peer-node}
PROFILE=${PROFILE:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

RUN=$(date +%s)$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")
EXCHANGE=bench.events.$RUN
DLX=bench.dlx.$RUN
AC=bench.ac.$RUN
QUEUES=()
DATABASES=()
PIDS=()

log() { echo "bench: $*" >&2; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  local qs
  qs=$(IFS=,; echo "${QUEUES[*]}")
  "$BIN/examples/loadgen" cleanup --amqp "$AMQP_URL" --queues "$qs" --exchanges "$EXCHANGE,$DLX,$AC" || true
  for db in "${DATABASES[@]}"; do
    psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
BIN=$CARGO_TARGET_DIR/release
WORKER_BIN=${WORKER_BIN:-$BIN/referral-router}
trap cleanup EXIT

command -v psql >/dev/null || { log "needs psql (postgresql-client)"; exit 1; }

log "building (release)"
cargo build --quiet --release --locked --bin referral-router --example loadgen --example smtp_sink
CEILING_TARGET=${CEILING_TARGET:-$CARGO_TARGET_DIR/amqp-ceiling}
CARGO_TARGET_DIR=$CEILING_TARGET cargo build --quiet --release --manifest-path "$CEILING_DIR/Cargo.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sum of a Prometheus counter over its labels, from the /metrics of every
# worker of the run (their ports are in PORTS).
counter() {
  local port
  for port in "${PORTS[@]}"; do curl -sf "http://127.0.0.1:$port/metrics"; done |
    awk -v m="$1" 'index($1, m "{") == 1 || $1 == m {s += $2} END {printf "%d", s}'
}

# Waits (bounded) until the worker has settled at least $1 messages.
wait_settled() {
  local want=$1 deadline=$((SECONDS + WAIT_LIMIT)) got=0
  while ((SECONDS < deadline)); do
    got=$(counter "${SETTLED:-router_messages_settled_total}" || echo 0)
    ((got >= want)) && return 0
    sleep 0.2
  done
  log "timed out: settled $got of $want"
  return 1
}

wait_ready() {
  local deadline=$((SECONDS + ${READY_LIMIT:-60}))
  while ((SECONDS < deadline)); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && return 0
    kill -0 "$WORKER" 2>/dev/null || { log "worker exited"; tail -20 "$WORK/worker.log" >&2; return 1; }
    sleep 0.2
  done
  log "worker not ready"
  return 1
}

proc_files() { # file pid...: /proc/PID/FILE of each
  local file=$1 p
  shift
  for p in "$@"; do cat "/proc/$p/$file"; done
}
cpu_ticks() { proc_files stat "$@" | awk '{s += $14 + $15} END {print s}'; }               # summed over the pids
hwm_kib() { proc_files status "$@" | awk '/^VmHWM/ && $2 > m {m = $2} END {print m + 0}'; } # the largest

# Starts $3 workers (default 1) on one store and one queue: WORKERS and PORTS
# list them, WORKER and HTTP_PORT are the first.
start_worker() { # store-url queue [workers]
  WORKERS=() PORTS=()
  local n
  for n in $(seq 1 "${3:-1}"); do
    start_one "$1" "$2"
    WORKERS+=("$WORKER") PORTS+=("$HTTP_PORT")
  done
  WORKER=${WORKERS[0]} HTTP_PORT=${PORTS[0]}
}

start_one() { # store-url queue
  HTTP_PORT=$(free_port)
  ROUTER__AMQP__URL=$AMQP_URL ROUTER__AMQP__EXCHANGE=$EXCHANGE ROUTER__AMQP__QUEUE=$2 \
    ROUTER__AMQP__DEAD_LETTER_EXCHANGE=$DLX ROUTER__AMQP__ACTION_CENTER_EXCHANGE=$AC \
    ROUTER__AMQP__PREFETCH=$PREFETCH ROUTER__AMQP__CONCURRENCY=$CONCURRENCY \
    ROUTER__SMTP__HOST=127.0.0.1 ROUTER__SMTP__PORT=$SMTP_PORT ROUTER__SMTP__TLS=none \
    ROUTER__SMTP__POOL_MAX_SIZE=$SMTP_POOL ROUTER__STORE__URL=$1 ROUTER__STORE__MAX_CONNECTIONS=$PG_POOL \
    ROUTER__HTTP__ADDR=127.0.0.1:$HTTP_PORT ROUTER__DIGEST__CHECK_EVERY=1h ROUTER__LOG__LEVEL=warn \
    "$WORKER_BIN" run >>"$WORK/worker.log" 2>&1 &
  WORKER=$!
  PIDS+=("$WORKER")
  wait_ready
}

stop_worker() {
  local deadline=$((SECONDS + 30)) w
  for w in "${WORKERS[@]}"; do kill -TERM "$w" 2>/dev/null || true; done
  for w in "${WORKERS[@]}"; do
    while kill -0 "$w" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$w" 2>/dev/null || true
    wait "$w" 2>/dev/null || true
  done
}

store_url() { # kind name: sets STORE_URL
  if [ "$1" = sqlite ]; then
    STORE_URL="sqlite://$WORK/$2.db"
  else
    local db=bench_${2//[^a-z0-9]/_}
    psql "$PG_URL/postgres" -qc "CREATE DATABASE $db" >/dev/null
    DATABASES+=("$db")
    STORE_URL="$PG_URL/$db?sslmode=$PG_SSLMODE"
  fi
}

loadgen() { "$BIN/examples/loadgen" "$@" --amqp "$AMQP_URL"; }

# One end-to-end run; appends `events_s emails_s p50_ms p99_ms cpu_ms_per_event rss_mib lost dup cores`
# to $WORK/rows-KIND.
e2e() { # kind run [rows-name]
  local name=$1$2 queue=bench.router.$RUN.$1$2 rows=${3:-$1}
  QUEUES+=("$queue" "$queue.dead")
  store_url "$1" "$name$RUN"
  local workers=1
  [ "$1" = postgres ] && workers=$PG_WORKERS
  start_worker "$STORE_URL" "$queue" "$workers"
  loadgen publish --exchange "$EXCHANGE" --events 0 --manifest "$WORK/dir.jsonl" 2>/dev/null
  local dir
  dir=$(sed -n 's/.*"directory":\([0-9]*\).*/\1/p' "$WORK/dir.jsonl")
  wait_settled "$dir"
  local cpu0 sink=$WORK/sink-$name.jsonl
  : >"$WORK/sink.jsonl"
  cpu0=$(cpu_ticks "${WORKERS[@]}")
  local t0=$EPOCHREALTIME perf=
  if [ -n "${STACKS:-}" ]; then
    perf record -q -F 199 --call-graph dwarf,16384 -p "$WORKER" -o "$STACKS" 2>/dev/null &
    perf=$!
  elif [ -n "$PERF_DIR" ]; then
    mkdir -p "$PERF_DIR"
    perf record -q -F 499 -g -p "$WORKER" -o "$PERF_DIR/perf-$name.data" 2>/dev/null &
    perf=$!
  fi
  loadgen publish --exchange "$EXCHANGE" --no-directory --events "$EVENTS" --manifest "$WORK/m-$name.jsonl" \
    2>"$WORK/publish.log"
  wait_settled $((dir + EVENTS))
  local cpu1 rss
  cpu1=$(cpu_ticks "${WORKERS[@]}")
  local wall
  wall=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')
  rss=$(hwm_kib "${WORKERS[@]}")
  if [ -n "$perf" ]; then kill -INT "$perf" && wait "$perf" || true; fi
  stop_worker
  # The run's queues and database go now: a queue left bound to the exchange
  # would take a copy of every later event, taxing the runs after it.
  loadgen cleanup --queues "$queue,$queue.dead" >/dev/null 2>&1 || true
  drop_store "$1" "$name$RUN"
  cp "$WORK/sink.jsonl" "$sink"
  loadgen check --manifest "$WORK/m-$name.jsonl" --sink "$sink" >"$WORK/check-$name.txt"
  cat "$WORK/check-$name.txt" >&2
  row "$WORK/check-$name.txt" "$sink" $((cpu1 - cpu0)) "$rss" "$wall" >>"$WORK/rows-$rows"
}

# One row of figures from a run's check and sink: `events_s emails_s p50_ms
# p99_ms cpu_ms_per_event rss_mib lost dup cores emails_per_event email_bytes`.
row() { # check sink cpu-ticks rss-kib wall-s
  local bytes
  bytes=$(awk -F'"bytes":' 'NF > 1 {split($2, a, /[,}]/); s += a[1]; n++} END {printf "%.0f", n ? s / n : 0}' "$2")
  awk -v cpu="$3" -v tck="$(getconf CLK_TCK)" -v n="$EVENTS" -v rss="$4" -v wall="$5" -v bytes="$bytes" \
    -v emails="$(wc -l <"$2")" '
    /^latency/ { for (i = 1; i <= NF; i++) { if ($i ~ /^p50=/) p50 = substr($i, 5); if ($i ~ /^p99=/) p99 = substr($i, 5);
                 if ($i == "emails/s") em = $(i + 1); if ($i == "events/s") ev = $(i + 1) } }
    /^lost=/ { split($0, a, /[ =]/); lost = a[2]; dup = a[4] }
    END { sub(/ms;?/, "", p50); sub(/ms;?/, "", p99); sub(/;/, "", em);
          printf "%s %s %s %s %.3f %.1f %s %s %.2f %.3f %s\n", ev, em, p50, p99, cpu * 1000 / tck / n, rss / 1024, lost, dup,
                 cpu / tck / wall, emails / n, bytes }' "$1"
}

drop_store() { # kind name
  if [ "$1" = sqlite ]; then
    rm -f "$WORK/$2.db" "$WORK/$2.db-wal" "$WORK/$2.db-shm" "$WORK/$2.db.sent"*
  else
    psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS bench_${2//[^a-z0-9]/_} WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
SMTP_PORT=$(free_port)
"$BIN/examples/smtp_sink" --port "$SMTP_PORT" --out "$WORK/sink.jsonl" 2>/dev/null &
PIDS+=($!)

# The events' mean size, for the ceiling's messages.
# Published to the default exchange with no queue of that name: dropped by the broker.
SIZE=$(loadgen publish --exchange "" --no-directory --events 1000 --manifest "$WORK/sizing.jsonl" 2>&1 |
  sed -n 's/.*mean_bytes=\([0-9]*\).*/\1/p')

log "ceiling: amqp-ceiling, prefetch $PREFETCH, ${SIZE} B messages"
CEILINGS=()
for r in $(seq 1 "$RUNS"); do
  QUEUES+=("bench.ceiling.$RUN")
  line=$(timeout 120 "$CEILING_TARGET/release/amqp-ceiling" --url "$AMQP_URL" --messages 50000 \
    --prefetch "$PREFETCH" --size "$SIZE" --queue "bench.ceiling.$RUN" | tail -1)
  loadgen cleanup --queues "bench.ceiling.$RUN" >/dev/null 2>&1 || true
  echo "$line" >&2
  CEILINGS+=("$(sed -n 's/.*consume=\([0-9]*\).*/\1/p' <<<"$line")")
done
CEILING=$(printf '%s\n' "${CEILINGS[@]}" | median)

declare -A RESULT
for kind in $STORES; do
  for r in $(seq 1 "$RUNS"); do
    log "e2e $kind run $r: $EVENTS events, prefetch $PREFETCH, concurrency $CONCURRENCY"
    e2e "$kind" "$r"
  done
  for col in 1 2 3 4 5 6 7 8 9 10 11; do
    RESULT[$kind.$col]=$(awk -v c=$col '{print $c}' "$WORK/rows-$kind" | median)
  done
done

# The I/O floor, with the router's own load: its emails per event and their
# mean size on SQLite, over as many SMTP connections.
EMAILS_PER_EVENT=${RESULT[sqlite.10]:-2.7}
EMAIL_BYTES=${RESULT[sqlite.11]:-9750}
FLOOR_RATE=0 FLOOR_EMAILS=n/a FLOOR_CPU=n/a
if [ "$FLOOR" = 1 ]; then
  log "floor: $FLOOR_MESSAGES messages, $EMAILS_PER_EVENT emails of $EMAIL_BYTES B each, $SMTP_POOL SMTP connections"
  : >"$WORK/rows-floor"
  for r in $(seq 1 "$RUNS"); do
    q=bench.floor.$RUN.$r
    QUEUES+=("$q")
    line=$(timeout 300 "$CEILING_TARGET/release/amqp-ceiling" --url "$AMQP_URL" --messages "$FLOOR_MESSAGES" \
      --prefetch "$PREFETCH" --size "$SIZE" --queue "$q" --queue-type quorum --smtp "127.0.0.1:$SMTP_PORT" \
      --emails-per-message "$EMAILS_PER_EVENT" --email-bytes "$EMAIL_BYTES" --smtp-connections "$SMTP_POOL" \
      --durable-dir "$WORK" | tail -1)
    loadgen cleanup --queues "$q" >/dev/null 2>&1 || true
    echo "$line" >&2
    awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}} END {print v["msgs_per_s"], v["emails_per_s"], v["cpu_ms_per_msg"]}' \
      <<<"$line" >>"$WORK/rows-floor"
  done
  FLOOR_RATE=$(awk '{print $1}' "$WORK/rows-floor" | median)
  FLOOR_EMAILS=$(awk '{print $2}' "$WORK/rows-floor" | median)
  FLOOR_CPU=$(awk '{print $3}' "$WORK/rows-floor" | median)
fi

# The peer: the Node.js worker a team would write by hand, on the same load.
PEER_RATE=0
if [ "$PEER" = 1 ]; then
  log "peer: $PEER_DIR"
  PEER_HOME=$CARGO_TARGET_DIR/peer-node
  mkdir -p "$PEER_HOME"
  rm -rf "$PEER_HOME/templates"
  cp -Rp "$PEER_DIR"/package.json "$PEER_DIR"/package-lock.json "$PEER_DIR"/worker.js "$PEER_DIR"/run.sh \
    "$PEER_DIR"/templates "$PEER_HOME"/
  chmod -R u+w "$PEER_HOME"
  : >"$WORK/rows-peer"
  for r in $(seq 1 "$RUNS"); do
    queue=bench.peer.$RUN.$r
    QUEUES+=("$queue" "$queue.dead")
    HTTP_PORT=$(free_port)
    AMQP_URL=$AMQP_URL EXCHANGE=$EXCHANGE QUEUE=$queue QUEUE_TYPE=quorum AC_EXCHANGE=$AC \
      SMTP_HOST=127.0.0.1 SMTP_PORT=$SMTP_PORT SMTP_CONNECTIONS=$SMTP_POOL PREFETCH=$PREFETCH \
      DB_PATH="$WORK/peer-$r.db" METRICS_PORT=$HTTP_PORT "$PEER_HOME/run.sh" >>"$WORK/peer.log" 2>&1 &
    WORKER=$!
    PIDS+=("$WORKER")
    WORKERS=("$WORKER") PORTS=("$HTTP_PORT")
    # The first start installs its pinned dependencies (better-sqlite3 may compile).
    READY_LIMIT=400 wait_ready || { tail -20 "$WORK/peer.log" >&2; exit 1; }
    loadgen publish --exchange "$EXCHANGE" --events 0 --manifest "$WORK/dir.jsonl" 2>/dev/null
    dir=$(sed -n 's/.*"directory":\([0-9]*\).*/\1/p' "$WORK/dir.jsonl")
    SETTLED=peer_messages_settled_total wait_settled "$dir"
    : >"$WORK/sink.jsonl"
    cpu0=$(cpu_ticks "$WORKER") t0=$EPOCHREALTIME
    loadgen publish --exchange "$EXCHANGE" --no-directory --events "$EVENTS" --manifest "$WORK/m-peer$r.jsonl" \
      2>"$WORK/publish.log"
    SETTLED=peer_messages_settled_total wait_settled $((dir + EVENTS))
    cpu1=$(cpu_ticks "$WORKER")
    wall=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')
    rss=$(hwm_kib "$WORKER")
    stop_worker
    loadgen cleanup --queues "$queue,$queue.dead" >/dev/null 2>&1 || true
    cp "$WORK/sink.jsonl" "$WORK/sink-peer$r.jsonl"
    loadgen check --manifest "$WORK/m-peer$r.jsonl" --sink "$WORK/sink-peer$r.jsonl" >"$WORK/check-peer$r.txt"
    cat "$WORK/check-peer$r.txt" >&2
    row "$WORK/check-peer$r.txt" "$WORK/sink-peer$r.jsonl" $((cpu1 - cpu0)) "$rss" "$wall" >>"$WORK/rows-peer"
  done
  for col in 1 2 5; do RESULT[peer.$col]=$(awk -v c=$col '{print $c}' "$WORK/rows-peer" | median); done
  PEER_RATE=${RESULT[peer.1]}
fi

# Where the router's CPU goes: one more SQLite run (not in the medians) under
# perf with stacks, each sample charged to a stage.
STAGES="stages: n/a (PROFILE=0, or perf missing)"
if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
  log "profile: one more SQLite run under perf"
  STACKS=$WORK/stacks.data e2e sqlite profile profile
  cpu=$(awk '{print $5}' "$WORK/rows-profile")
  perf script -i "$WORK/stacks.data" 2>/dev/null | python3 scripts/stages.py "$cpu" >"$WORK/stages.txt" || true
  cat "$WORK/stages.txt" >&2
  STAGES=$(tail -1 "$WORK/stages.txt")
  if [ -n "$PERF_DIR" ]; then mkdir -p "$PERF_DIR" && mv "$WORK/stacks.data" "$PERF_DIR/stacks.data"; fi
  rm -f "$WORK/stacks.data"
fi

BACKLOG_DONE=0 BACKLOG_SECS=0 BACKLOG_RSS=n/a
if ((BACKLOG > 0)); then
  log "memory: a backlog of $BACKLOG events, consumed on SQLite"
  BQ=bench.router.$RUN.backlog
  QUEUES+=("$BQ" "$BQ.dead")
  start_worker "sqlite://$WORK/backlog.db" "$BQ"
  loadgen publish --exchange "$EXCHANGE" --events 0 --manifest "$WORK/dir.jsonl" 2>/dev/null
  DIR=$(sed -n 's/.*"directory":\([0-9]*\).*/\1/p' "$WORK/dir.jsonl")
  wait_settled "$DIR"
  stop_worker
  loadgen publish --exchange "$EXCHANGE" --no-directory --events "$BACKLOG" --manifest "$WORK/backlog.jsonl" 2>/dev/null
  start_worker "sqlite://$WORK/backlog.db" "$BQ"
  T0=$SECONDS
  # Bounded: on a slow run this reports how much of the backlog it got through.
  WAIT_LIMIT=${BACKLOG_LIMIT:-240} wait_settled "$BACKLOG" || true
  BACKLOG_DONE=$(counter router_messages_settled_total)
  BACKLOG_SECS=$((SECONDS - T0))
  BACKLOG_RSS=$(awk -v k="$(hwm_kib "$WORKER")" 'BEGIN {printf "%.1f", k / 1024}')
  stop_worker
fi

# Replay: routing alone over a file of the same mix, state carried; then the
# same events through the shipped rules and a copy with the digest threshold at 5.
REPLAY_EVENTS=${REPLAY_EVENTS:-100000}
REPLAY_RATE=n/a
DIFF_RATE=n/a
if [ "$REPLAY_EVENTS" -gt 0 ]; then
  log "replay: $REPLAY_EVENTS events"
  "$BIN/examples/loadgen" write --events "$REPLAY_EVENTS" --directory "$WORK/replay-dir.jsonl" --out "$WORK/replay.jsonl"
  cp -r rules "$WORK/rules-5"
  sed -i 's/threshold: 10/threshold: 5/' "$WORK/rules-5/leads.yaml"
  rate() { awk -v n="$1" -v s="$2" 'BEGIN {printf "%.0f", (s > 0) ? n / s : 0}'; }
  best() { # the median of $RUNS timings of a command, in seconds
    for _ in $(seq "$RUNS"); do
      local t0; t0=$(date +%s.%N)
      "$@" >/dev/null || [ $? -eq 1 ]
      awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}'
    done | sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'
  }
  T=$(best "$WORKER_BIN" replay --directory "$WORK/replay-dir.jsonl" "$WORK/replay.jsonl")
  REPLAY_RATE=$(rate "$REPLAY_EVENTS" "$T")
  T=$(best "$WORKER_BIN" replay --directory "$WORK/replay-dir.jsonl" --against rules --rules "$WORK/rules-5" "$WORK/replay.jsonl")
  DIFF_RATE=$(rate "$REPLAY_EVENTS" "$T")
fi

RATIO=n/a
if [ "$RENDER" = 1 ]; then
  log "render: ours against handlebars.js"
  out=$(./scripts/bench-render.sh 2>&1)
  echo "$out" >&2
  RATIO=$(sed -n 's/^render: .*ratio=\([0-9.]*\).*/\1/p' <<<"$out" | tail -1)
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}'; }
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)," \
  "load average at start $LOAD0"
echo "ceiling (amqp-ceiling, prefetch $PREFETCH, $SIZE B): consume=$CEILING msgs/s (median of $RUNS)"
echo "floor (amqp-ceiling --smtp, quorum, $EMAILS_PER_EVENT emails x $EMAIL_BYTES B, $SMTP_POOL connections):" \
  "msgs/s=$FLOOR_RATE emails/s=$FLOOR_EMAILS cpu_ms/msg=$FLOOR_CPU (median of $RUNS, $FLOOR_MESSAGES messages)"
[ "$PEER" = 1 ] && echo "peer (Node.js, $PEER_DIR): events/s=${RESULT[peer.1]} emails/s=${RESULT[peer.2]}" \
  "cpu_ms/event=${RESULT[peer.5]} (median of $RUNS, $EVENTS events)"
for kind in $STORES; do
  label=$kind
  [ "$kind" = postgres ] && label="postgres (sslmode=$PG_SSLMODE, workers=$PG_WORKERS)"
  echo "$label: events/s=${RESULT[$kind.1]} emails/s=${RESULT[$kind.2]} p50=${RESULT[$kind.3]}ms" \
    "p99=${RESULT[$kind.4]}ms cpu_ms/event=${RESULT[$kind.5]} peak_rss=${RESULT[$kind.6]}MiB" \
    "lost=${RESULT[$kind.7]} duplicates=${RESULT[$kind.8]} worker_cores=${RESULT[$kind.9]}" \
    "ceiling_ratio=$(ratio "${RESULT[$kind.1]}" "$CEILING") floor_ratio=$(ratio "${RESULT[$kind.1]}" "$FLOOR_RATE")" \
    "(median of $RUNS, $EVENTS events)"
done
echo "backlog: $BACKLOG_DONE of $BACKLOG events in ${BACKLOG_SECS}s, peak_rss=${BACKLOG_RSS}MiB"
echo "replay: events/s=$REPLAY_RATE ($REPLAY_EVENTS events, median of $RUNS, loading included)"
echo "replay-diff: events/s=$DIFF_RATE (two rule sets, threshold 10 against 5)"
echo "render: ratio=$RATIO (ours / handlebars.js per email)"
echo "$STAGES"
echo "bench: floor_ratio=$(ratio "${RESULT[sqlite.1]:-0}" "$FLOOR_RATE") peer_ratio=$(ratio "${RESULT[sqlite.1]:-0}" "$PEER_RATE")" \
  "pg_floor_ratio=$(ratio "${RESULT[postgres.1]:-0}" "$FLOOR_RATE") render_ratio=$RATIO rss_mib=$BACKLOG_RSS"
