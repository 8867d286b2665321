#!/usr/bin/env bash
# `make bench-dns`: answers per second and latency of TXT answers from three authoritative
# servers on this machine, in the same run, measured with dnsperf: Knot DNS, BIND 9 and
# ours (the `bench_server` example of this crate). Each serves the zone auth.bench.test.
# with N names a<i>.auth.bench.test. holding one TXT "v<i, zero-padded to 42 digits>"
# (TTL 1, the size of an ACME DNS-01 digest), plus SOA, NS and the NS host's A record.
#
# Writes bench/results/dns-<date>.md. Per-run state (zones, configs, logs, raw dnsperf
# output) lives in bench/.work/run and is replaced by the next run.
#
# Settings (environment):
#   BENCH_SERVERS="knot bind ours"   which servers to measure
#   BENCH_SIZES="1000 100000"        numbers of names
#   BENCH_SECONDS=20                 length of each throughput run
#   BENCH_WARMUP=2                   seconds of unmeasured load before the first round
#   BENCH_ROUNDS=3                   throughput runs per server and size, servers taking
#                                    turns; the median round is reported
#   BENCH_QUERIES=100000             lines in the query file (at least N)
#   BENCH_CLIENTS=4 BENCH_THREADS=2 BENCH_OUTSTANDING=500   dnsperf -c, -T, -q
#   BENCH_LATENCY_QPS=20000 BENCH_LATENCY_SECONDS=10        fixed-rate latency run
#   BENCH_SEED=1                     seed of the query order and of the checked sample
#   BENCH_RESULTS=path               results file (default bench/results/dns-<date>.md)
#   CARGO=cargo                      cargo used to build our bench_server
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")

SERVERS=${BENCH_SERVERS:-knot bind ours}
SIZES=${BENCH_SIZES:-1000 100000}
DURATION=${BENCH_SECONDS:-20}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-3}
QUERIES=${BENCH_QUERIES:-100000}
CLIENTS=${BENCH_CLIENTS:-4}
THREADS=${BENCH_THREADS:-2}
OUTSTANDING=${BENCH_OUTSTANDING:-500}
LAT_QPS=${BENCH_LATENCY_QPS:-20000}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-10}
SEED=${BENCH_SEED:-1}
CARGO=${CARGO:-cargo}
TODAY=$(date +%F)
RESULTS=${BENCH_RESULTS:-$BENCH/results/dns-$TODAY.md}

ZONE=auth.bench.test
WORKERS=2 # server worker threads: one per core of the 2-core machine this targets
WORK=$BENCH/.work/run
CLK_TCK=$(getconf CLK_TCK)

say() { printf '[bench] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"

for s in $SERVERS; do
  case $s in knot | bind | ours) ;; *) die "unknown server '$s' in BENCH_SERVERS (knot, bind, ours)" ;; esac
done
selected() { [[ " $SERVERS " == *" $1 "* ]]; }

# --- Debian packages, only those missing -------------------------------------------------
# Debian starts knot.service / named.service after install unless policy-rc.d forbids it.
# Those system instances (port 53, /etc/knot, /etc/bind) are left alone: every server here
# runs from its own config on its own loopback port.
PACKAGES=(dnsperf knot bind9 knot-dnsutils bind9-dnsutils python3)

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }

# --- processes we start: tracked by pid, stopped on exit ---------------------------------

