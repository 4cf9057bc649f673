#!/usr/bin/env bash
# scripts/services.sh - install, start and stop the real servers the chatd
# test suite talks to: MariaDB, Redis, RabbitMQ and Elasticsearch.
#
# Target: a fresh Debian 12 machine, run as root, with NO systemd (CI and dev
# machines are plain VMs/containers).  Every server listens on 127.0.0.1 only
# and keeps its data, pid file and logs under $CHATD_SERVICES_DIR, so the
# script never touches the distro's own /var/lib/mysql, /etc/rabbitmq, ...
#
# Usage: scripts/services.sh COMMAND
#   install            apt packages + Elasticsearch download (idempotent)
#   start              start every server that is not already answering
#   stop               stop all four (tolerant if not running)
#   restart            stop + start
#   status             one line per server, up/down (exit 3 if any is down)
#   env                print `export CHATD_*_URL=...` lines for the app/tests
#   up                 install + start (what `make services` calls)
#   start-one NAME     NAME = mariadb | redis | rabbitmq | elasticsearch
#   stop-one NAME      (for fault-injection tests that bounce one server)
#   restart-one NAME
#   cluster up|down|status|env   a local cluster on other ports (3 RabbitMQ,
#                      Redis primary+2 replicas+3 Sentinels, 3 ES, MariaDB
#                      primary+replica) next to the single servers
#   cluster kill rabbitmq N|redis-primary|elasticsearch N|mariadb-primary
#                      kill -9 one node (the cluster suite's node loss)
#   cluster test-env   the CHATD_TEST_*_URL lines of the cluster suite
#   cluster leader PREFIX   the RabbitMQ node leading most of PREFIX's queues
#   cluster pause-replication|resume-replication   stop (it lags) or start again
#                      the MariaDB replica's replication
#   cluster promote    promote the MariaDB replica (the runbook's SQL)
#   cluster reset-mariadb   rebuild the MariaDB pair, empty, after a promotion
#
# Environment it reads (all optional):
#   CHATD_SERVICES_DIR   data/log/cache root        (default /var/lib/chatd-test)
#   CHATD_ES_VERSION     override the pinned ES version below
#   CHATD_ES_HEAP        ES heap, e.g. 512m, 1g     (default 512m)
#   CHATD_SERVICES_WAIT  max seconds to wait for one server to come up (default 120)
set -euo pipefail

# ---------------------------------------------------------------------------
# Pinned versions / locations
# ---------------------------------------------------------------------------
# Newest 8.x of the integ-test-zip that Maven Central serves (checked
# 2026-11-27 from the artifact's maven-metadata: 8.19.21; no 9.x is published
# under this groupId).  8.x runs on Java 17, which Debian ships.
# NOTE: the integ-test-zip is Elastic's *minimal* distribution. Its only
# modules are transport-netty4, x-pack-core, x-pack-security and apm, so it
# has no `GET /` or `HEAD /` (rest-root: client ping()/info() fail with 405),
# no _delete_by_query/_update_by_query/_reindex (reindex), no analysis-common
# (asciifolding, edge_ngram, language analyzers...), no painless scripts and
# no search_as_you_type (mapper-extras).  Index/get/search/bulk/aggregations
# (terms, date_histogram...), standard analyzer + lowercase and
# _cluster/health all work.  Elastic publishes no fuller distribution there.
ES_VERSION="${CHATD_ES_VERSION:-8.19.21}"
ES_GAV="org.elasticsearch.distribution.integ-test-zip:elasticsearch:${ES_VERSION}:zip"
# Pin the plugin version so `mvn` never resolves a different plugin over time.
MVN_DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
JAVA17_HOME="/usr/lib/jvm/java-17-openjdk-amd64"
JAVA25_HOME="/usr/lib/jvm/temurin-25-jdk-amd64"
# ES 9.x needs Java 21+; 8.x is happy with 17.
if [[ "${ES_VERSION%%.*}" -ge 9 ]]; then ES_JAVA_HOME_DEFAULT="$JAVA25_HOME"; else ES_JAVA_HOME_DEFAULT="$JAVA17_HOME"; fi
ES_JAVA_HOME="${ES_JAVA_HOME:-$ES_JAVA_HOME_DEFAULT}"
ES_HEAP="${CHATD_ES_HEAP:-512m}"

# Besides the servers: jq for the reference curl script, nginx for the gateway config tests.
APT_PACKAGES=(mariadb-server mariadb-client redis-server redis-tools rabbitmq-server unzip curl jq nginx iproute2 procps util-linux)

SERVICES_DIR="${CHATD_SERVICES_DIR:-/var/lib/chatd-test}"
WAIT_SECS="${CHATD_SERVICES_WAIT:-120}"
BIND=127.0.0.1

MARIADB_PORT=3306
MARIADB_DIR="$SERVICES_DIR/mariadb"
MARIADB_DATA="$MARIADB_DIR/data"
MARIADB_SOCK="$MARIADB_DIR/mariadb.sock"
MARIADB_PID="$MARIADB_DIR/mariadb.pid"
MARIADB_LOG="$MARIADB_DIR/mariadb.log"
MARIADB_CNF="$MARIADB_DIR/my.cnf"

REDIS_PORT=6379
REDIS_DIR="$SERVICES_DIR/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

RABBIT_PORT=5672
RABBIT_DIST_PORT=25672
RABBIT_NODE=rabbit@localhost   # "localhost" always resolves; the real hostname may not
RABBIT_DIR="$SERVICES_DIR/rabbitmq"
RABBIT_PID="$RABBIT_DIR/rabbit.pid"
RABBIT_LOG="$RABBIT_DIR/log/console.log"

ES_PORT=9200
ES_TRANSPORT_PORT=9300
ES_DIR="$SERVICES_DIR/elasticsearch"
ES_HOME="$ES_DIR/elasticsearch-$ES_VERSION"   # unpacked distribution (root-owned, read-only)
ES_CONF="$ES_DIR/config-$ES_VERSION"           # writable copy of config/ (ES writes its keystore there)
ES_DATA="$ES_DIR/data"
ES_LOGS="$ES_DIR/logs"
ES_RUN="$ES_DIR/run"                           # pid file lives here: must be writable by the ES user
ES_PID="$ES_RUN/elasticsearch.pid"
ES_LOG="$ES_LOGS/elasticsearch.log"
ES_LAUNCH_LOG="$ES_LOGS/launcher.log"

SERVICES=(mariadb redis rabbitmq elasticsearch)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# Show the end of a log so a failed start explains itself without digging.
tail_log() {
  local f
  for f in "$@"; do
    [[ -f "$f" ]] || continue
    printf -- '----- last 40 lines of %s -----\n' "$f" >&2
    tail -n 40 "$f" >&2 || true
  done
}

# TCP probe without extra tools; a refused connect on loopback fails at once.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$BIND/$1" 2>/dev/null; }

# proc_running PID -> true if PID is a live, non-zombie process.  A server
# killed with -9 lingers as a zombie until PID 1 reaps it (not instantly on
# these machines), and `kill -0` still succeeds on a zombie.
proc_running() {
  local st
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z* ]]
}

pid_alive() {  # pid_alive PIDFILE -> true if the pid in it is a running process
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  proc_running "$pid"
}

# Pids of the processes this run launched, by service name (see spawn).
declare -A LAUNCHED=()
launched_alive() { [[ -n "${LAUNCHED[$1]:-}" ]] && proc_running "${LAUNCHED[$1]}"; }

