#!/usr/bin/env bash
# The soak (issue 8): mixed events flow through real workers while the broker
# restarts, the SMTP server goes away and workers are SIGKILLed; then every
# email that arrived at the SMTP sink is counted against the expected set.
#
# Two phases, each with the full fault schedule:
#   sqlite    one worker on the embedded store
#   postgres  two workers sharing one queue and one PostgreSQL database
# Per phase: 2 broker restarts (stop_app/start_app) plus one close of all
# connections, the SMTP sink down for 10 s, 3 SIGKILLs of a worker (each
# restarted), 2% malformed messages.
#
# It passes when, in each phase: lost = 0; every duplicate coincides with a
# SIGKILL and none has more than SOAK_DUPLICATES_PER_SIGKILL (default 1; a
# duplicate is counted per Message-ID, so it carries the Message-ID of the
# original); every malformed message is in the dead-letter queue with the
# reason its defect implies, and nothing else is. The last line is exactly
# `lost=N duplicates=N dlq=N`, summed over both phases.
#
# Runs against its own RabbitMQ node (free ports, its own data and cookie, all
# under a mktemp directory), never the shared one; PostgreSQL gets a database
# of its own, dropped at the end. The soak itself is bounded to 15 minutes
# (SOAK_BOUND_SECS), counted after the release build.
#
#   ./scripts/soak.sh                      # both phases
#   SOAK_PHASES=sqlite ./scripts/soak.sh   # one phase
#   SOAK_EVENTS=20000 SOAK_RATE=60 ...     # size (per phase) and publish rate (events/s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

EVENTS=${SOAK_EVENTS:-20000}
RATE=${SOAK_RATE:-80}
MALFORMED_PERCENT=${SOAK_MALFORMED_PERCENT:-2}
PHASES=${SOAK_PHASES:-sqlite postgres}
BOUND=${SOAK_BOUND_SECS:-900}
PG_URL=${SOAK_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
# The issue's bound: at most this many duplicates per SIGKILL. Each one must
# coincide with a SIGKILL (first copy accepted within 1 s before to 3 s after).
PER_KILL=${SOAK_DUPLICATES_PER_SIGKILL:-1}

log() { printf '%s soak: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

cargo build --release --locked --bin referral-router --examples
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ROUTER=$BIN/referral-router
LOADGEN=$BIN/examples/loadgen
SINK=$BIN/examples/smtp_sink

WORK=$(mktemp -d -t soak.XXXXXX)
DEADLINE=$((SECONDS + BOUND))
STARTED=$SECONDS
PIDS=()  # every background process we started, killed on exit
RMQ_UP=0
PG_DB=""

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

remaining() { echo $((DEADLINE - SECONDS)); }

# Waits until the command succeeds, polling every second, at most $1 seconds
# (and never past the soak's deadline).
wait_for() {
    local secs=$1 what=$2
    shift 2
    local until_=$((SECONDS + secs))
    ((until_ > DEADLINE)) && until_=$DEADLINE
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < until_)) || die "timed out waiting for $what"
        sleep 1
    done
}

# --- our own RabbitMQ node -------------------------------------------------
RMQ_DIR=$WORK/rabbitmq
RMQ_PORT=$(free_port)
RMQ_DIST_PORT=$(free_port)
RMQ_NODE=soak$$@localhost
AMQP_URL=amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f
RMQ_BIN=/usr/lib/rabbitmq/bin # the unwrapped scripts: they run as us, with our HOME and cookie

rmq_env() {
    env HOME="$RMQ_DIR/home" RABBITMQ_NODENAME="$RMQ_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$RMQ_PORT" RABBITMQ_DIST_PORT="$RMQ_DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
        RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
        RABBITMQ_PID_FILE="$RMQ_DIR/pid" "$@"
}
rmqctl() { timeout 60 env HOME="$RMQ_DIR/home" "$RMQ_BIN/rabbitmqctl" -q -n "$RMQ_NODE" "$@"; }

