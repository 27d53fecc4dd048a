#!/usr/bin/env bash
# Proves docker-compose.yml with real containers: builds every image on this machine (nothing
# needs pulling), starts the cluster with three gateways behind HAProxy, runs the black-box test
# deploy/compose_test.py against the load balancer's port on 127.0.0.1 (spread, login, events
# across gateways, `user list`, `session cmd`, Prometheus (the `observability` profile) scraping
# every process, then faults: docker kill of a gateway, Redis
# restart, scale to 4 and back to 2, docker stop of a gateway) and always tears it all down.
#
#   cargo build --release -p switchboard && deploy/compose-test.sh
#
# Needs root (or a running Docker engine and its tools already installed). Missing tools are
# installed with apt-get (docker.io, docker-compose, debootstrap); a Docker engine that is not
# running is started here and stopped again at the end.
#
# Base images: when debian:bookworm-slim, redis:7 or haproxy:2.8 is not in the engine, a stand-in
# is made offline from Debian's packages with debootstrap, tagged with that name and saved as a
# tarball in SWITCHBOARD_IMAGE_CACHE (default ~/.cache/switchboard/images), so later runs only
# `docker load` it. SWITCHBOARD_PULL_IMAGES=1 pulls the real images instead.
#
# Variables: SWITCHBOARD_IMAGE_CACHE, SWITCHBOARD_PULL_IMAGES, SWITCHBOARD_TEST_PORT (host port
# of the load balancer, default: a free one), SWITCHBOARD_DEBIAN_MIRROR (for debootstrap),
# SWITCHBOARD_COMPOSE (default: docker-compose, e.g. "docker compose").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
started=$SECONDS

PROJECT=switchboard-compose-test
CACHE="${SWITCHBOARD_IMAGE_CACHE:-$HOME/.cache/switchboard/images}"
BIN="$ROOT/target/release/switchboard"
# Bump when the base image recipes below change: older tarballs are then rebuilt.
RECIPE=1

step() { printf '== %s (%ss)\n' "$*" "$((SECONDS - started))"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Compose reads variables from the shell before the env file: keep the test's own values.
for var in $(compgen -e); do
    case "$var" in
        SWITCHBOARD_IMAGE_CACHE | SWITCHBOARD_PULL_IMAGES | SWITCHBOARD_TEST_PORT | \
            SWITCHBOARD_DEBIAN_MIRROR | SWITCHBOARD_COMPOSE) ;;
        SWITCHBOARD_* | COMPOSE_*) unset "$var" ;;
    esac
done

state="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-compose.XXXXXX")"
dockerd_pid=""
cluster_started=""
result=FAIL
passed_line=""

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

finish() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$cluster_started" ]; then
        step "teardown: ${COMPOSE_CMD[*]} down -v --remove-orphans"
        if [ "$rc" -ne 0 ]; then
            echo "-- container logs (last 30 lines each)"
            timeout 60 "${COMPOSE[@]}" logs --no-color --tail=30 2>&1 | sed 's/^/   /' || true
        fi
        timeout 120 "${COMPOSE[@]}" down -v --remove-orphans --timeout 5 >"$state/down.log" 2>&1 ||
            { cat "$state/down.log"; echo "teardown failed" >&2; }
    fi
    if [ -n "$dockerd_pid" ]; then
        step "stopping the Docker engine started here (pid $dockerd_pid)"
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$dockerd_pid" 2>/dev/null && kill -9 "$dockerd_pid" 2>/dev/null || true
    fi
    rm -rf "$state"
    [ "$rc" -eq 0 ] && result=PASS
    [ -n "$passed_line" ] && echo "$passed_line"
    echo "== compose test: $result in $((SECONDS - started))s"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- tools -----------------------------------------------------------------------------------
step "tools"
[ -x "$BIN" ] || fail "$BIN is missing: build it first with 'cargo build --release -p switchboard'"
need_apt=()
command -v docker >/dev/null 2>&1 || need_apt+=(docker.io)
command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || need_apt+=(docker.io)
if [ -z "${SWITCHBOARD_COMPOSE:-}" ]; then
    command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
fi
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    if ! { timeout 300 $sudo_cmd apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive timeout 600 $sudo_cmd apt-get install -y -qq "${need_apt[@]}"; } \
        >"$state/apt.log" 2>&1; then
        tail -20 "$state/apt.log"
        fail "apt-get install ${need_apt[*]} failed"
    fi
