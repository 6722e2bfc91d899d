#!/usr/bin/env bash
# Live migration of a MySQL (MariaDB) database behind `tsnet forward`, end to end.
#
# The job (see README.md next to this file): a platform's services are
# configured against a database on a node at port 3308. The database moves to
# another server listening on port 3309. Instead of reconfiguring every
# service, the operator forwards the node's port 3308 to the new server, keeps
# a one-command rollback, and removes the forward when the services have been
# reconfigured at leisure.
#
#                       br-app 10.78.0.1/24              br-db 10.77.0.1/24
#   app 10.78.0.2 ------------------------- node --------------------------- old-db 10.77.0.2  mariadbd :3308
#   (clients, default route via 10.78.0.1)  (the forwarder,                 \- new-db 10.77.0.3  mariadbd :3309
#    configured with 10.78.0.1:3308)         tsnet forward ...)
#
# old-db and new-db have no route back to 10.78.0.0/24: replies reach the app
# only because the forward source-NATs its own flows.
#
# Usage, as root on Debian 12 with Node 20, after `npm ci` in the repository:
#
#   sudo bash examples/mysql-migration/run.sh                  # iptables backend
#   sudo BACKEND=nft bash examples/mysql-migration/run.sh      # nftables backend
#
# Everything runs inside a private network + mount namespace (tsnet's sandbox
# runner, src/sandbox): the machine's own interfaces, routes, sysctls and
# firewall are never touched, and the MariaDB system service is never enabled
# or started. The only change made to the machine itself is installing the
# packages below when they are missing.
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}" # mariadbd, ip, iptables live in sbin

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
BACKEND=${BACKEND:-iptables}
export BACKEND

die() { echo "run.sh: $*" >&2; exit 1; }

case $BACKEND in iptables | nft) ;; *) die "BACKEND must be iptables or nft, not \"$BACKEND\"" ;; esac