declare -A PID=()  # server -> pid
stop_servers() {
  local s
  for s in "${!PID[@]}"; do
    stop_pid "${PID[$s]}"
    rm -f "$WORK/$s.pid"
    unset "PID[$s]"
  done
}
# shellcheck disable=SC2317  # called by the trap
cleanup() { stop_servers; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A previous run killed without its trap may have left servers behind: stop those (only
# processes whose command line names this work directory).
stop_leftovers() {
  local f pid
  [[ -d $WORK ]] || return 0
  for f in "$WORK"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$WORK"; then
      say "stopping server $pid left over from an earlier run"
      kill -TERM "$pid" 2>/dev/null || true
      sleep 1
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

# --- data: zone file, query file, names to check -----------------------------------------

# gen_data N DIR: DIR/$ZONE.zone, DIR/queries.txt (shuffled with a fixed seed, at least
# $QUERIES lines, every name equally often), DIR/sample.txt (indices checked by kdig).
gen_data() {
  python3 - "$1" "$2" "$ZONE" "$QUERIES" "$SEED" <<'PY'
import random, sys
n, out, zone, queries, seed = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with open(f"{out}/{zone}.zone", "w") as f:
    f.write(f"$ORIGIN {zone}.\n$TTL 60\n")
    f.write(f"@\tIN\tSOA\tns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n")
    f.write(f"@\tIN\tNS\tns.{zone}.\n")
    f.write("ns\tIN\tA\t127.0.0.1\n")
    for i in range(n):
        f.write(f'a{i}\t1\tIN\tTXT\t"v{i:042d}"\n')
rng = random.Random(seed)
lines = max(queries, n)
names = [f"a{i}.{zone} TXT\n" for i in range(n)]
with open(f"{out}/queries.txt", "w") as f:
    written = 0
    while written < lines:
        rng.shuffle(names)
        take = min(n, lines - written)
        f.writelines(names[:take])
        written += take
check = random.Random(seed + 1)
sample = sorted({0, n - 1, *check.sample(range(n), min(20, n))})
with open(f"{out}/sample.txt", "w") as f:
    f.write("".join(f"{i}\n" for i in sample))
PY
}

# --- servers -----------------------------------------------------------------------------

start_knot() { # N DIR PORT
  local n=$1 dir=$2 port=$3
  mkdir -p "$dir/db"
  # Block-style YAML only: knotd rejects flow maps.
  cat >"$dir/knot.conf" <<EOF
server:
    rundir: "$dir"
    listen: 127.0.0.1@$port
    udp-workers: $WORKERS
    tcp-workers: 1
    background-workers: 1

log:
  - target: "$dir/knotd.log"
    any: info

database:
    storage: "$dir/db"

control:
    listen: "$dir/knot.sock"

template:
  - id: default
    storage: "$WORK/data-$n"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none

zone:
  - domain: $ZONE.
EOF
  knotc -c "$dir/knot.conf" conf-check >/dev/null || die "knot config rejected: $dir/knot.conf"
  knotd -c "$dir/knot.conf" >"$dir/stdout.log" 2>&1 &
  PID[knot]=$!
}

start_bind() { # N DIR PORT
  local n=$1 dir=$2 port=$3
  # minimal-responses yes: no NS/glue in positive answers, so BIND's answers have the
  # same size as Knot's (Knot sends minimal answers by default).
  cat >"$dir/named.conf" <<EOF
options {
    directory "$dir";
    pid-file "$dir/named.pid";
    session-keyfile "$dir/session.key";
    listen-on port $port { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    minimal-responses yes;
    dnssec-validation no;
    notify no;
};
controls { };
zone "$ZONE" {
    type primary;
    file "$WORK/data-$n/$ZONE.zone";
};
EOF
  named-checkconf "$dir/named.conf" || die "named config rejected: $dir/named.conf"
  # -g: foreground, log to stderr; -n: worker threads.
  named -g -4 -n "$WORKERS" -c "$dir/named.conf" >"$dir/named.log" 2>&1 &
  PID[bind]=$!
}

OURS_BIN=
OURS_STATUS=   # "" when not selected, "built", or why it is missing
OURS_REV=
build_ours() {
  local log=$WORK/cargo-build.log
  OURS_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
  if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]]; then OURS_REV+=" + uncommitted changes"; fi
  say "ours: $CARGO build --release --example bench_server (log: ${log#"$ROOT"/})"
  if (cd "$ROOT" && $CARGO build --release --example bench_server) >"$log" 2>&1; then
    OURS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_server
    [[ $OURS_BIN == /* ]] || OURS_BIN=$ROOT/$OURS_BIN
    if [[ -x $OURS_BIN ]]; then
      OURS_STATUS=built
      return 0
    fi
    OURS_STATUS="not built (cargo succeeded but $OURS_BIN is missing)"
  else
    OURS_STATUS="not built (cargo build --release --example bench_server failed)"
  fi
  OURS_BIN=
  say "ours: $OURS_STATUS; last lines of the build log:"
  tail -n 5 "$log" | sed 's/^/    /' >&2
}

start_ours() { # N DIR PORT
  local n=$1 dir=$2 port=$3 extra=()
  # Same worker count as Knot and BIND when bench_server lets us choose it.
  if "$OURS_BIN" --help 2>/dev/null | grep -q -- '--threads'; then extra=(--threads "$WORKERS"); fi
  "$OURS_BIN" --names "$n" --listen "127.0.0.1:$port" --zone "$ZONE" "${extra[@]}" >"$dir/bench_server.log" 2>&1 &
  PID[ours]=$!
}

server_log() {
  case $1 in
    knot) echo "$2/knotd.log" ;;
    bind) echo "$2/named.log" ;;
    ours) echo "$2/bench_server.log" ;;
  esac
}

# wait_ready SERVER DIR PORT: until it answers SOA for the zone (60 s at most).
wait_ready() { wait_soa "$1" "${PID[$1]}" "$3" "$ZONE." "$(server_log "$1" "$2")"; }

# verify SERVER PORT N: the sampled names answer NOERROR, AA, exactly one TXT with the
# expected value and TTL 1; a name past the end is NXDOMAIN. Prints what was wrong.
verify() {
  local s=$1 port=$2 n=$3 i out want bad=0
  while read -r i; do
    want="v$(printf '%042d' "$i")"
    out=$(kdig @127.0.0.1 -p "$port" +time=2 +retry=1 +norec "a$i.$ZONE." TXT 2>&1) || true
    if ! awk -v name="a$i.$ZONE." -v want="\"$want\"" '
        /status: / { st = $0 }
        /^;; Flags:/ { aa = ($0 ~ / aa[ ;]/); an = $0; sub(/.*ANSWER: /, "", an); sub(/;.*/, "", an) }
        $1 == name && $4 == "TXT" { rr++; ok = ($2 == 1 && $5 == want) }
        END { exit !(st ~ /status: NOERROR;/ && aa && an == 1 && rr == 1 && ok) }' <<<"$out"; then
      bad=$((bad + 1))
      if ((bad <= 2)); then
        say "$s: wrong answer for a$i.$ZONE. TXT (want NOERROR, aa, one TXT \"$want\" TTL 1):"
        grep -vE '^;; (Time|From|Received)|^$' <<<"$out" | sed 's/^/    /' >&2
      fi
    fi
  done <"$WORK/data-$n/sample.txt"
  ((bad == 0)) || say "$s: $bad of $(wc -l <"$WORK/data-$n/sample.txt") sampled names answered wrongly"
  out=$(kdig @127.0.0.1 -p "$port" +time=2 +retry=1 +norec "a$n.$ZONE." TXT 2>&1) || true
  if ! grep -q 'status: NXDOMAIN' <<<"$out"; then
    say "$s: a$n.$ZONE. (does not exist) did not answer NXDOMAIN"
    bad=$((bad + 1))
  fi
  ((bad == 0))
}

rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
# CPU time of the whole machine in ticks: "<user+nice+system+steal> <irq+softirq>". Softirq time (the
# loopback network path of both dnsperf and the server) is not charged to any process.
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $9, $7 + $8 }' /proc/stat; }
proc_cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
now_ns() { date +%s%N; }
# UDP datagrams the kernel dropped because a receive buffer was full (whole network namespace).
udp_rcvbuf_errors() {
  awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else { print $c + 0; exit } }' /proc/net/snmp
}