fi
if ! python3 -c 'import websockets' 2>/dev/null; then
    echo "installing the Python websockets package"
    timeout 300 python3 -m pip install -q websockets 2>/dev/null ||
        timeout 300 python3 -m pip install -q --user --break-system-packages websockets 2>/dev/null ||
        DEBIAN_FRONTEND=noninteractive timeout 300 $sudo_cmd apt-get install -y -qq python3-websockets \
            >"$state/apt.log" 2>&1
    python3 -c 'import websockets' || fail "the Python websockets package could not be installed"
fi
read -r -a COMPOSE_CMD <<<"${SWITCHBOARD_COMPOSE:-docker-compose}"
echo "$("${COMPOSE_CMD[@]}" version 2>/dev/null | head -1); docker $(docker --version | cut -d' ' -f3-)"

# --- engine ----------------------------------------------------------------------------------
step "docker engine"
if timeout 20 docker info >/dev/null 2>&1; then
    echo "using the running engine"
else
    command -v dockerd >/dev/null 2>&1 || fail "no Docker engine running and no dockerd to start"
    [ "$(id -u)" -eq 0 ] || fail "no Docker engine running; start it (or run this as root)"
    log="${TMPDIR:-/tmp}/switchboard-dockerd.log"
    echo "starting dockerd (log: $log)"
    dockerd >"$log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 120); do
        timeout 5 docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$log"; fail "dockerd exited"; }
        sleep 0.5
    done
    timeout 5 docker info >/dev/null 2>&1 || { tail -20 "$log"; fail "dockerd did not answer in 60s"; }
fi
echo "engine $(docker version --format '{{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"

# --- base images -----------------------------------------------------------------------------
# Stand-ins for the official images, made from Debian bookworm packages. Each behaves like its
# official namesake as far as docker-compose.yml and deploy/Dockerfile use it.
redis_entrypoint() {
    cat <<'EOF'
#!/bin/sh
# Like the official redis image: protected mode off (the port is only reachable on the
# container network unless published), and the server runs as the redis user.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
    shift
    if [ -n "${1:-}" ] && [ "${1#-}" = "$1" ]; then
        conf=$1
        shift
        set -- redis-server "$conf" --protected-mode no "$@"
    else
        set -- redis-server --protected-mode no "$@"
    fi
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data 2>/dev/null || true
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
EOF
}

haproxy_entrypoint() {
    cat <<'EOF'
#!/bin/sh
# Like the official haproxy image: master-worker mode in the foreground.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
EOF
}

make_base_image() { # name include-packages
    local name=$1 include=$2 dir="$state/rootfs-${1//[:\/]/-}"
    local -a args=(--variant=minbase "--cache-dir=$CACHE/debs")
    [ -n "$include" ] && args+=("--include=$include")
    mkdir -p "$CACHE/debs"
    echo "debootstrap bookworm${include:+ with $include} for $name"
    if ! timeout 600 debootstrap "${args[@]}" bookworm "$dir" ${SWITCHBOARD_DEBIAN_MIRROR:-} \
        >"$state/debootstrap.log" 2>&1; then
        tail -20 "$state/debootstrap.log"
        fail "debootstrap for $name failed"
    fi
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/etc/hostname
    local extra=""
    case "$name" in
        debian:*)
            extra='CMD ["bash"]'
            ;;
        redis:*)
            mkdir -p "$dir/data"
            chroot "$dir" chown redis:redis /data
            redis_entrypoint >"$dir/usr/local/bin/docker-entrypoint.sh"
            chmod 755 "$dir/usr/local/bin/docker-entrypoint.sh"
            extra='WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]'
            ;;
        haproxy:*)
            mkdir -p "$dir/usr/local/etc/haproxy" "$dir/var/lib/haproxy"
            cp "$dir/etc/haproxy/haproxy.cfg" "$dir/usr/local/etc/haproxy/haproxy.cfg"
            chroot "$dir" chown haproxy:haproxy /var/lib/haproxy
            haproxy_entrypoint >"$dir/usr/local/bin/docker-entrypoint.sh"
            chmod 755 "$dir/usr/local/bin/docker-entrypoint.sh"
            extra='USER haproxy