# ---------------------------------------------------------------------------
# Outside: install what is missing, then re-execute inside the sandbox.
# ---------------------------------------------------------------------------
if [[ ${1:-} != inner ]]; then
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces, netfilter): run it with sudo"

  missing=()
  command -v mariadbd >/dev/null || missing+=(mariadb-server mariadb-client)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  if [[ $BACKEND == iptables ]]; then command -v iptables-save >/dev/null || missing+=(iptables); fi
  command -v nft >/dev/null || missing+=(nftables)
  if ((${#missing[@]})); then
    echo "run.sh: installing ${missing[*]}"
    # mariadb-server's postinst would start the system service: a policy-rc.d
    # that answers 101 ("action forbidden") stops it. Ours is removed
    # afterwards; one that was already there is left alone.
    created_policy=
    remove_policy() { if [[ -n $created_policy ]]; then rm -f /usr/sbin/policy-rc.d; created_policy=; fi; }
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      created_policy=1
    fi
    trap remove_policy EXIT
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    remove_policy
    trap - EXIT
  fi

  [[ -f $REPO/dist/src/cli/main.js ]] || (cd "$REPO" && npm run build) || die "cannot build tsnet: run npm ci in $REPO first"

  # The sandbox: unshare --net --mount --propagation private, a tmpfs on
  # /run/netns, its own /sys, lo up; then `bash run.sh inner` in there.
  exec node "$REPO/dist/src/sandbox/run.js" bash "$SELF" inner
fi

# ---------------------------------------------------------------------------
# Inside the sandbox.
# ---------------------------------------------------------------------------
[[ ${TSNET_SANDBOX:-} == 1 ]] || die "'inner' runs only inside the tsnet sandbox; run the script without arguments"

T=$(mktemp -d /tmp/tsnet-mysql-migration.XXXXXX)
STATE="$T/state"              # tsnet's desired NAT state (persisted forwards)
PW=app-secret                 # the app's MariaDB password (demo only)
pids=()                       # background processes we started, stopped by pid on exit
answer=                       # the worker's last answer

cleanup() {
  local rc=$?
  set +e
  exec 7>&- 2>/dev/null
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null
  done
  if ((rc != 0)); then
    for log in "$T"/*/console.log "$T"/*/error.log; do
      [[ -f $log ]] && { echo "--- $log (last lines)"; tail -n 15 "$log"; }
    done
  fi
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT

# The CLI, always with this run's backend and state directory. `show` prints
# a command (as an operator would type it) and runs it.
tsnet() { node "$REPO/dist/src/cli/main.js" --backend "$BACKEND" --state-dir "$STATE" "$@"; }
show() { printf '$ %s\n' "$*"; "$@"; }
step() { printf '\n=== %s ===\n' "$*"; }

# The app's configured database address never changes: the node, port 3308.
app_sql() {
  printf '$ ip netns exec app mariadb -h 10.78.0.1 -P 3308 -u app shop -e "%s"\n' "$1"
  ip netns exec app mariadb --no-defaults --protocol=tcp --connect-timeout=5 \
    -h 10.78.0.1 -P 3308 -u app --password="$PW" --table shop -e "$1"
}
# The DBA's view of each server, through its local socket (not through the network).
db_sql() { # old|new SQL
  mariadb --no-defaults --socket="$T/$1/sock" -u root --batch --skip-column-names shop -e "$2"
}

echo "backend: $BACKEND    state dir: $STATE"
echo "tsnet is: node $REPO/dist/src/cli/main.js --backend $BACKEND --state-dir $STATE"

step "0. Topology: namespaces old-db, new-db, node, app, built with the tsnet CLI"
for ns in old-db new-db node app; do show tsnet netns add "$ns"; done
# attach brings lo up in the namespaces it attaches; node's own lo is needed for its 127.0.0.1 clients.
show tsnet --netns node link set lo --up
show tsnet --netns node bridge add br-db --address 10.77.0.1/24
show tsnet --netns node bridge add br-app --address 10.78.0.1/24
show tsnet --netns node attach old-db --bridge br-db --address 10.77.0.2/24
show tsnet --netns node attach new-db --bridge br-db --address 10.77.0.3/24
show tsnet --netns node attach app --bridge br-app --address 10.78.0.2/24
# The databases must not be able to answer the app directly: no default route.
show tsnet --netns old-db route del default
show tsnet --netns new-db route del default
show tsnet --netns node bridge ls
show tsnet --netns new-db route ls

step "0b. Two MariaDB servers: old-db on 10.77.0.2:3308, new-db on 10.77.0.3:3309"
start_db() { # old|new NAMESPACE IP PORT SERVER_ID
  local d="$T/$1"
  mkdir -p "$d"
  mariadb-install-db --no-defaults --user=root --datadir="$d/data" \
    --auth-root-authentication-method=socket --skip-test-db >"$d/install.log" 2>&1 ||
    { cat "$d/install.log"; die "mariadb-install-db for $1 failed"; }
  echo "\$ ip netns exec $2 mariadbd --user=root --datadir=$d/data --bind-address=$3 --port=$4 ... &"
  # --no-defaults: nothing from /etc/mysql (its socket, pid file, bind address) applies.
  # --skip-name-resolve: no reverse DNS for clients (there is no DNS in here).
  ip netns exec "$2" mariadbd --no-defaults --user=root --datadir="$d/data" \
    --socket="$d/sock" --pid-file="$d/pid" --log-error="$d/error.log" \
    --bind-address="$3" --port="$4" --server-id="$5" --skip-name-resolve \
    --innodb-buffer-pool-size=32M >"$d/console.log" 2>&1 &
  pids+=($!)
  local pid=$! i
  for ((i = 0; i < 120; i++)); do
    mariadb-admin --no-defaults --socket="$d/sock" -u root ping >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "mariadbd ($1) exited during startup"
    sleep 0.5
  done
  mariadb-admin --no-defaults --socket="$d/sock" -u root ping >/dev/null 2>&1 || die "mariadbd ($1) did not start"
  # What the DBA provisions on both servers: the database and the app's user, from any host.
  mariadb --no-defaults --socket="$d/sock" -u root -e "
    CREATE DATABASE shop;
    CREATE USER 'app'@'%' IDENTIFIED BY '$PW';
    GRANT ALL ON shop.* TO 'app'@'%';"
  echo "mariadbd ($1) pid $pid: $(mariadb --no-defaults --socket="$d/sock" -u root -N -e 'SELECT VERSION()') listening on $3:$4"
}
start_db old old-db 10.77.0.2 3308 1
start_db new new-db 10.77.0.3 3309 2

step "1. Before the migration: a plain forward node:3308 -> old-db:3308; the app uses 10.78.0.1:3308"
show tsnet --netns node forward 10.77.0.2 3308 3308 --name mysql
app_sql "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(40) NOT NULL, written_on INT NOT NULL)"
app_sql "INSERT INTO orders (item, written_on) VALUES ('apples', @@port), ('pears', @@port), ('plums', @@port)"
app_sql "SELECT @@port AS server_port, @@server_id AS server_id, USER() AS seen_as, COUNT(*) AS orders FROM orders"
echo "(seen_as: the database sees the node's address 10.77.0.1, the forward's source NAT)"

echo
echo "Many connections at once (a hand-made SNAT to a fixed source port allows one):"
echo "\$ 20 x ip netns exec app mariadb -h 10.78.0.1 -P 3308 -e 'SELECT SLEEP(1)' &"
cpids=()
for i in $(seq 20); do
  ip netns exec app mariadb --no-defaults --protocol=tcp --connect-timeout=5 -h 10.78.0.1 -P 3308 \
    -u app --password="$PW" -N -B shop -e "SELECT SLEEP(1)" >/dev/null 2>"$T/concurrent.$i.err" &
  cpids+=($!)
done
ok=0
for p in "${cpids[@]}"; do wait "$p" && ok=$((ok + 1)); done
echo "$ok of 20 concurrent connections succeeded"
((ok == 20)) || { cat "$T"/concurrent.*.err; die "concurrent connections failed"; }

echo
echo "A long-lived connection of the app (a worker holding one session open):"
mkfifo "$T/worker.in"
# --force: keep reading queries after an error, as a long-running service would.
ip netns exec app mariadb --no-defaults --protocol=tcp -h 10.78.0.1 -P 3308 -u app --password="$PW" \
  --force --unbuffered --batch --skip-column-names shop <"$T/worker.in" >>"$T/worker.out" 2>&1 &
pids+=($!)
exec 7>"$T/worker.in"
worker() { # TAG [reconnect]: one query on the worker's session (after a reconnect); prints what it answered
  if [[ ${2:-} == reconnect ]]; then
    # What a driver's pool does after "Lost connection": open a new connection
    # (the mariadb client's own --reconnect is off in batch mode).
    echo 'connect' >&7
    echo "worker> connect"
  fi
  echo "SELECT '$1', @@port, @@server_id;" >&7
  local i
  for ((i = 0; i < 40; i++)); do
    grep -q -e "^$1" -e "^ERROR" "$T/worker.out" && break
    sleep 0.25
  done
  echo "worker> SELECT '$1', @@port, @@server_id;"
  answer=$(sed -n "/^$1\b/p; /^ERROR/p" "$T/worker.out")
  printf '%s\n' "$answer" | sed 's/^/worker< /'
  : >"$T/worker.out"
}
expect_worker() { # REGEX MESSAGE: checks the worker's last answer
  [[ $answer =~ $1 ]] || die "worker: $2 (it answered: ${answer:-nothing})"
}
worker before-migration
expect_worker $'^before-migration\t3308\t1$' "expected old-db (port 3308)"

step "2. Copy the data to new-db (mariadb-dump | mariadb)"
# A real migration stops writes for this moment, or uses replication; the
# demo's app writes nothing while the dump runs.
echo "\$ ip netns exec old-db mariadb-dump --single-transaction shop | ip netns exec new-db mariadb shop"
ip netns exec old-db mariadb-dump --no-defaults --socket="$T/old/sock" -u root --single-transaction shop |
  ip netns exec new-db mariadb --no-defaults --socket="$T/new/sock" -u root shop
echo "old-db: $(db_sql old 'SELECT COUNT(*) FROM orders') orders; new-db: $(db_sql new 'SELECT COUNT(*) FROM orders') orders"

step "3. Cut-over: retarget the forward to new-db:3309 (dry run first)"
show tsnet --netns node forward 10.77.0.3 3308 3309 --name mysql --cut-over --dry-run
echo
show tsnet --netns node forward 10.77.0.3 3308 3309 --name mysql --cut-over
show tsnet --netns node forward ls

step "4. The app, still configured with 10.78.0.1:3308, now uses new-db"
app_sql "SELECT @@port AS server_port, @@server_id AS server_id, USER() AS seen_as, COUNT(*) AS orders FROM orders"
port=$(ip netns exec app mariadb --no-defaults --protocol=tcp -h 10.78.0.1 -P 3308 -u app --password="$PW" -N -B shop -e 'SELECT @@port')
[[ $port == 3309 ]] || die "after the cut-over the app reached port $port, not new-db's 3309"
app_sql "INSERT INTO orders (item, written_on) VALUES ('cherries', @@port)"
app_sql "SELECT id, item, written_on FROM orders"
echo "The row written after the cut-over is only on new-db:"
echo "  old-db: $(db_sql old "SELECT COUNT(*) FROM orders WHERE item='cherries'") cherries rows; new-db: $(db_sql new "SELECT COUNT(*) FROM orders WHERE item='cherries'") cherries rows"
[[ $(db_sql new "SELECT COUNT(*) FROM orders WHERE item='cherries'") == 1 && $(db_sql old "SELECT COUNT(*) FROM orders WHERE item='cherries'") == 0 ]] ||
  die "the row written after the cut-over is not (only) on new-db"

echo
echo "The worker's connection, opened to old-db before the cut-over, was cut (--cut-over); it reconnects to new-db:"
worker after-cut-over
expect_worker '^ERROR 2013' "its connection to old-db should have been cut"
worker after-reconnect reconnect
expect_worker $'^after-reconnect\t3309\t2$' "expected new-db (port 3309) after reconnecting"

echo
echo "A client on the node itself, through 127.0.0.1 (nat OUTPUT + route_localnet, guarded):"
echo "\$ ip netns exec node mariadb -h 127.0.0.1 -P 3308 -u app shop -e 'SELECT @@port'"
ip netns exec node mariadb --no-defaults --protocol=tcp --connect-timeout=5 -h 127.0.0.1 -P 3308 \
  -u app --password="$PW" -N -B shop -e 'SELECT @@port'

echo
echo "Only the forward's flows are source-NATed: the app going to new-db directly gets no answer:"
echo "\$ ip netns exec app mariadb -h 10.77.0.3 -P 3309 --connect-timeout=2 ..."
direct=$(ip netns exec app mariadb --no-defaults --protocol=tcp --connect-timeout=2 -h 10.77.0.3 -P 3309 \
  -u app --password="$PW" -N -B shop -e 'SELECT 1' 2>&1 || true)
echo "  $direct   (110: timed out; new-db's SYN-ACK has no route back to 10.78.0.2)"
[[ $direct != 1 ]] || die "a direct connection to new-db worked: something other than the forward is source-NATing"

step "5. Rollback: the forward goes back to old-db:3308, one command"
show tsnet --netns node forward 10.77.0.2 3308 3308 --name mysql --cut-over
show tsnet --netns node forward ls
app_sql "SELECT @@port AS server_port, @@server_id AS server_id, COUNT(*) AS orders FROM orders"
port=$(ip netns exec app mariadb --no-defaults --protocol=tcp -h 10.78.0.1 -P 3308 -u app --password="$PW" -N -B shop -e 'SELECT @@port')
[[ $port == 3308 ]] || die "after the rollback the app reached port $port, not old-db's 3308"
echo "(writes made on new-db in between, the 'cherries' row, are not on old-db: a real rollback must reconcile them)"
worker after-rollback
expect_worker '^ERROR 2013' "its connection to new-db should have been cut"
worker after-rollback-reconnect reconnect
expect_worker $'^after-rollback-reconnect\t3308\t1$' "expected old-db (port 3308) after reconnecting"

step "6. Remove the forward: its rules and sysctl changes go, nothing else"
exec 7>&- # the worker's session ends
show tsnet --netns node forward rm mysql
show tsnet --netns node forward ls
echo "\$ ip netns exec node iptables-save | grep -c TSNET"
n_ipt=$(ip netns exec node iptables-save 2>/dev/null | grep -c TSNET || true)
echo "$n_ipt"
echo "\$ ip netns exec node nft list ruleset | grep -ci tsnet"
n_nft=$(ip netns exec node nft list ruleset 2>/dev/null | grep -ci tsnet || true)
echo "$n_nft"
echo "\$ ip netns exec node sysctl net.ipv4.ip_forward net.ipv4.conf.br-db.route_localnet"
ip netns exec node sysctl net.ipv4.ip_forward net.ipv4.conf.br-db.route_localnet
[[ $n_ipt == 0 && $n_nft == 0 ]] || die "tsnet rules are left after forward rm"
echo "The app's old address no longer answers (nothing listens on the node's port 3308 itself):"
echo "\$ ip netns exec app bash -c 'exec 3<>/dev/tcp/10.78.0.1/3308'"
if ip netns exec app bash -c 'exec 3<>/dev/tcp/10.78.0.1/3308' 2>&1 | sed 's/^/  /'; then :; fi
ip netns exec app bash -c 'exec 3<>/dev/tcp/10.78.0.1/3308' 2>/dev/null && die "something still answers on 10.78.0.1:3308"

step "Done: every step worked (backend $BACKEND)"