# --- measurement -------------------------------------------------------------------------

declare -A R=() # "<field>:<server>:<N>" -> value

# run_dnsperf OUT PORT N ARGS...: dnsperf at the configured concurrency; writes OUT (stdout),
# OUT.err, and OUT.cpu ("<dnsperf user+sys s> <wall s> <machine busy s, processes> <server cpu s>
# <UDP receive-buffer drops> <machine irq+softirq s> <dnsperf run time s> <answers>").
# The wall time runs past dnsperf's own run time when queries were lost: dnsperf then waits out
# their timeout (5 s) with nothing in flight. CPU is therefore averaged over dnsperf's run time,
# and a server's rate per core is its answers ÷ its CPU seconds, which that idle wait leaves alone.
run_dnsperf() {
  local out=$1 port=$2 n=$3 s=$4
  shift 4
  local t0 b0 i0 p0 d0 t1 b1 i1 p1 d1 rc=0 TIMEFORMAT='%U %S'
  read -r b0 i0 < <(cpu_busy)
  t0=$(now_ns) p0=$(proc_cpu "${PID[$s]}") d0=$(udp_rcvbuf_errors)
  { time dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/data-$n/queries.txt" \
      -c "$CLIENTS" -T "$THREADS" "$@" >"$out" 2>"$out.err"; } 2>"$out.time" || rc=$?
  t1=$(now_ns) p1=$(proc_cpu "${PID[$s]}") d1=$(udp_rcvbuf_errors)
  read -r b1 i1 < <(cpu_busy)
  awk -v t0="$t0" -v t1="$t1" -v b="$((b1 - b0))" -v p="$((p1 - p0))" -v hz="$CLK_TCK" -v d="$((d1 - d0))" \
    -v i="$((i1 - i0))" -v run="$(stat_field "$out" 'Run time' 4)" -v answered="$(stat_field "$out" 'Queries completed:' 3)" \
    '{ printf "%.3f %.3f %.3f %.3f %d %.3f %.3f %d\n", $1 + $2, (t1 - t0) / 1e9, b / hz, p / hz, d, i / hz, (run > 0 ? run : (t1 - t0) / 1e9), answered }' \
    "$out.time" >"$out.cpu"
  if ((rc != 0)); then
    say "dnsperf failed ($rc):"
    tail -n 5 "$out.err" >&2
    return 1
  fi
}

# field FILE REGEX AWK-FIELD: one number from dnsperf's statistics block.
stat_field() { awk -v re="$2" -v f="$3" '$0 ~ re { v = $f; gsub(/[(),%]/, "", v); print v; exit }' "$1"; }

# throughput SERVER PORT N DIR ROUND: one saturating dnsperf run (after a warm-up in round 1).
throughput() {
  local s=$1 port=$2 n=$3 dir=$4 r=$5 out
  if ((r == 1)); then
    say "$s, N=$n: warm-up ${WARMUP}s"
    run_dnsperf "$dir/warmup.txt" "$port" "$n" "$s" -l "$WARMUP" -q "$OUTSTANDING" || return 1
  fi
  out=$dir/throughput-$r.txt
  say "$s, N=$n: throughput round $r/$ROUNDS, ${DURATION}s (dnsperf -c $CLIENTS -T $THREADS -q $OUTSTANDING)"
  run_dnsperf "$out" "$port" "$n" "$s" -l "$DURATION" -q "$OUTSTANDING" || return 1
  say "$s, N=$n: $(stat_field "$out" 'Queries per second:' 4 | xargs printf '%.0f') qps"
}

# summarize SERVER N DIR: results of the round with the median qps (its own CPU figures).
summarize() {
  local s=$1 n=$2 dir=$3 r out median_round cpu_d busy cpu_s drops irq run
  median_round=$(for ((r = 1; r <= ROUNDS; r++)); do
    echo "$(stat_field "$dir/throughput-$r.txt" 'Queries per second:' 4) $r"
  done | sort -g | awk '{ a[NR] = $2 } END { print a[int((NR + 1) / 2)] }')
  # Each round as "qps (other processes' CPU)", to show which rounds were disturbed.
  R[rounds:$s:$n]=$(for ((r = 1; r <= ROUNDS; r++)); do
    echo "$(stat_field "$dir/throughput-$r.txt" 'Queries per second:' 4) $(cat "$dir/throughput-$r.txt.cpu")"
  done | awk '{ o = ($4 - $5 - $2) / $8; if (o < 0) o = 0; printf "%s%.0f (other %.2f)", (NR > 1 ? ", " : ""), $1, o }')
  out=$dir/throughput-$median_round.txt
  R[qps:$s:$n]=$(stat_field "$out" 'Queries per second:' 4)
  R[sent:$s:$n]=$(stat_field "$out" 'Queries sent:' 3)
  R[lost:$s:$n]=$(stat_field "$out" 'Queries lost:' 4)
  R[avg:$s:$n]=$(stat_field "$out" 'Average Latency' 4)
  R[stddev:$s:$n]=$(stat_field "$out" 'Latency StdDev' 4)
  R[rcodes:$s:$n]=$(awk '/Response codes:/ { sub(/.*Response codes: */, ""); print; exit }' "$out")
  R[size:$s:$n]=$(awk '/Average packet size:/ { print $7; exit }' "$out")
  read -r cpu_d _ busy cpu_s drops irq run _ <"$out.cpu"
  R[drops:$s:$n]=$drops
  R[irqcpu:$s:$n]=$(awk -v a="$irq" -v w="$run" 'BEGIN { printf "%.2f", a / w }')
  # qps per server core of each round, and their median: a round's rate depends on how much
  # CPU dnsperf left the server, its rate per core much less.
  R[percore_rounds:$s:$n]=$(for ((r = 1; r <= ROUNDS; r++)); do cat "$dir/throughput-$r.txt.cpu"; done |
    awk '{ printf "%s%s", (NR > 1 ? ", " : ""), ($4 > 0 ? sprintf("%.0f", $8 / $4) : "-") }')
  R[percore:$s:$n]=$(tr ',' '\n' <<<"${R[percore_rounds:$s:$n]}" | grep -E '[0-9]' | sort -g |
    awk '{ a[NR] = $1 } END { if (NR) printf "%.0f", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2); else print "-" }')
  R[srvcpu:$s:$n]=$(awk -v a="$cpu_s" -v w="$run" 'BEGIN { printf "%.2f", a / w }')
  R[perfcpu:$s:$n]=$(awk -v a="$cpu_d" -v w="$run" 'BEGIN { printf "%.2f", a / w }')
  R[othercpu:$s:$n]=$(awk -v b="$busy" -v a="$cpu_s" -v d="$cpu_d" -v w="$run" \
    'BEGIN { o = (b - a - d) / w; if (o < 0) o = 0; printf "%.2f", o }')
}

# latency SERVER PORT N DIR: fixed-rate run, percentiles of every answer's latency.
latency() {
  local s=$1 port=$2 n=$3 dir=$4 out=$4/latency.txt cpu_d busy cpu_s drops irq run answered cnt p50 p90 p99 p999 lmax
  say "$s, N=$n: latency run, ${LAT_SECONDS}s at $LAT_QPS qps (dnsperf -Q $LAT_QPS -v)"
  run_dnsperf "$out" "$port" "$n" "$s" -l "$LAT_SECONDS" -Q "$LAT_QPS" -q "$OUTSTANDING" -v || return 1
  # Nearest-rank percentiles over every completed query's latency (dnsperf -v prints one
  # "> RCODE name type seconds" line per answer, to the microsecond).
  read -r cnt p50 p90 p99 p999 lmax < <(awk '/^> / && $NF ~ /^[0-9.]+$/ { print $NF }' "$out" | sort -g | awk '
    { v[NR] = $1 }
    function pct(p,  k) { k = int(p * NR + 0.999999); if (k < 1) k = 1; return v[k] * 1e6 }
    END { if (NR == 0) { print 0, "-", "-", "-", "-", "-"; exit }
          printf "%d %.0f %.0f %.0f %.0f %.0f\n", NR, pct(0.50), pct(0.90), pct(0.99), pct(0.999), v[NR] * 1e6 }')
  R[latn:$s:$n]=$cnt
  R[latqps:$s:$n]=$(stat_field "$out" 'Queries per second:' 4)
  R[latlost:$s:$n]=$(stat_field "$out" 'Queries lost:' 4)
  R[latrcodes:$s:$n]=$(awk '/Response codes:/ { sub(/.*Response codes: */, ""); print; exit }' "$out")
  read -r cpu_d _ busy cpu_s drops irq run answered <"$out.cpu"
  R[latother:$s:$n]=$(awk -v b="$busy" -v a="$cpu_s" -v d="$cpu_d" -v w="$run" \
    'BEGIN { o = (b - a - d) / w; if (o < 0) o = 0; printf "%.2f", o }')
  # The server's CPU at the same fixed rate for every server: answers per core-second
  # without dnsperf deciding how busy the server gets.
  R[latcpu:$s:$n]=$(awk -v a="$cpu_s" -v w="$run" 'BEGIN { printf "%.3f", a / w }')
  R[latpercore:$s:$n]=$(awk -v q="$answered" -v a="$cpu_s" 'BEGIN { if (a > 0) printf "%.0f", q / a; else print "-" }')
  R[p50:$s:$n]=$p50 R[p90:$s:$n]=$p90 R[p99:$s:$n]=$p99 R[p999:$s:$n]=$p999 R[lmax:$s:$n]=$lmax
  # Drop the per-query lines (megabytes) once counted.
  awk '!/^> /' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
  say "$s, N=$n: p50 ${p50}µs p99 ${p99}µs at $LAT_QPS qps"
}

# --- main --------------------------------------------------------------------------------

ensure_debian_packages "${PACKAGES[@]}"
stop_leftovers
rm -rf "$WORK"
mkdir -p "$WORK" "$(dirname "$RESULTS")"
say "work directory: ${WORK#"$ROOT"/}"

if selected ours; then build_ours; fi

# Only informative: system instances (e.g. started by apt) keep their own ports and files.
for prog in knotd named; do
  if pids=$(pgrep -x "$prog" 2>/dev/null); then
    say "note: $prog is already running (pid $(echo "$pids" | tr '\n' ' ')), e.g. as a system service; left alone, not used"
  fi
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$(date -u '+%Y-%m-%d %H:%M UTC')
declare -A STATUS=() # "<server>:<N>" -> measured | why not
FAILED=0

for n in $SIZES; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZES must be positive integers, got '$n'"
  say "N=$n: generating zone and query file"
  mkdir -p "$WORK/data-$n"
  gen_data "$n" "$WORK/data-$n"
  # All selected servers run side by side for this size; only one is under load at a time.
  declare -A PORT=()
  for s in $SERVERS; do
    if [[ $s == ours && $OURS_STATUS != built ]]; then
      STATUS[$s:$n]=$OURS_STATUS
      continue
    fi
    dir=$WORK/$s-$n
    mkdir -p "$dir"
    PORT[$s]=$(free_port)
    say "$s, N=$n: starting on 127.0.0.1:${PORT[$s]}"
    case $s in
      knot) start_knot "$n" "$dir" "${PORT[$s]}" ;;
      bind) start_bind "$n" "$dir" "${PORT[$s]}" ;;
      ours) start_ours "$n" "$dir" "${PORT[$s]}" ;;
    esac
    echo "${PID[$s]}" >"$WORK/$s.pid"
    t0=$(now_ns)
    if ! wait_ready "$s" "$dir" "${PORT[$s]}"; then
      STATUS[$s:$n]="failed to start"
      FAILED=1
      continue
    fi
    R[startup:$s:$n]=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    R[rss:$s:$n]=$(rss_mib "${PID[$s]}")
    say "$s, N=$n: answering after ${R[startup:$s:$n]}s, RSS ${R[rss:$s:$n]} MiB; checking answers"
    if ! verify "$s" "${PORT[$s]}" "$n"; then
      STATUS[$s:$n]="wrong answers (see log); not measured"
      FAILED=1
      continue
    fi
    STATUS[$s:$n]=ready
  done
  # Rounds interleave the servers, so a change in background load hits each of them alike.
  for ((round = 1; round <= ROUNDS; round++)); do
    for s in $SERVERS; do
      [[ ${STATUS[$s:$n]} == ready ]] || continue
      if ! throughput "$s" "${PORT[$s]}" "$n" "$WORK/$s-$n" "$round"; then
        STATUS[$s:$n]="dnsperf failed"
        FAILED=1
      fi
    done
  done
  for s in $SERVERS; do
    [[ ${STATUS[$s:$n]} == ready ]] || continue
    summarize "$s" "$n" "$WORK/$s-$n"
    if latency "$s" "${PORT[$s]}" "$n" "$WORK/$s-$n"; then
      STATUS[$s:$n]=measured
      R[rss_after:$s:$n]=$(rss_mib "${PID[$s]}")
    else
      STATUS[$s:$n]="dnsperf failed"
      FAILED=1
    fi
  done
  stop_servers
  unset PORT
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ------------------------------------------------------------------------------