# already_up NAME UP-FUNCTION PIDFILE
# True if the server answers.  If its process exists but does not answer
# (another invocation is starting it, or it is going down after a stop or a
# kill), wait for whichever comes first rather than starting a second copy.
already_up() {
  local name="$1" up="$2" pidfile="$3" deadline=$((SECONDS + WAIT_SECS))
  while :; do
    "$up" && return 0
    pid_alive "$pidfile" || return 1
    (( SECONDS < deadline )) \
      || die "$name: pid $(cat "$pidfile") is running but not answering after ${WAIT_SECS}s; try: $0 stop-one $name"
    sleep 0.3
  done
}

# wait_until NAME TIMEOUT ALIVE-FUNCTION CHECK-FUNCTION [LOG...]
# Polls CHECK until it succeeds; bails out early once ALIVE says the server
# process is gone (no point waiting the full timeout for a crashed server).
wait_until() {
  local name="$1" timeout="$2" alive="$3" check="$4"; shift 4
  local deadline=$((SECONDS + timeout))
  until "$check"; do
    if ! "$alive"; then
      "$check" && break   # it may have answered and daemonized in between
      tail_log "$@"
      die "$name: process exited before it answered (see logs above)"
    fi
    if (( SECONDS >= deadline )); then
      tail_log "$@"
      die "$name: not answering after ${timeout}s (see logs above)"
    fi
    sleep 0.3
  done
}