WORKDIR /var/lib/haproxy
STOPSIGNAL SIGUSR1
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
            ;;
    esac
    # `docker import --change` cannot set STOPSIGNAL: the metadata comes from a small build
    # on top of the imported file system instead.
    tar --numeric-owner -C "$dir" -c . | timeout 300 docker import - switchboard-rootfs:tmp >/dev/null
    printf 'FROM switchboard-rootfs:tmp\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nLABEL switchboard.base-image=debootstrap-bookworm-r%s\n%s\n' \
        "$RECIPE" "$extra" | timeout 120 docker build -q -t "$name" - >"$state/base-build.log" 2>&1 ||
        { cat "$state/base-build.log"; fail "docker build of $name failed"; }
    docker rmi switchboard-rootfs:tmp >/dev/null
    rm -rf "$dir"
}

step "base images (cache: $CACHE)"
mkdir -p "$CACHE"
for spec in "debian:bookworm-slim|" "redis:7|redis-server" "haproxy:2.8|haproxy"; do
    name=${spec%%|*}
    include=${spec#*|}
    tarball="$CACHE/${name//[:\/]/_}.r$RECIPE.tar"
    t0=$SECONDS
    label=absent
    if docker image inspect "$name" >/dev/null 2>&1; then
        label=$(docker image inspect -f '{{index .Config.Labels "switchboard.base-image"}}' "$name")
    fi
    case "$label" in
        absent | "debootstrap-bookworm-r$RECIPE") ;;
        debootstrap-bookworm-*) # a stand-in made by an older recipe
            docker rmi "$name" >/dev/null
            label=absent
            ;;
    esac
    if [ "$label" != absent ]; then
        how="in the engine"
    elif [ "${SWITCHBOARD_PULL_IMAGES:-0}" = 1 ]; then
        timeout 600 docker pull -q "$name" >/dev/null || fail "docker pull $name failed"
        how="pulled"
    elif [ -s "$tarball" ]; then
        timeout 300 docker load -q -i "$tarball" >/dev/null || fail "docker load $tarball failed"
        how="loaded from $tarball"
    else
        make_base_image "$name" "$include"
        timeout 300 docker save -o "$tarball.tmp" "$name" && mv "$tarball.tmp" "$tarball"
        how="built with debootstrap, saved to $tarball"
    fi
    echo "$name: $how ($((SECONDS - t0))s)"
done

# --- switchboard image -----------------------------------------------------------------------
step "switchboard image: docker build -f deploy/Dockerfile --target prebuilt -t switchboard:latest ."
"$BIN" --version
if ! timeout 300 docker build -q -f deploy/Dockerfile --target prebuilt -t switchboard:latest . \
    >"$state/build.log" 2>&1; then
    cat "$state/build.log"
    fail "docker build failed"
fi
# Debian's prometheus package on the base image above (apt-get reaches Debian's mirror once;
# later runs use the build cache).
step "prometheus image: docker build -t switchboard-prometheus:latest deploy/observability"
if ! timeout 600 docker build -q -t switchboard-prometheus:latest deploy/observability \
    >"$state/build.log" 2>&1; then
    cat "$state/build.log"
    fail "docker build of the prometheus image failed"
fi

# --- cluster ---------------------------------------------------------------------------------
if [ -n "${SWITCHBOARD_TEST_PORT:-}" ]; then
    port=$SWITCHBOARD_TEST_PORT