name_of() {
  case $1 in
    knot) echo "Knot DNS" ;;
    bind) echo "BIND 9" ;;
    ours) echo "ours (bench_server)" ;;
  esac
}
fmt_int() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.0f", v }'; }
us() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.0f", v * 1e6 }'; }
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'
}

mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
os_name=$(awk -F= '/^PRETTY_NAME=/ { gsub(/"/, "", $2); print $2 }' /etc/os-release)

{
  echo "# DNS answer rate: Knot DNS, BIND 9 and ours — $TODAY"
  echo
  echo "Written by \`bench/dns.sh\` (\`make bench-dns\`), run started $STARTED_AT."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $cpu_model, \`nproc\` = $(nproc)"
  echo "- Memory: $mem_total"
  echo "- Kernel: $(uname -r) ($os_name)"
  echo "- Load average (1/5/15 min) at start: $LOAD_START; at end: $LOAD_END"
  echo
  echo "## Software"
  echo
  echo "- Knot DNS: $(knotd -V 2>&1 | awk '{ print $NF; exit }') (Debian package knot $(pkg_version knot))"
  echo "- BIND 9: $(named -v 2>&1 | awk '{ print $2; exit }') (Debian package bind9 $(pkg_version bind9))"
  echo "- dnsperf: $(dnsperf -h 2>&1 | awk '/^Version/ { print $2; exit }') (Debian package dnsperf $(pkg_version dnsperf))"
  if selected ours; then
    echo "- ours: \`cargo build --release --example bench_server\` at $OURS_REV — $OURS_STATUS"
  else
    echo "- ours: not selected (BENCH_SERVERS=\"$SERVERS\")"
  fi
  echo
  echo "## Settings"
  echo
  echo "- Zone \`$ZONE.\`: N names \`a<i>.$ZONE.\`, each one TXT \`\"v<i zero-padded to 42 digits>\"\` (43 characters) with TTL 1;"
  echo "  SOA (negative TTL 60) and NS \`ns.$ZONE.\` at the apex, \`ns.$ZONE. A 127.0.0.1\`. UDP over 127.0.0.1, no EDNS."
  echo "- Query file: max($QUERIES, N) TXT queries for those names, every name equally often, in an order"
  echo "  shuffled with a fixed seed ($SEED); dnsperf loops over it for the whole run."
  echo "- Before measuring, each server must answer, for the first, the last and 20 random names, NOERROR"
  echo "  with AA and exactly the expected TXT with TTL 1, and NXDOMAIN for a name past the end (kdig)."
  echo "- Servers, $WORKERS worker threads each: Knot \`udp-workers: $WORKERS\`, \`tcp-workers: 1\`, \`background-workers: 1\`;"
  echo "  BIND \`named -n $WORKERS\` with \`recursion no; minimal-responses yes;\` (same answer size as Knot's);"
  echo "  ours \`bench_server --names N --listen 127.0.0.1:PORT --zone $ZONE\` (plus \`--threads $WORKERS\` if it has that flag). Configs and logs of the run: \`bench/.work/run/\`."
  echo "- Throughput: ${WARMUP}s warm-up, then $ROUNDS rounds in which the servers take turns, each run"
  echo "  \`dnsperf -c $CLIENTS -T $THREADS -q $OUTSTANDING -l $DURATION\`; the table shows each server's median round."
  echo "  dnsperf runs on the same cores as the server, so it takes CPU the server cannot use;"
  echo "  the CPU column shows the split (cores busy on average over dnsperf's run time: the server process,"
  echo "  dnsperf, softirq time — mostly the loopback network path of both, charged to no process — and every"
  echo "  other process on the machine). \"qps per server core\" is answers ÷ the server's own CPU seconds, a"
  echo "  useful second view when dnsperf is the bottleneck; it leaves out the server's share of the softirq time."
  echo "  When queries are lost, dnsperf waits out their 5 s timeout after its run time; nothing is in flight"
  echo "  then, and neither the CPU column nor the rate per core counts that wait as time. dnsperf itself keeps"
  echo "  spending CPU during that wait, so its share in the CPU column is overstated for a server that lost"
  echo "  queries. The table gives its median over the rounds (each round's is listed below the table), not"
  echo "  the median round's."
  echo "  \"Unanswered\" is dnsperf's \"lost\"; \"UDP receive-buffer drops\" is the kernel's"
  echo "  RcvbufErrors counter over the run (queries or answers dropped because a socket buffer was full)."
  echo "- \"other\" above about 0.2 cores means other processes ran on the machine during the measurement"
  echo "  (for example a build): the numbers of that run are disturbed, more so the latency percentiles."
  echo "- Latency: dnsperf 2.10 prints no percentiles, so a separate ${LAT_SECONDS}s run at a fixed $LAT_QPS queries/s"
  echo "  (\`-Q $LAT_QPS -v\`, well below every server's capacity) logs each answer's latency (µs resolution);"
  echo "  p50/p90/p99/p99.9 are nearest-rank percentiles over all of them, as seen by dnsperf. Latency at"
  echo "  saturation mostly measures queueing in dnsperf and the socket buffers; only its average is shown"
  echo "  (\"avg @ max\", from the throughput round). The server's own CPU during that run gives a second"
  echo "  rate per core, at the same load for every server: answers ÷ the server's CPU seconds."
  echo "- Why these dnsperf settings: with one thread (\`-T 1\`) dnsperf itself tops out well below Knot's rate"
  echo "  (about 95 k qps here); \`-T 2 -c 4 -q 500\` gave the highest rate against Knot in a sweep of"
  echo "  -T 1–4, -c 1–8, -q 100–1000 (larger -q adds kernel drops, not answers). Even so dnsperf, not the"
  echo "  server, uses most of the CPU: compare \"qps per server core\" as well as qps."
  for n in $SIZES; do
    echo
    echo "## N = $n names"
    echo
    echo "| server | qps | avg @ max (µs) | p50 (µs) | p90 (µs) | p99 (µs) | p99.9 (µs) | CPU cores: server / dnsperf / softirq / other | qps per server core (median of rounds) | RSS (MiB) | answer (B) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: |"
    for s in $SERVERS; do
      st=${STATUS[$s:$n]:-not run}
      if [[ $st != measured ]]; then
        echo "| $(name_of "$s") | $st | | | | | | | | | |"
        continue
      fi
      echo "| $(name_of "$s") | $(fmt_int "${R[qps:$s:$n]}") | $(us "${R[avg:$s:$n]}") | ${R[p50:$s:$n]} | ${R[p90:$s:$n]} | ${R[p99:$s:$n]} | ${R[p999:$s:$n]} | ${R[srvcpu:$s:$n]} / ${R[perfcpu:$s:$n]} / ${R[irqcpu:$s:$n]} / ${R[othercpu:$s:$n]} | ${R[percore:$s:$n]} | ${R[rss_after:$s:$n]} | ${R[size:$s:$n]} |"
    done
    echo
    for s in $SERVERS; do
      [[ ${STATUS[$s:$n]:-} == measured ]] || continue
      if [[ ! ${R[rcodes:$s:$n]} =~ ^NOERROR\ [0-9]+\ \(100\.00%\)$ ]]; then
        echo "- **$(name_of "$s"): not every answer was NOERROR** (${R[rcodes:$s:$n]})."
      fi
      echo "- $(name_of "$s"): qps per round ${R[rounds:$s:$n]}; qps per server core per round ${R[percore_rounds:$s:$n]};" \
        "median round: ${R[sent:$s:$n]} queries sent, ${R[lost:$s:$n]}% unanswered," \
        "${R[drops:$s:$n]} UDP receive-buffer drops; response codes ${R[rcodes:$s:$n]}; answering ${R[startup:$s:$n]}s after start." \
        "Latency run: ${R[latn:$s:$n]} answers at $(fmt_int "${R[latqps:$s:$n]}") qps, ${R[latlost:$s:$n]}% unanswered, max $(fmt_int "${R[lmax:$s:$n]}") µs," \
        "server ${R[latcpu:$s:$n]} cores busy (${R[latpercore:$s:$n]} answers per server core), other CPU ${R[latother:$s:$n]} cores."
    done
    other_max=$(for s in $SERVERS; do
      if [[ ${STATUS[$s:$n]:-} == measured ]]; then echo "${R[othercpu:$s:$n]} ${R[latother:$s:$n]}"; fi
    done | tr ' ' '\n' | sort -g | tail -n 1)
    if [[ -n $other_max ]] && awk -v o="$other_max" 'BEGIN { exit !(o > 0.2) }'; then
      echo
      echo "**Disturbed:** other work on the machine used up to $other_max cores during these measurements."
    fi
    echo
    q_ours=; q_knot=; q_bind=
    [[ ${STATUS[ours:$n]:-} == measured ]] && q_ours=${R[qps:ours:$n]}
    [[ ${STATUS[knot:$n]:-} == measured ]] && q_knot=${R[qps:knot:$n]}
    [[ ${STATUS[bind:$n]:-} == measured ]] && q_bind=${R[qps:bind:$n]}
    echo "Ratios: ours/Knot = $(ratio "$q_ours" "$q_knot"), ours/BIND = $(ratio "$q_ours" "$q_bind"), BIND/Knot = $(ratio "$q_bind" "$q_knot")."
    c_ours=; c_knot=; l_ours=; l_knot=
    if [[ ${STATUS[ours:$n]:-} == measured && ${STATUS[knot:$n]:-} == measured ]]; then
      c_ours=${R[percore:ours:$n]} c_knot=${R[percore:knot:$n]} l_ours=${R[latpercore:ours:$n]} l_knot=${R[latpercore:knot:$n]}
    fi
    echo
    echo "Per server core, ours/Knot: $(ratio "$c_ours" "$c_knot") at saturation (median of rounds), $(ratio "$l_ours" "$l_knot") at $LAT_QPS qps."
    echo
    if [[ -n $q_ours && -n $q_knot && -n $q_bind ]]; then
      verdict=$(awk -v o="$q_ours" -v k="$q_knot" -v b="$q_bind" \
        'BEGIN { if (o >= b && o >= 0.8 * k) print "**met**"; else print "**not met**" }')
    else
      verdict="not evaluated (needs ours, Knot and BIND measured in this run)"
    fi
    echo "Target (ours ≥ 1.0× BIND and ≥ 0.8× Knot): $verdict."
  done
} >"$RESULTS"

say "results: ${RESULTS#"$ROOT"/}"
for n in $SIZES; do
  for s in $SERVERS; do
    if [[ ${STATUS[$s:$n]:-} == measured ]]; then
      say "  N=$n $s: $(fmt_int "${R[qps:$s:$n]}") qps, avg $(us "${R[avg:$s:$n]}") µs at max, p50/p99 ${R[p50:$s:$n]}/${R[p99:$s:$n]} µs at $LAT_QPS qps"
    else
      say "  N=$n $s: ${STATUS[$s:$n]:-not run}"
    fi
  done
done
exit "$FAILED"