# wait_gone NAME PIDFILE TIMEOUT -> wait for the process to exit, SIGKILL after TIMEOUT.
wait_gone() {
  local name="$1" pidfile="$2" timeout="$3" pid deadline
  [[ -s "$pidfile" ]] || return 0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || { rm -f "$pidfile"; return 0; }
  deadline=$((SECONDS + timeout))
  while proc_running "$pid"; do
    if (( SECONDS >= deadline )); then
      log "$name: still running after ${timeout}s, sending SIGKILL to $pid"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

# Run a daemon fully detached: own session, no inherited stdio, so callers
# such as `make` or CI pipes never hang waiting for our children.
spawn() {  # spawn NAME LOGFILE CMD...   (records the pid in LAUNCHED[NAME])
  local name="$1" logfile="$2"; shift 2
  # cd / so no daemon keeps the caller's directory (e.g. a CI checkout) busy.
  # 9>&-: don't hand the lock fd (see main) to a daemon, it would hold the lock forever.
  (cd / && exec setsid "$@" >>"$logfile" 2>&1 </dev/null 9>&-) &
  LAUNCHED[$name]=$!
  disown 2>/dev/null || true
}

need_root() { [[ $EUID -eq 0 ]] || die "must run as root (it installs packages and switches to service users)"; }

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------
install_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  # The dev/CI image ships Maven and JDK 17; a bare Debian 12 gets them from apt.
  command -v mvn >/dev/null || missing+=(maven)
  if [[ "$ES_JAVA_HOME" == "$JAVA17_HOME" && ! -x "$JAVA17_HOME/bin/java" ]]; then missing+=(openjdk-17-jre-headless); fi
  if ((${#missing[@]} == 0)); then
    log "apt packages already installed"
    return 0
  fi
  log "installing apt packages: ${missing[*]}"
  # Without systemd, invoke-rc.d falls back to /etc/init.d and would start the
  # distro instances (RabbitMQ on 0.0.0.0, MariaDB with /etc/mysql config).
  # A policy-rc.d that exits 101 tells maintainer scripts "don't start
  # anything"; we add one only for the duration of the install if the image
  # does not already have one, and remove only the one we created.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary, from chatd scripts/services.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT   # also on failure/interrupt
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if ((created_policy)); then rm -f "$policy"; trap - EXIT; fi
  # Anything that ran rabbitmqctl meanwhile (it auto-starts epmd) would have
  # left epmd listening on 0.0.0.0 and [::]; don't leave that around.
  epmd_loopback_only
}

install_es() {
  if [[ -x "$ES_HOME/bin/elasticsearch" ]]; then
    log "elasticsearch $ES_VERSION already unpacked in $ES_HOME"
  else
    [[ -x "$ES_JAVA_HOME/bin/java" ]] || die "no JDK at $ES_JAVA_HOME (needed by Elasticsearch $ES_VERSION)"
    command -v mvn >/dev/null || die "mvn not found (it fetches Elasticsearch from Maven Central)"
    log "fetching $ES_GAV with maven"
    mkdir -p "$ES_DIR"
    local tmp
    tmp="$(mktemp -d "$ES_DIR/.download.XXXXXX")"
    # The local ~/.m2 keeps the zip, so a re-install after wiping
    # $CHATD_SERVICES_DIR does not download again.
    if ! mvn -B -Dstyle.color=never "$MVN_DEPENDENCY_PLUGIN:copy" -Dartifact="$ES_GAV" \
        -DoutputDirectory="$tmp" -Dmdep.useBaseVersion=true >"$tmp/mvn.log" 2>&1; then
      tail_log "$tmp/mvn.log"
      rm -rf "$tmp"
      die "maven could not fetch $ES_GAV"
    fi
    # Unpack next to the target and rename, so an interrupted unzip never
    # leaves a half-populated $ES_HOME that the check above would accept.
    unzip -q "$tmp"/*.zip -d "$tmp/unpacked"
    rm -rf "$ES_HOME"
    mv "$tmp/unpacked/elasticsearch-$ES_VERSION" "$ES_HOME"
    rm -rf "$tmp"
  fi
  # Elasticsearch refuses to run as root: give it a system account.
  if ! id -u elasticsearch >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$ES_DIR" --no-create-home --shell /usr/sbin/nologin elasticsearch
  fi
}

cmd_install() {
  need_root
  install_apt
  install_es
}

# ---------------------------------------------------------------------------
# MariaDB
# ---------------------------------------------------------------------------
mariadb_client() { mariadb --no-defaults --protocol=socket --socket="$MARIADB_SOCK" -uroot; }  # SQL on stdin
mariadb_up() { mariadb-admin --no-defaults --protocol=tcp -h"$BIND" -P"$MARIADB_PORT" -uchatd -pchatd --connect-timeout=2 ping >/dev/null 2>&1; }
mariadb_any_up() { mariadb_sock_up || port_open "$MARIADB_PORT"; }
mariadb_alive() { launched_alive mariadb || pid_alive "$MARIADB_PID"; }
mariadb_sock_up() { mariadb-admin --no-defaults --protocol=socket --socket="$MARIADB_SOCK" -uroot --connect-timeout=2 ping >/dev/null 2>&1; }

mariadb_write_cnf() {
  # Regenerated on every start so edits to this script take effect.
  # Tuned for a throw-away test server: durability traded for speed.
  cat >"$MARIADB_CNF" <<EOF
# generated by scripts/services.sh - do not edit
[mysqld]
pid-file = $MARIADB_PID
log-error = $MARIADB_LOG
# no DNS lookups on connect (faster, no surprises on odd hostnames)
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
# Test server only: flush the redo log once a second instead of at every
# commit. A crash may lose the last second of commits, which tests don't care about.
innodb_flush_log_at_trx_commit = 2
innodb_doublewrite = 0
innodb_buffer_pool_size = 256M
innodb_log_file_size = 64M
performance_schema = OFF
max_connections = 300
EOF
}

mariadb_launch() {
  already_up mariadb mariadb_any_up "$MARIADB_PID" && return 0
  mkdir -p "$MARIADB_DIR"
  touch "$MARIADB_LOG"
  chown mysql:mysql "$MARIADB_DIR" "$MARIADB_LOG"   # mariadbd reopens its log as mysql
  mariadb_write_cnf
  if [[ ! -d "$MARIADB_DATA/mysql" ]]; then
    log "mariadb: initializing datadir $MARIADB_DATA"
    rm -rf "$MARIADB_DATA"
    # --defaults-file must come first; root@localhost gets unix_socket auth,
    # so only OS root can use it (over our private socket).
    mariadb-install-db --defaults-file="$MARIADB_CNF" --user=mysql --datadir="$MARIADB_DATA" \
      --auth-root-authentication-method=socket --skip-test-db >>"$MARIADB_LOG" 2>&1 \
      || { tail_log "$MARIADB_LOG"; die "mariadb-install-db failed"; }
  fi
  rm -f "$MARIADB_SOCK"  # a stale socket after SIGKILL would confuse clients
  log "mariadb: starting on $BIND:$MARIADB_PORT"
  spawn mariadb "$MARIADB_LOG" mariadbd --defaults-file="$MARIADB_CNF" --user=mysql \
    --bind-address="$BIND" --port="$MARIADB_PORT" --socket="$MARIADB_SOCK" --datadir="$MARIADB_DATA"
}

mariadb_wait() {
  wait_until mariadb "$WAIT_SECS" mariadb_alive mariadb_sock_up "$MARIADB_LOG"
  # Idempotent: (re)create the test account every start. The suite creates a
  # fresh database per run, hence ALL on *.* WITH GRANT OPTION.
  mariadb_client <<'SQL'
CREATE USER IF NOT EXISTS 'chatd'@'127.0.0.1' IDENTIFIED BY 'chatd';
CREATE USER IF NOT EXISTS 'chatd'@'localhost' IDENTIFIED BY 'chatd';
ALTER USER 'chatd'@'127.0.0.1' IDENTIFIED BY 'chatd';
ALTER USER 'chatd'@'localhost' IDENTIFIED BY 'chatd';
GRANT ALL PRIVILEGES ON *.* TO 'chatd'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'chatd'@'localhost' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS chatd;
SQL
  wait_until mariadb 10 mariadb_alive mariadb_up "$MARIADB_LOG"
  log "mariadb: up"
}

mariadb_stop() {
  if mariadb_sock_up; then
    mariadb-admin --no-defaults --protocol=socket --socket="$MARIADB_SOCK" -uroot shutdown >/dev/null 2>&1 || true
  elif pid_alive "$MARIADB_PID"; then
    kill -TERM "$(cat "$MARIADB_PID")" 2>/dev/null || true   # SIGTERM = clean shutdown too
  fi
  wait_gone mariadb "$MARIADB_PID" 60
  log "mariadb: stopped"
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------
# redis daemonizes itself and writes its pid file right away.
redis_alive() { pid_alive "$REDIS_PID"; }
redis_up() { [[ "$(redis-cli -h "$BIND" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }

redis_launch() {
  already_up redis redis_up "$REDIS_PID" && return 0
  mkdir -p "$REDIS_DIR"
  chown redis:redis "$REDIS_DIR"
  log "redis: starting on $BIND:$REDIS_PORT"
  # Pure cache for tests: no RDB snapshots, no AOF.  Runs as the redis user.
  runuser -u redis -- redis-server --daemonize yes --bind "$BIND" --port "$REDIS_PORT" \
    --save '' --appendonly no --dir "$REDIS_DIR" --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
    </dev/null >/dev/null 2>&1 9>&- || { tail_log "$REDIS_LOG"; die "redis-server failed to start"; }
}

redis_wait() {
  wait_until redis "$WAIT_SECS" redis_alive redis_up "$REDIS_LOG"
  log "redis: up"
}

redis_stop() {
  if redis_up; then
    redis-cli -h "$BIND" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  elif pid_alive "$REDIS_PID"; then
    kill -TERM "$(cat "$REDIS_PID")" 2>/dev/null || true
  fi
  wait_gone redis "$REDIS_PID" 20
  log "redis: stopped"
}

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------
# Everything goes through environment variables.  We bypass Debian's
# /usr/sbin wrappers (they `su` with a re-quoted command line and, when already
# the rabbitmq user, send the server's output to /var/log/rabbitmq) and run
# the real scripts as the rabbitmq user with its HOME, so the Erlang cookie is
# the one in /var/lib/rabbitmq that a plain `rabbitmqctl` as root also uses.
RABBIT_BIN=/usr/lib/rabbitmq/bin
AS_RABBIT=(runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq)
rabbit_env() {
  export RABBITMQ_NODENAME="$RABBIT_NODE"
  export RABBITMQ_NODE_IP_ADDRESS="$BIND"            # AMQP listener
  export RABBITMQ_NODE_PORT="$RABBIT_PORT"
  export RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"      # inter-node port, fixed ...
  # ... and bound to loopback (the Erlang default is all interfaces).
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  # rabbitmqctl starts a short-lived Erlang node too; keep it on loopback.
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_EPMD_ADDRESS="$BIND"                    # epmd (port 4369) on loopback only
  export RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
  export RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
  export RABBITMQ_PID_FILE="$RABBIT_PID"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
  # Don't read /etc/rabbitmq/rabbitmq-env.conf: this instance is fully described here.
  export RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
}

# Any rabbitmqctl/rabbitmq-plugins call (e.g. a plain `rabbitmqctl status`
# by hand while RabbitMQ is down) auto-starts epmd on ALL interfaces if none
# is running. Replace such an epmd;
# `epmd -kill` refuses while nodes are registered, so a live node is safe.
epmd_loopback_only() {
  local addrs
  addrs="$(ss -ltnH 'sport = :4369' 2>/dev/null | awk '{print $4}')"
  [[ -n "$addrs" ]] || return 0
  # epmd always adds [::1] next to the address it is given: that is loopback too.
  if grep -qvE "^($BIND|\[::1\]):" <<<"$addrs"; then
    log "epmd: listening on a non-loopback address, restarting it on $BIND"
    if epmd -kill >/dev/null 2>&1; then
      local _; for _ in $(seq 50); do ss -ltnH 'sport = :4369' | grep -q . || break; sleep 0.1; done
    else
      log "epmd: could not stop it (nodes still registered?) - leaving it"
    fi
  fi
}

rabbit_alive() { launched_alive rabbitmq || pid_alive "$RABBIT_PID"; }
rabbit_up() { port_open "$RABBIT_PORT"; }

rabbit_launch() {
  already_up rabbitmq rabbit_up "$RABBIT_PID" && return 0
  mkdir -p "$RABBIT_DIR/log" "$RABBIT_DIR/mnesia"
  [[ -f "$RABBIT_DIR/enabled_plugins" ]] || echo '[].' >"$RABBIT_DIR/enabled_plugins"  # no management UI needed
  : >"$RABBIT_DIR/rabbitmq-env.conf"
  chown -R rabbitmq:rabbitmq "$RABBIT_DIR"
  rabbit_env
  # epmd must be listening on loopback before the node registers; start it
  # explicitly (no-op if ours is already running).
  epmd_loopback_only
  "${AS_RABBIT[@]}" epmd -address "$BIND" -daemon 9>&-
  log "rabbitmq: starting on $BIND:$RABBIT_PORT (node $RABBIT_NODE)"
  # RabbitMQ sizes its file-handle budget from this limit (1024 by default here); each quorum
  # queue takes about 3, so a few hundred left-over test queues stop it accepting connections.
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  spawn rabbitmq "$RABBIT_LOG" "${AS_RABBIT[@]}" "$RABBIT_BIN/rabbitmq-server"
}

rabbit_wait() {
  rabbit_env
  wait_until rabbitmq "$WAIT_SECS" rabbit_alive rabbit_up "$RABBIT_LOG" "$RABBIT_DIR/log/$RABBIT_NODE.log"
  log "rabbitmq: up"
}

rabbit_stop() {
  rabbit_env
  if pid_alive "$RABBIT_PID"; then
    # `stop PIDFILE` returns only once the Erlang VM has exited.
    timeout 60 "${AS_RABBIT[@]}" "$RABBIT_BIN/rabbitmqctl" -q -n "$RABBIT_NODE" stop "$RABBIT_PID" >/dev/null 2>&1 \
      || kill -TERM "$(cat "$RABBIT_PID")" 2>/dev/null || true
  fi
  wait_gone rabbitmq "$RABBIT_PID" 30
  log "rabbitmq: stopped"
}

# ---------------------------------------------------------------------------
# Elasticsearch
# ---------------------------------------------------------------------------
# With -d the launcher (our spawned pid) exits once the node is up, and the
# node's own pid file appears only then: alive = either of them.
es_alive() { launched_alive elasticsearch || pid_alive "$ES_PID"; }
es_up() { curl -fsS -m 3 "http://$BIND:$ES_PORT/_cluster/health?wait_for_status=yellow&timeout=2s" >/dev/null 2>&1; }

es_launch() {
  already_up elasticsearch es_up "$ES_PID" && return 0
  [[ -x "$ES_HOME/bin/elasticsearch" ]] || die "elasticsearch $ES_VERSION not installed; run: $0 install"
  id -u elasticsearch >/dev/null 2>&1 || die "no elasticsearch user; run: $0 install"
  mkdir -p "$ES_DATA" "$ES_LOGS" "$ES_RUN" "$ES_DIR/tmp"
  [[ -d "$ES_CONF" ]] || cp -a "$ES_HOME/config" "$ES_CONF"
  chown -R elasticsearch:elasticsearch "$ES_DATA" "$ES_LOGS" "$ES_RUN" "$ES_DIR/tmp" "$ES_CONF"
  local settings=(
    -E discovery.type=single-node
    -E network.host="$BIND"
    -E http.port="$ES_PORT"
    -E transport.port="$ES_TRANSPORT_PORT"
    -E path.data="$ES_DATA"
    -E path.logs="$ES_LOGS"
    # Small test disks must not flip indices to read-only.
    -E cluster.routing.allocation.disk.threshold_enabled=false
    # Let tests clean up with wildcard deletes (DELETE /chatd-test-*).
    -E action.destructive_requires_name=false
  )
  # These settings only exist when the matching module is shipped (an unknown
  # setting aborts startup).  The 8.x integ-test-zip has x-pack-security, and
  # security is on by default there: turn it off for plain http, no auth.
  if [[ -d "$ES_HOME/modules/x-pack-security" ]]; then settings+=(-E xpack.security.enabled=false); fi
  # No network here: don't try to download GeoIP databases.
  if [[ -d "$ES_HOME/modules/ingest-geoip" ]]; then settings+=(-E ingest.geoip.downloader.enabled=false); fi
  log "elasticsearch: starting $ES_VERSION on $BIND:$ES_PORT (java: $ES_JAVA_HOME, heap $ES_HEAP)"
  rm -f "$ES_PID"
  # -d: daemonize once the node is up; -p: pid file we use for stop/status.
  spawn elasticsearch "$ES_LAUNCH_LOG" runuser -u elasticsearch -- env \
    ES_JAVA_HOME="$ES_JAVA_HOME" ES_PATH_CONF="$ES_CONF" ES_TMPDIR="$ES_DIR/tmp" \
    ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP -Djava.net.preferIPv4Stack=true" \
    "$ES_HOME/bin/elasticsearch" -d -p "$ES_PID" "${settings[@]}"
}

es_wait() {
  wait_until elasticsearch "$WAIT_SECS" es_alive es_up "$ES_LOG" "$ES_LAUNCH_LOG"
  log "elasticsearch: up"
}

es_stop() {
  if pid_alive "$ES_PID"; then
    kill -TERM "$(cat "$ES_PID")" 2>/dev/null || true
  fi
  wait_gone elasticsearch "$ES_PID" 60
  log "elasticsearch: stopped"
}

# ---------------------------------------------------------------------------
# Dispatch helpers
# ---------------------------------------------------------------------------
# Checked up front: a `die` inside $(fn_prefix ...) would only leave the subshell.
check_name() {
  case "${1:-}" in
    mariadb|redis|rabbitmq|elasticsearch) ;;
    *) die "unknown server '${1:-}' (want one of: ${SERVICES[*]})" ;;
  esac
}

fn_prefix() {
  case "$1" in
    mariadb) echo mariadb ;;
    redis) echo redis ;;
    rabbitmq) echo rabbit ;;
    elasticsearch) echo es ;;
    *) die "unknown server '$1' (want one of: ${SERVICES[*]})" ;;
  esac
}

cmd_start() {
  need_root
  local s
  mkdir -p "$SERVICES_DIR"
  chmod 755 "$SERVICES_DIR"   # service users must traverse it
  # Launch everything first, then wait: the slow ones (ES, RabbitMQ) boot in parallel.
  for s in "$@"; do "$(fn_prefix "$s")_launch"; done
  for s in "$@"; do "$(fn_prefix "$s")_wait"; done
}

cmd_stop() {
  need_root
  local s
  for s in "$@"; do "$(fn_prefix "$s")_stop"; done
}

cmd_status() {
  local s ok all=0 where
  for s in "${SERVICES[@]}"; do
    case "$s" in
      mariadb) mariadb_up && ok=1 || ok=0; where="$BIND:$MARIADB_PORT" ;;
      redis) redis_up && ok=1 || ok=0; where="$BIND:$REDIS_PORT" ;;
      rabbitmq) rabbit_up && ok=1 || ok=0; where="$BIND:$RABBIT_PORT" ;;
      elasticsearch) es_up && ok=1 || ok=0; where="$BIND:$ES_PORT" ;;
    esac
    if ((ok)); then printf '%-14s up    %s\n' "$s" "$where"; else printf '%-14s down  %s\n' "$s" "$where"; all=3; fi
  done
  return "$all"
}

cmd_env() {
  cat <<EOF
export CHATD_DATABASE_URL=mysql://chatd:chatd@$BIND:$MARIADB_PORT/chatd
export CHATD_REDIS_URL=redis://$BIND:$REDIS_PORT/0
export CHATD_AMQP_URL=amqp://guest:guest@$BIND:$RABBIT_PORT/
export CHATD_ELASTICSEARCH_URL=http://$BIND:$ES_PORT
EOF
}

# ---------------------------------------------------------------------------
# Local cluster (`cluster up|down|status|env`, issue 19): three RabbitMQ nodes,
# a Redis primary + 2 replicas + 3 Sentinels, three Elasticsearch nodes and a
# MariaDB primary + replica, all on 127.0.0.1, on ports that leave the single
# servers above alone (they keep running).  Data under $SERVICES_DIR/cluster.
# Nodes are spawned together, then awaited (a restarted member waits for its
# peers before it answers); ES heaps are small.
# ---------------------------------------------------------------------------
CL_DIR="$SERVICES_DIR/cluster"
CL_RABBIT_PORTS=(5681 5682 5683)          # AMQP; dist ports 25681..25683; no management plugin
CL_RABBIT_DIST_PORTS=(25681 25682 25683)
CL_REDIS_PORTS=(6381 6382 6383)           # 6381 primary, 6382/6383 --replicaof it
CL_SENTINEL_PORTS=(26381 26382 26383)
CL_ES_PORTS=(9211 9212 9213)
CL_ES_TRANSPORT_PORTS=(9311 9312 9313)
CL_ES_HEAP="${CHATD_CLUSTER_ES_HEAP:-320m}"
CL_MARIADB_PRIMARY_PORT=3316
CL_MARIADB_REPLICA_PORT=3317

cl_rabbit_node() { echo "rabbit-c$1@localhost"; }
cl_rabbit_env() {  # cl_rabbit_env N (1..3)
  local i=$(($1 - 1)) d="$CL_DIR/rabbitmq-c$1"
  rabbit_env   # loopback epmd/dist settings; then override everything node-specific
  export RABBITMQ_NODENAME="$(cl_rabbit_node "$1")"
  export RABBITMQ_NODE_PORT="${CL_RABBIT_PORTS[$i]}"
  export RABBITMQ_DIST_PORT="${CL_RABBIT_DIST_PORTS[$i]}"
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/rabbit.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
}
# Every node runs as the rabbitmq user with HOME=/var/lib/rabbitmq: they share
# its Erlang cookie with each other (and with rabbitmqctl as root).
cl_rabbitmqctl() { local n="$1"; shift; ( cl_rabbit_env "$n"; timeout 60 "${AS_RABBIT[@]}" "$RABBIT_BIN/rabbitmqctl" -q -n "$(cl_rabbit_node "$n")" "$@" ); }
cl_rabbit_members() { cl_rabbitmqctl 1 cluster_status --formatter json 2>/dev/null | jq -r '.disk_nodes[]?' 2>/dev/null; }

# Spawn node N unless it answers or its process is already up (booting).
cl_rabbit_spawn() {
  local n="$1" i=$(($1 - 1)) d="$CL_DIR/rabbitmq-c$1"
  port_open "${CL_RABBIT_PORTS[$i]}" && return 0
  pid_alive "$d/rabbit.pid" && return 0
  mkdir -p "$d/log" "$d/mnesia"
  [[ -f "$d/enabled_plugins" ]] || echo '[].' >"$d/enabled_plugins"
  : >"$d/rabbitmq-env.conf"
  # Two nodes of three survive a partition; the lone side pauses.
  printf 'cluster_partition_handling = pause_minority\nloopback_users = none\n' >"$d/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$d"
  ( cl_rabbit_env "$n"
    epmd_loopback_only
    "${AS_RABBIT[@]}" epmd -address "$BIND" -daemon 9>&-
    log "cluster rabbitmq: starting $RABBITMQ_NODENAME on $BIND:$RABBITMQ_NODE_PORT (dist $RABBITMQ_DIST_PORT)"
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    spawn "rabbit-c$n" "$d/log/console.log" "${AS_RABBIT[@]}" "$RABBIT_BIN/rabbitmq-server" )
}

cl_rabbit_wait() {
  local n="$1" i=$(($1 - 1)) d="$CL_DIR/rabbitmq-c$1" deadline=$((SECONDS + WAIT_SECS))
  until port_open "${CL_RABBIT_PORTS[$i]}"; do
    if (( SECONDS >= deadline )); then
      tail_log "$d/log/console.log" "$d/log/$(cl_rabbit_node "$n").log"
      die "cluster rabbitmq c$n: not answering after ${WAIT_SECS}s"
    fi
    sleep 0.5
  done
}

cl_rabbit_join() {
  local n="$1"
  cl_rabbit_members | grep -qx "$(cl_rabbit_node "$n")" && return 0
  log "cluster rabbitmq: joining $(cl_rabbit_node "$n") to $(cl_rabbit_node 1)"
  cl_rabbitmqctl "$n" stop_app
  cl_rabbitmqctl "$n" join_cluster "$(cl_rabbit_node 1)"
  cl_rabbitmqctl "$n" start_app
}

cl_rabbit_up() {
  local n
  # All three are spawned before any is waited for: a node that was a cluster
  # member when it went down (a kill -9, a reboot, any but the last one of a
  # clean stop) does not open its port until it has seen its peers (it waits
  # for them up to 10 x 30 s), so starting them one after another would wait
  # on the first forever.  A fresh node boots alone and is joined below.
  for n in 1 2 3; do cl_rabbit_spawn "$n"; done
  for n in 1 2 3; do cl_rabbit_wait "$n"; done
  for n in 2 3; do cl_rabbit_join "$n"; done
  # Users are cluster-wide: create once, idempotently (same password scheme as the MariaDB user).
  if ! cl_rabbitmqctl 1 list_users 2>/dev/null | awk '{print $1}' | grep -qx chatd; then
    cl_rabbitmqctl 1 add_user chatd chatd >/dev/null
  fi
  cl_rabbitmqctl 1 set_user_tags chatd administrator >/dev/null
  cl_rabbitmqctl 1 set_permissions -p / chatd '.*' '.*' '.*' >/dev/null
  log "cluster rabbitmq: up ($(cl_rabbit_members | tr '\n' ' '))"
}

cl_rabbit_down() {
  local n d
  for n in 3 2 1; do
    d="$CL_DIR/rabbitmq-c$n"
    if pid_alive "$d/rabbit.pid"; then
      cl_rabbitmqctl "$n" stop "$d/rabbit.pid" >/dev/null 2>&1 || kill -TERM "$(cat "$d/rabbit.pid")" 2>/dev/null || true
    fi
    wait_gone "rabbit-c$n" "$d/rabbit.pid" 30
  done
}

# Redis ----------------------------------------------------------------------
cl_redis_cli() { redis-cli -h "$BIND" -p "$1" "${@:2}" 2>/dev/null; }
cl_redis_up() {
  local i p d primary
  mkdir -p "$CL_DIR/redis"; chown redis:redis "$CL_DIR/redis"
  # After a failover the Sentinels name another primary: a node started again follows it.
  primary="$(cl_redis_primary_port || true)"; primary="${primary:-${CL_REDIS_PORTS[0]}}"
  for i in 0 1 2; do
    p="${CL_REDIS_PORTS[$i]}"; d="$CL_DIR/redis/$p"
    [[ "$(cl_redis_cli "$p" ping)" == PONG ]] && continue
    mkdir -p "$d"; chown redis:redis "$d"
    local extra=()
    [[ "$p" != "$primary" ]] && extra=(--replicaof "$BIND" "$primary")
    log "cluster redis: starting $BIND:$p${extra:+ (replica of $primary)}"
    runuser -u redis -- redis-server --daemonize yes --bind "$BIND" --port "$p" --save '' --appendonly no \
      --dir "$d" --pidfile "$d/redis.pid" --logfile "$d/redis.log" "${extra[@]}" </dev/null >/dev/null 2>&1 9>&- \
      || { tail_log "$d/redis.log"; die "cluster redis $p failed to start"; }
    local deadline=$((SECONDS + 30))
    until [[ "$(cl_redis_cli "$p" ping)" == PONG ]]; do (( SECONDS < deadline )) || die "cluster redis $p not answering"; sleep 0.2; done
  done
  for i in 0 1 2; do
    p="${CL_SENTINEL_PORTS[$i]}"; d="$CL_DIR/redis/sentinel-$p"
    [[ "$(cl_redis_cli "$p" ping)" == PONG ]] && continue
    mkdir -p "$d"
    # Sentinel rewrites its own conf (known replicas/sentinels, epochs): write it only once.
    if [[ ! -s "$d/sentinel.conf" ]]; then
      cat >"$d/sentinel.conf" <<EOF
bind $BIND
port $p
daemonize yes
pidfile $d/sentinel.pid
logfile $d/sentinel.log
dir $d
sentinel monitor chatd $BIND ${CL_REDIS_PORTS[0]} 2
sentinel down-after-milliseconds chatd 5000
sentinel failover-timeout chatd 20000
sentinel parallel-syncs chatd 1
EOF
    fi
    chown -R redis:redis "$d"
    log "cluster redis: starting sentinel $BIND:$p"
    runuser -u redis -- redis-server "$d/sentinel.conf" --sentinel </dev/null >/dev/null 2>&1 9>&- \
      || { tail_log "$d/sentinel.log"; die "sentinel $p failed to start"; }
    local deadline=$((SECONDS + 30))
    until [[ "$(cl_redis_cli "$p" ping)" == PONG ]]; do (( SECONDS < deadline )) || die "sentinel $p not answering"; sleep 0.2; done
  done
  log "cluster redis: up"
}
cl_redis_down() {
  local p pidf
  for p in "${CL_SENTINEL_PORTS[@]}" "${CL_REDIS_PORTS[@]}"; do
    if [[ -d "$CL_DIR/redis/sentinel-$p" ]]; then pidf="$CL_DIR/redis/sentinel-$p/sentinel.pid"; else pidf="$CL_DIR/redis/$p/redis.pid"; fi
    if [[ "$(cl_redis_cli "$p" ping)" == PONG ]]; then
      cl_redis_cli "$p" shutdown nosave >/dev/null || true
    elif pid_alive "$pidf"; then kill -TERM "$(cat "$pidf")" 2>/dev/null || true; fi
    wait_gone "redis $p" "$pidf" 20
  done
}

# Elasticsearch --------------------------------------------------------------
cl_es_health() { curl -fsS -m 5 "http://$BIND:${CL_ES_PORTS[0]}/_cluster/health?wait_for_nodes=3&wait_for_status=yellow&timeout=3s" 2>/dev/null; }
cl_es_up() {
  [[ -x "$ES_HOME/bin/elasticsearch" ]] || die "elasticsearch $ES_VERSION not installed; run: $0 install"
  local i n d seeds masters
  seeds="$BIND:${CL_ES_TRANSPORT_PORTS[0]},$BIND:${CL_ES_TRANSPORT_PORTS[1]},$BIND:${CL_ES_TRANSPORT_PORTS[2]}"
  masters="chatd-es-c1,chatd-es-c2,chatd-es-c3"
  for i in 0 1 2; do
    n=$((i + 1)); d="$CL_DIR/elasticsearch-c$n"
    port_open "${CL_ES_PORTS[$i]}" && continue
    pid_alive "$d/run/es.pid" && continue
    mkdir -p "$d/data" "$d/logs" "$d/run" "$d/tmp"
    [[ -d "$d/config" ]] || cp -a "$ES_HOME/config" "$d/config"
    chown -R elasticsearch:elasticsearch "$d"
    local settings=(
      -E cluster.name=chatd-cluster -E node.name="chatd-es-c$n"
      -E network.host="$BIND" -E http.port="${CL_ES_PORTS[$i]}" -E transport.port="${CL_ES_TRANSPORT_PORTS[$i]}"
      -E path.data="$d/data" -E path.logs="$d/logs"
      -E discovery.seed_hosts="$seeds" -E cluster.initial_master_nodes="$masters"
      -E cluster.routing.allocation.disk.threshold_enabled=false
      -E action.destructive_requires_name=false
    )
    if [[ -d "$ES_HOME/modules/x-pack-security" ]]; then settings+=(-E xpack.security.enabled=false); fi
    if [[ -d "$ES_HOME/modules/ingest-geoip" ]]; then settings+=(-E ingest.geoip.downloader.enabled=false); fi
    log "cluster elasticsearch: starting chatd-es-c$n on $BIND:${CL_ES_PORTS[$i]} (transport ${CL_ES_TRANSPORT_PORTS[$i]}, heap $CL_ES_HEAP)"
    rm -f "$d/run/es.pid"
    # No -d: the launcher would wait for the cluster to form; the pid file is written at startup.
    spawn "es-c$n" "$d/logs/launcher.log" runuser -u elasticsearch -- env \
      ES_JAVA_HOME="$ES_JAVA_HOME" ES_PATH_CONF="$d/config" ES_TMPDIR="$d/tmp" \
      ES_JAVA_OPTS="-Xms$CL_ES_HEAP -Xmx$CL_ES_HEAP -Djava.net.preferIPv4Stack=true" \
      "$ES_HOME/bin/elasticsearch" -p "$d/run/es.pid" "${settings[@]}"
    # One after another: wait until this node's transport port is bound before the next JVM.
    local deadline=$((SECONDS + WAIT_SECS))
    until port_open "${CL_ES_TRANSPORT_PORTS[$i]}"; do
      proc_running "${LAUNCHED[es-c$n]}" || { tail_log "$d/logs/launcher.log"; die "cluster elasticsearch c$n exited"; }
      (( SECONDS < deadline )) || { tail_log "$d/logs/launcher.log"; die "cluster elasticsearch c$n: transport not bound after ${WAIT_SECS}s"; }
      sleep 0.5
    done
  done
  local deadline=$((SECONDS + WAIT_SECS)) h
  until h="$(cl_es_health)" && [[ "$(jq -r .number_of_nodes <<<"$h")" == 3 ]] && [[ "$(jq -r .status <<<"$h")" =~ ^(green|yellow)$ ]]; do
    (( SECONDS < deadline )) || { tail_log "$CL_DIR/elasticsearch-c1/logs/launcher.log"; die "cluster elasticsearch: not 3 nodes green/yellow after ${WAIT_SECS}s"; }
    sleep 1
  done
  log "cluster elasticsearch: up ($(jq -r '.status + ", " + (.number_of_nodes|tostring) + " nodes"' <<<"$h"))"
}
cl_es_down() {
  local n pidf
  for n in 3 2 1; do
    pidf="$CL_DIR/elasticsearch-c$n/run/es.pid"
    pid_alive "$pidf" && kill -TERM "$(cat "$pidf")" 2>/dev/null || true
  done
  for n in 3 2 1; do wait_gone "es-c$n" "$CL_DIR/elasticsearch-c$n/run/es.pid" 60; done
}

# MariaDB --------------------------------------------------------------------
# GTID replication, semi-synchronous (AFTER_SYNC): a commit is acknowledged to chatd
# only once the replica has the transaction in its relay log, so promoting the replica
# loses no committed number or message.  When the replica does not answer within
# rpl_semi_sync_master_timeout (1 s) the primary goes on asynchronously (one commit
# waits that second) until the replica catches up; `chatd promote`'s fence covers that.
cl_maria_sock() { echo "$CL_DIR/mariadb-$1/mariadb.sock"; }
cl_maria_root() { mariadb --no-defaults --protocol=socket --socket="$(cl_maria_sock "$1")" -uroot "${@:2}"; }
cl_maria_sock_up() { mariadb-admin --no-defaults --protocol=socket --socket="$(cl_maria_sock "$1")" -uroot --connect-timeout=2 ping >/dev/null 2>&1; }
cl_maria_start() {  # cl_maria_start primary|replica PORT SERVER_ID
  local role="$1" port="$2" sid="$3" d="$CL_DIR/mariadb-$1"
  cl_maria_sock_up "$role" && return 0
  pid_alive "$d/mariadb.pid" || {
    mkdir -p "$d"; touch "$d/mariadb.log"; chown mysql:mysql "$d" "$d/mariadb.log"
    cat >"$d/my.cnf" <<EOF
# generated by scripts/services.sh (cluster) - do not edit
[mysqld]
pid-file = $d/mariadb.pid
log-error = $d/mariadb.log
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
innodb_flush_log_at_trx_commit = 2
innodb_doublewrite = 0
innodb_buffer_pool_size = 128M
innodb_log_file_size = 64M
performance_schema = OFF
max_connections = 300
server_id = $sid
log_bin = $d/binlog
binlog_format = ROW
log_slave_updates = ON
gtid_strict_mode = ON
rpl_semi_sync_master_enabled = ON
rpl_semi_sync_slave_enabled = ON
rpl_semi_sync_master_wait_point = AFTER_SYNC
rpl_semi_sync_master_timeout = 1000
EOF
    [[ "$role" == replica ]] && printf 'read_only = ON\nrelay_log = %s/relay\n' "$d" >>"$d/my.cnf"
    if [[ ! -d "$d/data/mysql" ]]; then
      log "cluster mariadb: initializing $role datadir"
      rm -rf "$d/data"
      mariadb-install-db --defaults-file="$d/my.cnf" --user=mysql --datadir="$d/data" \
        --auth-root-authentication-method=socket --skip-test-db >>"$d/mariadb.log" 2>&1 \
        || { tail_log "$d/mariadb.log"; die "mariadb-install-db ($role) failed"; }
    fi
    rm -f "$(cl_maria_sock "$role")"
    log "cluster mariadb: starting $role on $BIND:$port (server_id $sid)"
    spawn "mariadb-$role" "$d/mariadb.log" mariadbd --defaults-file="$d/my.cnf" --user=mysql \
      --bind-address="$BIND" --port="$port" --socket="$(cl_maria_sock "$role")" --datadir="$d/data"
  }
  local deadline=$((SECONDS + WAIT_SECS))
  until cl_maria_sock_up "$role"; do
    (( SECONDS < deadline )) || { tail_log "$d/mariadb.log"; die "cluster mariadb $role not answering"; }
    sleep 0.3
  done
}
cl_maria_up() {
  cl_maria_start primary "$CL_MARIADB_PRIMARY_PORT" 1
  # Written on the primary only: the binlog carries users and database to the replica.
  cl_maria_root primary <<'SQL'
CREATE USER IF NOT EXISTS 'chatd'@'127.0.0.1' IDENTIFIED BY 'chatd';
CREATE USER IF NOT EXISTS 'chatd'@'localhost' IDENTIFIED BY 'chatd';
GRANT ALL PRIVILEGES ON *.* TO 'chatd'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'chatd'@'localhost' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY 'repl';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';
CREATE DATABASE IF NOT EXISTS chatd;
SQL
  cl_maria_start replica "$CL_MARIADB_REPLICA_PORT" 2
  [[ "$(cl_maria_root replica -N -e 'SELECT @@read_only')" == 1 ]] \
    || die "cluster mariadb: the replica was promoted (it is no longer read-only); \`$0 cluster reset-mariadb\` rebuilds the pair, empty"
  if [[ -z "$(cl_maria_root replica -N -e 'SHOW SLAVE STATUS')" ]]; then
    log "cluster mariadb: replica follows the primary (GTID, slave_pos)"
    cl_maria_root replica <<SQL
CHANGE MASTER TO MASTER_HOST='$BIND', MASTER_PORT=$CL_MARIADB_PRIMARY_PORT, MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos;
START SLAVE;
SQL
  fi
  local deadline=$((SECONDS + 60))
  until cl_maria_root replica -e 'SHOW SLAVE STATUS\G' | grep -q 'Slave_SQL_Running: Yes' \
     && cl_maria_root replica -e 'SHOW SLAVE STATUS\G' | grep -q 'Slave_IO_Running: Yes'; do
    (( SECONDS < deadline )) || { cl_maria_root replica -e 'SHOW SLAVE STATUS\G' >&2; die "cluster mariadb: replication not running"; }
    sleep 0.5
  done
  log "cluster mariadb: up (replica running)"
}
cl_maria_down() {
  local role
  for role in replica primary; do
    if cl_maria_sock_up "$role"; then
      mariadb-admin --no-defaults --protocol=socket --socket="$(cl_maria_sock "$role")" -uroot shutdown >/dev/null 2>&1 || true
    elif pid_alive "$CL_DIR/mariadb-$role/mariadb.pid"; then
      kill -TERM "$(cat "$CL_DIR/mariadb-$role/mariadb.pid")" 2>/dev/null || true
    fi
    wait_gone "mariadb-$role" "$CL_DIR/mariadb-$role/mariadb.pid" 60
  done
}

cmd_cluster_up() {
  need_root
  # Same packages and Elasticsearch install as `up` (no-ops once installed).
  install_apt
  install_es
  mkdir -p "$CL_DIR"; chmod 755 "$SERVICES_DIR" "$CL_DIR"
  cl_maria_up
  cl_redis_up
  cl_rabbit_up
  cl_es_up
  log "cluster: up"
}
cmd_cluster_down() {
  need_root
  cl_es_down; log "cluster elasticsearch: stopped"
  cl_rabbit_down; log "cluster rabbitmq: stopped"
  cl_redis_down; log "cluster redis: stopped"
  cl_maria_down; log "cluster mariadb: stopped"
}
cmd_cluster_status() {
  local p h
  echo "== rabbitmq"
  cl_rabbitmqctl 1 cluster_status --formatter json 2>/dev/null | jq -c '{disk_nodes, running_nodes}' || echo "rabbit-c1: down"
  echo "== redis"
  for p in "${CL_REDIS_PORTS[@]}"; do
    h="$(cl_redis_cli "$p" info replication | tr -d '\r' | grep -E '^(role|connected_slaves|master_port|master_link_status):' | tr '\n' ' ' || true)"
    printf '%s: %s\n' "$p" "${h:-down}"
  done
  for p in "${CL_SENTINEL_PORTS[@]}"; do
    h="$(cl_redis_cli "$p" sentinel get-master-addr-by-name chatd | tr '\n' ' ' || true)"
    if [[ -n "$h" ]]; then printf 'sentinel %s: master %s\n' "$p" "$h"; else printf 'sentinel %s: down\n' "$p"; fi
  done
  echo "== elasticsearch"
  curl -fsS -m 5 "http://$BIND:${CL_ES_PORTS[0]}/_cat/nodes?v&h=name,ip,http_address,master,heap.max" 2>/dev/null || echo "es: down"
  h="$(curl -fsS -m 5 "http://$BIND:${CL_ES_PORTS[0]}/_cluster/health" 2>/dev/null)" && jq -c '{status, number_of_nodes}' <<<"$h"
  echo "== mariadb"
  cl_maria_sock_up primary && echo "primary $CL_MARIADB_PRIMARY_PORT: up" || echo "primary $CL_MARIADB_PRIMARY_PORT: down"
  if cl_maria_sock_up replica; then
    echo "replica $CL_MARIADB_REPLICA_PORT: $(cl_maria_root replica -e 'SHOW SLAVE STATUS\G' | grep -E 'Slave_(IO|SQL)_Running:|Seconds_Behind_Master:|Gtid_IO_Pos:' | sed 's/^ *//' | tr '\n' ' ')"
  else echo "replica $CL_MARIADB_REPLICA_PORT: down"; fi
}
# The cluster suite's test servers (tests/conftest.py reads CHATD_TEST_*_URL), as `env` prints chatd's.
cmd_cluster_test_env() {
  cat <<EOF
export CHATD_TEST_MYSQL_URL=mysql://chatd:chatd@$BIND:$CL_MARIADB_PRIMARY_PORT
export CHATD_TEST_MYSQL_REPLICA_URL=mysql://chatd:chatd@$BIND:$CL_MARIADB_REPLICA_PORT
export CHATD_TEST_REDIS_URL=redis+sentinel://$BIND:${CL_SENTINEL_PORTS[0]},$BIND:${CL_SENTINEL_PORTS[1]},$BIND:${CL_SENTINEL_PORTS[2]}/chatd/0
export CHATD_TEST_AMQP_URL=amqp://chatd:chatd@$BIND:${CL_RABBIT_PORTS[0]}/,amqp://chatd:chatd@$BIND:${CL_RABBIT_PORTS[1]}/,amqp://chatd:chatd@$BIND:${CL_RABBIT_PORTS[2]}/
export CHATD_TEST_ELASTICSEARCH_URL=http://$BIND:${CL_ES_PORTS[0]},http://$BIND:${CL_ES_PORTS[1]},http://$BIND:${CL_ES_PORTS[2]}
EOF
}
# Node loss for the cluster suite (tests/cluster): kill -9, as a crash or an OOM kill does.
cl_kill() {  # cl_kill PIDFILE NAME
  pid_alive "$1" || die "cluster: $2 is not running"
  kill -KILL "$(cat "$1")"
  wait_gone "$2" "$1" 30
  log "cluster: killed $2 (kill -9)"
}
cl_redis_primary_port() { cl_redis_cli "${CL_SENTINEL_PORTS[0]}" sentinel get-master-addr-by-name chatd | sed -n 2p; }
cmd_cluster_kill() {
  case "${1:-}" in
    rabbitmq) cl_kill "$CL_DIR/rabbitmq-c${2:?node 1-3}/rabbit.pid" "rabbit-c$2" ;;
    redis-primary) local p; p="$(cl_redis_primary_port)"; cl_kill "$CL_DIR/redis/$p/redis.pid" "redis $p (primary)" ;;
    elasticsearch) cl_kill "$CL_DIR/elasticsearch-c${2:?node 1-3}/run/es.pid" "es-c$2" ;;
    mariadb-primary) cl_kill "$CL_DIR/mariadb-primary/mariadb.pid" "mariadb primary" ;;
    *) die "usage: $0 cluster kill rabbitmq N|redis-primary|elasticsearch N|mariadb-primary" ;;
  esac
}
# The RabbitMQ node (1-3) that leads the most quorum queues whose names start with PREFIX.
cmd_cluster_leader() {
  cl_rabbitmqctl 1 list_queues name leader --formatter json \
    | jq -r --arg p "${1:?usage: cluster leader QUEUE-PREFIX}" '.[] | select(.name | startswith($p)) | .leader' \
    | sort | uniq -c | sort -rn | awk 'NR == 1 { sub(/^rabbit-c/, "", $2); sub(/@.*/, "", $2); print $2 }'
}
# The runbook's promotion of the replica once the primary is gone: apply everything it received,
# stop replicating, take writes.  Then `chatd promote` against it, and chatd pointed at it.
# Only a running SQL thread can apply the relay log: once both replication threads are stopped
# (STOP SLAVE, as `pause-replication` does, an operator, an error), MariaDB discards a GTID
# replica's relay log the next time either thread starts, so what was received and not applied
# is gone from the replica, as if it had lagged by that much; `chatd promote` recovers it from
# the survivors.  Waiting for it then waits for nothing (stop 29's CI: 60 s, then failure).
cmd_cluster_promote() {
  local io_pos applied
  if cl_maria_root replica -e 'SHOW SLAVE STATUS\G' | grep -q 'Slave_SQL_Running: Yes'; then
    cl_maria_root replica -e 'STOP SLAVE IO_THREAD'
    io_pos="$(cl_maria_root replica -e 'SHOW SLAVE STATUS\G' | awk '/Gtid_IO_Pos:/ { print $2 }')"
    [[ -z "$io_pos" ]] || [[ "$(cl_maria_root replica -N -e "SELECT MASTER_GTID_WAIT('$io_pos', 60)")" == 0 ]] \
      || die "cluster mariadb: the replica did not apply its relay log (up to $io_pos) within 60 s"
  else
    log "cluster mariadb: replication was stopped: received up to $(cl_maria_root replica -e 'SHOW SLAVE STATUS\G' | awk '/Gtid_IO_Pos:/ { print $2 }'), what was not applied is not (chatd promote recovers it)"
  fi
  applied="$(cl_maria_root replica -N -e 'SELECT @@gtid_slave_pos')"
  cl_maria_root replica -e 'STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF'
  log "cluster mariadb: replica promoted (applied up to ${applied:-nothing}); it takes writes on $BIND:$CL_MARIADB_REPLICA_PORT"
}
# A replica that lags: replication stopped (the primary goes on alone once its semi-sync wait times out).
cmd_cluster_pause_replication() {
  cl_maria_root replica -e 'STOP SLAVE'
  log "cluster mariadb: replication paused: the replica lags from now on"
}
cmd_cluster_resume_replication() {
  cl_maria_root replica -e 'START SLAVE'
  log "cluster mariadb: replication resumed"
}
# After a promotion: both servers stopped and emptied, and a fresh primary + replica pair started.
cmd_cluster_reset_mariadb() {
  cl_maria_down
  rm -rf "$CL_DIR/mariadb-primary" "$CL_DIR/mariadb-replica"
  cl_maria_up
}
cmd_cluster_env() {
  cat <<EOF
export CHATD_DATABASE_URL=mysql://chatd:chatd@$BIND:$CL_MARIADB_PRIMARY_PORT/chatd
# The GET routes' chats and messages, while the replica keeps up (the primary otherwise).
export CHATD_DATABASE_REPLICA_URL=mysql://chatd:chatd@$BIND:$CL_MARIADB_REPLICA_PORT/chatd
export CHATD_REDIS_URL=redis+sentinel://$BIND:${CL_SENTINEL_PORTS[0]},$BIND:${CL_SENTINEL_PORTS[1]},$BIND:${CL_SENTINEL_PORTS[2]}/chatd/0
export CHATD_AMQP_URL=amqp://chatd:chatd@$BIND:${CL_RABBIT_PORTS[0]}/,amqp://chatd:chatd@$BIND:${CL_RABBIT_PORTS[1]}/,amqp://chatd:chatd@$BIND:${CL_RABBIT_PORTS[2]}/
export CHATD_ELASTICSEARCH_URL=http://$BIND:${CL_ES_PORTS[0]},http://$BIND:${CL_ES_PORTS[1]},http://$BIND:${CL_ES_PORTS[2]}
export CHATD_ELASTICSEARCH_REPLICAS=1
EOF
}
cmd_cluster() {
  case "${1:-}" in
    up) take_lock; cmd_cluster_up ;;
    down) take_lock; cmd_cluster_down ;;
    status) cmd_cluster_status ;;
    env) cmd_cluster_env ;;
    test-env) cmd_cluster_test_env ;;
    kill) shift; cmd_cluster_kill "$@" ;;
    leader) shift; cmd_cluster_leader "$@" ;;
    promote) take_lock; cmd_cluster_promote ;;
    pause-replication) cmd_cluster_pause_replication ;;
    resume-replication) cmd_cluster_resume_replication ;;
    reset-mariadb) take_lock; cmd_cluster_reset_mariadb ;;
    *) die "usage: $0 cluster up|down|status|env|test-env|kill WHAT|leader PREFIX|pause-replication|resume-replication|promote|reset-mariadb" ;;
  esac
}

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit "${1:-2}"; }