start_rabbitmq() {
    mkdir -p "$RMQ_DIR/home"
    echo '[].' >"$RMQ_DIR/enabled_plugins"
    printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$RMQ_PORT" >"$RMQ_DIR/rabbitmq.conf"
    log "starting RabbitMQ node $RMQ_NODE on 127.0.0.1:$RMQ_PORT"
    RMQ_UP=1
    rmq_env "$RMQ_BIN/rabbitmq-server" -detached
    rmqctl wait --timeout 60 "$RMQ_DIR/pid" >/dev/null || die "RabbitMQ node did not start (see $RMQ_DIR/log)"
}

# Messages in the queue, ready or unacked.
queue_depth() { rmqctl list_queues name messages | awk -v q="$1" '$1 == q { print $2 }'; }
queue_empty() { [[ $(queue_depth "$1") == 0 ]]; }

# --- cleanup ----------------------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    sleep 1
    for pid in "${PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null
    done
    if ((RMQ_UP)); then
        rmqctl stop "$RMQ_DIR/pid" >/dev/null 2>&1
        # The node's own process, if the CLI could not stop it.
        [[ -f $RMQ_DIR/pid ]] && kill -9 "$(cat "$RMQ_DIR/pid")" 2>/dev/null
    fi
    if [[ -n $PG_DB ]]; then
        timeout 30 psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
    fi
    if ((rc == 0)) && [[ -z ${SOAK_KEEP:-} ]]; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local gone=$1 kept=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$gone" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# --- one phase --------------------------------------------------------------
# Globals of the running phase.
P_DIR="" QUEUE="" STORE_URL=""
WORKER_PIDS=() WORKER_PORTS=()
SINK_PID="" SINK_PORT=""

start_sink() {
    "$SINK" --port "$SINK_PORT" --out "$P_DIR/sink.jsonl" >>"$P_DIR/sink.log" 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_for 20 "the SMTP sink" bash -c "exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT"
}

stop_sink() {
    kill "$SINK_PID"
    wait "$SINK_PID" 2>/dev/null || true
    forget_pid "$SINK_PID"
}

start_worker() {
    local i=$1
    env ROUTER__AMQP__URL="$AMQP_URL" ROUTER__AMQP__EXCHANGE="$QUEUE.events" ROUTER__AMQP__QUEUE="$QUEUE" \
        ROUTER__AMQP__DEAD_LETTER_EXCHANGE="$QUEUE.dlx" \
        ROUTER__AMQP__ACTION_CENTER_EXCHANGE="$QUEUE.action-center" \
        ROUTER__AMQP__RECONNECT_MIN=200ms ROUTER__AMQP__RECONNECT_MAX=2s \
        ROUTER__SMTP__HOST=127.0.0.1 ROUTER__SMTP__PORT="$SINK_PORT" ROUTER__SMTP__TLS=none \
        ROUTER__SMTP__TIMEOUT=5s ROUTER__STORE__LEASE=10s ROUTER__STORE__URL="$STORE_URL" \
        ROUTER__HTTP__ADDR="127.0.0.1:${WORKER_PORTS[$i]}" \
        ROUTER__RULES__DIR="$ROOT/rules" ROUTER__TEMPLATES__DIR="$ROOT/templates" \
        "$ROUTER" run >>"$P_DIR/worker$i.log" 2>&1 &
    WORKER_PIDS[i]=$!
    PIDS+=("${WORKER_PIDS[$i]}")
}

worker_ready() { curl -fsS -o /dev/null "http://127.0.0.1:${WORKER_PORTS[$1]}/readyz"; }

sigkill_worker() {
    local i=$1 pid=${WORKER_PIDS[$1]}
    log "SIGKILL worker $i (pid $pid)"
    date +%s%6N >>"$P_DIR/kills"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    sleep 2
    start_worker "$i"
    log "worker $i restarted (pid ${WORKER_PIDS[$i]})"
}

restart_broker() {
    log "RabbitMQ: stop_app"
    rmqctl stop_app >/dev/null
    sleep 5
    rmqctl start_app >/dev/null
    log "RabbitMQ: started again"
}

# Sleeps until $1 seconds after the events started to flow.
at() {
    local when=$((FLOW_START + $1))
    ((when > SECONDS)) && sleep $((when - SECONDS))
    ((SECONDS < DEADLINE)) || die "past the soak's time bound during the fault schedule"
}