else
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
prometheus_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password="test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$state/compose.env" <<EOF
SWITCHBOARD_ADMIN_PASSWORD=$password
SWITCHBOARD_INTERNAL_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
SWITCHBOARD_PUBLISH_IP=127.0.0.1
SWITCHBOARD_PORT=$port
SWITCHBOARD_PROMETHEUS_PORT=$prometheus_port
SWITCHBOARD_HEARTBEAT_INTERVAL=2s
SWITCHBOARD_GATEWAY_TIMEOUT=6s
EOF
# run_deployment LABEL CONTAINERS STEPS EXTRA_FILE: starts the deployment (docker-compose.yml, and
# EXTRA_FILE when not empty) with three gateways, waits until its CONTAINERS long-running
# containers are healthy, checks their limits, runs compose_test.py's STEPS ("all" or a list)
# and takes it down again.
run_deployment() {
    local label=$1 expected=$2 steps=$3 extra=$4
    COMPOSE=("${COMPOSE_CMD[@]}" -p "$PROJECT" --env-file "$state/compose.env" -f "$ROOT/docker-compose.yml")
    if [ -n "$extra" ]; then
        COMPOSE+=(-f "$ROOT/$extra")
    else
        # The `observability` profile too: Prometheus must find and scrape every process.
        COMPOSE+=(--profile observability)
    fi

    step "$label: ${COMPOSE_CMD[*]} -p $PROJECT up -d --scale gateway=3 (ws://127.0.0.1:$port/api/ws)"
    cluster_started=1
    timeout 120 "${COMPOSE[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    if ! timeout 300 "${COMPOSE[@]}" up -d --scale gateway=3 >"$state/up.log" 2>&1; then
        cat "$state/up.log"
        fail "compose up failed"
    fi

    step "$label: waiting for every container to be healthy"
    local healthy="" broken=0 states
    for _ in $(seq 1 120); do
        # A one-shot container (the Redis Cluster's `redis-cluster`) must have exited with 0.
        states=$(docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
            --format '{{.Label "com.docker.compose.service"}} {{.State}} {{.Status}}' |
            grep -v '^redis-cluster exited Exited (0)' || true)
        if [ "$(grep -c . <<<"$states")" -eq "$expected" ] && ! grep -qv '(healthy)' <<<"$states"; then
            healthy=1
            break
        fi
        # A container that keeps restarting or exits will not get healthy: stop waiting soon.
        if grep -qE ' (restarting|exited|dead) ' <<<"$states"; then broken=$((broken + 1)); else broken=0; fi
        [ "$broken" -lt 15 ] || break
        sleep 1
    done
    timeout 60 "${COMPOSE[@]}" ps
    [ -n "$healthy" ] || fail "$label did not become healthy"

    step "$label: limits, restart policies, users"
    local limits_ok=1 id cname cpus mem restart uid
    for id in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
        read -r cname cpus mem restart <<<"$(docker inspect -f \
            '{{.Name}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}}' "$id")"
        uid=$(timeout 20 docker exec "$id" id -u)
        printf '   %-38s cpus=%s memory=%sMiB restart=%s uid=%s\n' \
            "${cname#/}" "$(awk "BEGIN { print $cpus / 1e9 }")" "$((mem / 1048576))" "$restart" "$uid"
        { [ "$cpus" -gt 0 ] && [ "$mem" -gt 0 ] && [ "$restart" = unless-stopped ]; } || limits_ok=""
        case "$cname" in *_gateway_* | *-gateway-* | *_auth_* | *-auth-* | *_registry_* | *-registry-* | *_bus_* | *-bus-*)
            [ "$uid" = 10001 ] || limits_ok="" ;;
        esac
    done
    [ -n "$limits_ok" ] || fail "a container lacks its limits, its restart policy or its non-root user"

    step "$label: black-box test: deploy/compose_test.py against ws://127.0.0.1:$port/api/ws"
    set +e
    timeout 480 python3 -u deploy/compose_test.py \
        --url "ws://127.0.0.1:$port/api/ws" --password "$password" --project "$PROJECT" \
        --prometheus "http://127.0.0.1:$prometheus_port" --steps "$steps" \
        --redis-service "$([ -n "$extra" ] && echo redis-2 || echo redis)" \
        --compose "$(printf '%q ' "${COMPOSE[@]}")" 2>&1 | tee "$state/test.log" | grep -v '^compose: [0-9]* passed'  # printed last
    local test_rc=${PIPESTATUS[0]}
    set -e
    local line
    line=$(grep -E '^compose: [0-9]+ passed, [0-9]+ failed$' "$state/test.log" | tail -1 || true)
    passed_line="${passed_line:+$passed_line; }$label: ${line#compose: }"
    [ "$test_rc" -eq 0 ] || fail "$label: the black-box test failed (exit $test_rc)"

    step "$label: teardown"
    timeout 120 "${COMPOSE[@]}" down -v --remove-orphans --timeout 5 >"$state/down.log" 2>&1 ||
        { cat "$state/down.log"; fail "teardown failed"; }
    cluster_started=""
}

# One Redis: every step, Prometheus included (9 containers: redis, auth, registry, bus, three
# gateways, lb, prometheus).
run_deployment "one Redis" 9 all ""
# A 3-master Redis Cluster (11 containers and the one-shot redis-cluster), once: the fault is a
# restart of one of its masters.
run_deployment "Redis Cluster" 11 "spread events user_list session_cmd kill redis" deploy/redis-cluster.yml