# Serialize commands that change state: two overlapping `start`s (parallel
# make, a test's restart racing `make services`) must not launch a server twice.
take_lock() {
  mkdir -p "$SERVICES_DIR"
  exec 9>"$SERVICES_DIR/.lock"
  flock -w 600 9 || die "another services.sh is still running (lock $SERVICES_DIR/.lock)"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    start-one|stop-one|restart-one) [[ $# -eq 1 ]] || usage; check_name "$1" ;;
  esac
  case "$cmd" in
    install|start|stop|restart|up|start-one|stop-one|restart-one) need_root; take_lock ;;
  esac
  case "$cmd" in
    install) cmd_install ;;
    start) cmd_start "${SERVICES[@]}" ;;
    stop) cmd_stop elasticsearch rabbitmq redis mariadb
          # epmd is only there for RabbitMQ; drop it when everything goes down.
          epmd -kill >/dev/null 2>&1 || true ;;
    restart) cmd_stop elasticsearch rabbitmq redis mariadb; cmd_start "${SERVICES[@]}" ;;
    status) cmd_status ;;
    env) cmd_env ;;
    up) cmd_install; cmd_start "${SERVICES[@]}" ;;
    start-one) cmd_start "$1" ;;
    stop-one) cmd_stop "$1" ;;
    restart-one) cmd_stop "$1"; cmd_start "$1" ;;
    cluster) cmd_cluster "$@" ;;
    -h|--help|help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