# Prints the phase's figures as key=value lines; fails the soak on a broken guarantee.
run_phase() {
    local phase=$1 workers=$2
    local started=$SECONDS
    P_DIR=$WORK/$phase
    mkdir -p "$P_DIR"
    QUEUE=soak-$phase
    SINK_PORT=$(free_port)
    if [[ $phase == postgres ]]; then
        PG_DB=soak_$$_$RANDOM
        timeout 30 psql -q "$PG_URL/postgres" -c "CREATE DATABASE $PG_DB" >/dev/null
        STORE_URL=$PG_URL/$PG_DB
    else
        STORE_URL=sqlite://$P_DIR/router.db
    fi
    log "phase $phase: $workers worker(s), $EVENTS events at $RATE/s, queue $QUEUE, store ${STORE_URL%%://*}"

    start_sink
    WORKER_PIDS=() WORKER_PORTS=()
    for ((i = 0; i < workers; i++)); do
        WORKER_PORTS[i]=$(free_port)
        start_worker "$i"
    done
    for ((i = 0; i < workers; i++)); do
        wait_for 60 "worker $i to be ready" worker_ready "$i"
    done

    # The directory first, settled, so that no event is routed before it
    # (competing workers do not order events among themselves).
    "$LOADGEN" publish --directory-only --amqp "$AMQP_URL" --exchange "$QUEUE.events" \
        --manifest "$P_DIR/directory.jsonl" 2>>"$P_DIR/loadgen.log"
    wait_for 300 "the directory to settle" queue_empty "$QUEUE"

    log "publishing $EVENTS events ($MALFORMED_PERCENT% malformed) while injecting faults"
    FLOW_START=$SECONDS
    "$LOADGEN" publish --no-directory --events "$EVENTS" --rate "$RATE" --malformed-percent "$MALFORMED_PERCENT" \
        --amqp "$AMQP_URL" --exchange "$QUEUE.events" --manifest "$P_DIR/manifest.jsonl" \
        --give-up-secs 120 2>>"$P_DIR/loadgen.log" &
    local publisher=$!
    PIDS+=("$publisher")

    # The fault schedule, spread over the publishing time.
    local span=$((EVENTS / RATE)) broker_faults=0 kills=0
    at $((span * 8 / 100))
    restart_broker
    broker_faults=$((broker_faults + 1))
    at $((span * 20 / 100))
    sigkill_worker 0
    kills=$((kills + 1))
    at $((span * 32 / 100))
    log "SMTP sink down for 10s"
    stop_sink
    sleep 10
    start_sink
    log "SMTP sink up again"
    at $((span * 45 / 100))
    sigkill_worker $((1 % workers))
    kills=$((kills + 1))
    at $((span * 57 / 100))
    restart_broker
    broker_faults=$((broker_faults + 1))
    at $((span * 70 / 100))
    log "RabbitMQ: close_all_connections"
    rmqctl close_all_connections "soak fault" >/dev/null
    broker_faults=$((broker_faults + 1))
    at $((span * 82 / 100))
    sigkill_worker 0
    kills=$((kills + 1))

    local left
    left=$(remaining)
    timeout "$left" tail --pid="$publisher" -f /dev/null || die "the publisher did not finish in time"
    wait "$publisher" || die "the publisher failed (see $P_DIR/loadgen.log)"
    forget_pid "$publisher"
    log "published in $((SECONDS - FLOW_START))s; waiting for the queue to drain"

    # Drained: the queue stays empty (nothing ready, nothing unacked) over two looks.
    local empty=0
    until ((empty >= 2)); do
        ((SECONDS < DEADLINE)) || die "the queue did not drain within the time bound"
        if queue_empty "$QUEUE"; then empty=$((empty + 1)); else empty=0; fi
        sleep 2
    done
    local drained=$((SECONDS - FLOW_START))
    log "drained ${drained}s after the events started"

    for ((i = 0; i < workers; i++)); do
        kill -TERM "${WORKER_PIDS[$i]}"
    done
    for ((i = 0; i < workers; i++)); do
        timeout 30 tail --pid="${WORKER_PIDS[$i]}" -f /dev/null || die "worker $i did not stop on SIGTERM"
        wait "${WORKER_PIDS[$i]}" || die "worker $i exited non-zero on SIGTERM"
        forget_pid "${WORKER_PIDS[$i]}"
    done
    stop_sink

    timeout 120 "$LOADGEN" check --manifest "$P_DIR/manifest.jsonl" --sink "$P_DIR/sink.jsonl" \
        --dlq "$QUEUE.dead" --amqp "$AMQP_URL" | tee "$P_DIR/check.txt" >&2
    local last lost dups dlq malformed wrong unexpected emails
    last=$(tail -n 1 "$P_DIR/check.txt")
    [[ $last =~ ^lost=([0-9]+)\ duplicates=([0-9]+)\ dlq=([0-9]+)$ ]] || die "unexpected check output: $last"
    lost=${BASH_REMATCH[1]} dups=${BASH_REMATCH[2]} dlq=${BASH_REMATCH[3]}
    malformed=$(grep -c '"malformed"' "$P_DIR/manifest.jsonl")
    wrong=$(sed -n 's/.*dlq_wrong_reason=\([0-9]*\).*/\1/p' "$P_DIR/check.txt")
    unexpected=$(sed -n 's/.*dlq_unexpected=\([0-9]*\).*/\1/p' "$P_DIR/check.txt")
    emails=$(sed -n 's/^emails expected: \([0-9]*\),.*/\1/p' "$P_DIR/check.txt")

    # Attribute each duplicate to the SIGKILL it coincides with.
    local per_kill unexplained
    per_kill=$(awk -F'[ =]' 'NR == FNR { kill[NR] = $1; n = NR; next }
        /^duplicate: / { t = $3; c = $5 - 1; hit = 0
            for (k = 1; k <= n; k++) if (t >= kill[k] - 1000000 && t <= kill[k] + 3000000) { per[k] += c; hit = 1; break }
            if (!hit) none += c }
        END { for (k = 1; k <= n; k++) printf "%d%s", per[k], (k < n ? "," : ""); printf " %d\n", none }' \
        "$P_DIR/kills" "$P_DIR/check.txt")
    unexplained=${per_kill#* } per_kill=${per_kill% *}
    local verdict="" worst
    worst=$(tr ',' '\n' <<<"$per_kill" | sort -n | tail -n 1)
    ((lost == 0)) || verdict+="lost $lost emails; "
    ((unexplained == 0)) || verdict+="$unexplained duplicates not at a SIGKILL; "
    ((worst <= PER_KILL)) || verdict+="$worst duplicates at one SIGKILL (bound $PER_KILL; per SIGKILL: $per_kill); "
    ((dlq == malformed)) || verdict+="$dlq of $malformed malformed messages dead-lettered with their reason; "
    ((wrong == 0 && unexpected == 0)) || verdict+="dead letters: $wrong with the wrong reason, $unexpected unexpected; "
    verdict=${verdict:-ok}
    log "phase $phase: events=$EVENTS emails=$emails malformed=$malformed faults: broker=$broker_faults (2 stop_app/start_app, 1 close_all_connections) smtp_down=10s sigkill=$kills;" \
        "lost=$lost duplicates=$dups (per SIGKILL: $per_kill, not at a SIGKILL: $unexplained) dlq=$dlq; drained in ${drained}s, phase took $((SECONDS - started))s: $verdict"
    echo "$phase $lost $dups $dlq $verdict" >>"$WORK/results"
    if [[ $phase == postgres ]]; then
        timeout 30 psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
        PG_DB=""
    fi
}

log "working in $WORK (removed when the soak passes)"
start_rabbitmq
: >"$WORK/results"
for phase in $PHASES; do
    case $phase in
    sqlite) run_phase sqlite 1 ;;
    postgres) run_phase postgres 2 ;;
    *) die "unknown phase $phase" ;;
    esac
done

total_lost=0 total_dups=0 total_dlq=0 failed=0
while read -r phase lost dups dlq verdict; do
    total_lost=$((total_lost + lost)) total_dups=$((total_dups + dups)) total_dlq=$((total_dlq + dlq))
    [[ $verdict == ok ]] || {
        log "phase $phase failed: $verdict"
        failed=1
    }
done <"$WORK/results"
log "soak took $((SECONDS - STARTED))s (bound ${BOUND}s)"
echo "lost=$total_lost duplicates=$total_dups dlq=$total_dlq"
exit "$failed"
