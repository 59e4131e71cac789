#!/usr/bin/env bash
# slicenet end to end on kind: 1 hub + 3 member clusters, installed with `slicectl install`,
# joined with `slicectl join`, one SliceConfig across the three, and pods in each cluster
# pinging each other's slice0 addresses. Needs Docker, kind and kubectl; see README.md.
#
#   e2e/kind/run.sh            # build, run, tear down
#   KEEP=1 e2e/kind/run.sh     # leave the clusters running
#   e2e/kind/run.sh down       # remove the clusters of an earlier KEEP=1 run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${PREFIX:-slicenet}
IMAGE=${IMAGE:-slicenet:e2e}
KEEP=${KEEP:-0}
TIMEOUT=${TIMEOUT:-300}
MEMBERS=(c1 c2 c3)
HUB="$PREFIX-hub"
SLICE=blue
NAMESPACE=demo
WORK=$(mktemp -d)

log() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed (see e2e/kind/README.md)"; }
kc() { local cluster=$1; shift; kubectl --context "kind-$cluster" "$@"; }

clusters() { printf '%s\n' "$HUB"; for m in "${MEMBERS[@]}"; do printf '%s\n' "$PREFIX-$m"; done; }

down() {
    local c
    while read -r c; do
        kind delete cluster --name "$c" >/dev/null 2>&1 || true
    done < <(clusters)
}

cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        log "failed (exit $rc): slicenet pods and events"
        while read -r c; do
            kc "$c" get pods -A -o wide 2>/dev/null | grep -E 'slicenet|demo' >&2 || true
            for ns in slicenet-system slicenet-node; do
                kc "$c" -n "$ns" logs --all-containers --tail=30 -l app.kubernetes.io/part-of=slicenet \
                    --prefix 2>/dev/null >&2 || true
            done
        done < <(clusters)
    fi
    if [ "$KEEP" = 1 ]; then
        log "KEEP=1: clusters left running; remove them with: $0 down"
    else
        log "tearing down"
        down
    fi
    rm -rf "$WORK"
}

# Runs "$@" until it succeeds or TIMEOUT seconds pass.
retry() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s: $*"
        sleep 2
    done
}

# Conditions for retry: each reads the cluster again on every call.
namespace_joined() {
    [ "$(kc "$PREFIX-$1" get ns "$NAMESPACE" -o jsonpath='{.metadata.labels.slicenet\.io/slice}' 2>/dev/null)" = "$SLICE" ]
}
no_workerslices() {
    [ -z "$(kc "$HUB" get workerslices -A -o name 2>/dev/null)" ]
}

if [ "${1:-}" = down ]; then
    down
    exit 0
fi

for tool in docker kind kubectl cargo; do need "$tool"; done
trap cleanup EXIT

log "building the image $IMAGE and slicectl"
docker build -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT"
cargo build --manifest-path "$ROOT/Cargo.toml" -p slicectl
SLICECTL=${SLICECTL:-$ROOT/target/debug/slicectl}
[ -x "$SLICECTL" ] || fail "no slicectl at $SLICECTL (set SLICECTL or CARGO_TARGET_DIR)"

log "creating clusters: $(clusters | tr '\n' ' ')"
# Members get two nodes each, so that slices cross nodes (VXLAN) as well as clusters. Every
# member uses kind's default pod CIDR 10.244.0.0/16: overlapping on purpose.
cat >"$WORK/member.yaml" <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
KIND
kind create cluster --name "$HUB" --wait 120s
for m in "${MEMBERS[@]}"; do
    kind create cluster --name "$PREFIX-$m" --config "$WORK/member.yaml" --wait 120s
done
while read -r c; do
    kind load docker-image "$IMAGE" --name "$c"
done < <(clusters)

log "installing the hub"
"$SLICECTL" install hub --image "$IMAGE" >"$WORK/hub.yaml"
kc "$HUB" apply --server-side -f "$WORK/hub.yaml"
kc "$HUB" wait --for=condition=Established crd --all --timeout="${TIMEOUT}s"
kc "$HUB" -n slicenet-system rollout status deploy/slicenet-hub --timeout="${TIMEOUT}s"
kc "$HUB" -n slicenet-system rollout status deploy/slicenet-webhook --timeout="${TIMEOUT}s"

# The hub's API server as the members' pods reach it: kind's clusters share the Docker network
# "kind", where the hub's control plane answers at its container name.
HUB_SERVER=$(kind get kubeconfig --internal --name "$HUB" | sed -n 's/^ *server: *//p' | head -n1)
[ -n "$HUB_SERVER" ] || fail "cannot find the hub's internal server address"

for m in "${MEMBERS[@]}"; do
    log "joining $m"
    "$SLICECTL" join --cluster "$m" --pod-cidr 10.244.0.0/16 --service-cidr 10.96.0.0/16 \
        | kc "$HUB" apply -f -
    "$SLICECTL" install worker-hub-access --cluster "$m" | kc "$HUB" apply -f -

    # The worker's hub kubeconfig: the hub's CA (from the admin kubeconfig) and a token bound
    # in time for the worker's ServiceAccount, which the worker renews itself.
    token_ns="slicenet-cluster-$m"
    kind get kubeconfig --name "$HUB" | sed -n 's/^ *certificate-authority-data: *//p' | head -n1 \
        | base64 -d >"$WORK/$m-ca.crt"
    token=$(kc "$HUB" -n "$token_ns" create token slicenet-worker --duration=720h)
    hubcfg="$WORK/$m-hub.kubeconfig"
    kubectl config --kubeconfig "$hubcfg" set-cluster hub --server "$HUB_SERVER" \
        --certificate-authority "$WORK/$m-ca.crt" --embed-certs=true >/dev/null
    kubectl config --kubeconfig "$hubcfg" set-credentials "slicenet-worker-$m" --token "$token" >/dev/null
    kubectl config --kubeconfig "$hubcfg" set-context hub --cluster hub --user "slicenet-worker-$m" >/dev/null
    kubectl config --kubeconfig "$hubcfg" use-context hub >/dev/null

    log "installing the worker in $m"
    "$SLICECTL" install worker --cluster "$m" --hub-kubeconfig "$hubcfg" --image "$IMAGE" >"$WORK/$m.yaml"
    kc "$PREFIX-$m" apply --server-side -f "$WORK/$m.yaml"
    kc "$PREFIX-$m" -n slicenet-system rollout status deploy/slicenet-worker --timeout="${TIMEOUT}s"
    kc "$PREFIX-$m" -n slicenet-node rollout status ds/slicenet-node-agent --timeout="${TIMEOUT}s"
    kc "$PREFIX-$m" -n slicenet-system rollout status deploy/slicenet-webhook --timeout="${TIMEOUT}s"
    kc "$PREFIX-$m" create namespace "$NAMESPACE" --dry-run=client -o yaml | kc "$PREFIX-$m" apply -f -
    kc "$PREFIX-$m" create namespace outsider --dry-run=client -o yaml | kc "$PREFIX-$m" apply -f -
done

log "applying SliceConfig $SLICE"
kc "$HUB" apply -f - <<YAML
apiVersion: slicenet.io/v1alpha1
kind: SliceConfig
metadata:
  name: $SLICE
spec:
  sliceSubnet: 10.80.0.0/16
  clusters: [$(IFS=,; echo "${MEMBERS[*]}")]
  namespaces:
  - namespace: $NAMESPACE
    clusters: ["*"]
YAML
kc "$HUB" wait --for=condition=Ready "sliceconfig/$SLICE" --timeout="${TIMEOUT}s"

log "starting probe pods"
for m in "${MEMBERS[@]}"; do
    # The namespace joined the slice: the worker labelled it.
    retry namespace_joined "$m"
    for ns in "$NAMESPACE" outsider; do
        # As root: the image's default user cannot open the raw socket ping needs.
        kc "$PREFIX-$m" -n "$ns" run probe --image "$IMAGE" --image-pull-policy=IfNotPresent \
            --overrides='{"apiVersion": "v1", "spec": {"securityContext": {"runAsUser": 0}}}' \
            --command -- sleep infinity
    done
done
declare -A ADDR
for m in "${MEMBERS[@]}"; do
    kc "$PREFIX-$m" -n "$NAMESPACE" wait --for=condition=Ready pod/probe --timeout="${TIMEOUT}s"
    kc "$PREFIX-$m" -n outsider wait --for=condition=Ready pod/probe --timeout="${TIMEOUT}s"
    addr=$(kc "$PREFIX-$m" -n "$NAMESPACE" exec probe -- ip -4 -o addr show dev slice0 \
        | awk '{print $4}' | cut -d/ -f1)
    [ -n "$addr" ] || fail "$m/$NAMESPACE/probe has no slice0 address"
    ADDR[$m]=$addr
    echo "$m/$NAMESPACE/probe slice0 $addr"
    if kc "$PREFIX-$m" -n outsider exec probe -- ip link show slice0 >/dev/null 2>&1; then
        fail "$m/outsider/probe has slice0 but its namespace is not on the slice"
    fi
done

log "cross-cluster pings over slice0"
failures=0
for from in "${MEMBERS[@]}"; do
    for to in "${MEMBERS[@]}"; do
        [ "$from" != "$to" ] || continue
        if kc "$PREFIX-$from" -n "$NAMESPACE" exec probe -- ping -c 3 -W 2 -I slice0 "${ADDR[$to]}" >/dev/null; then
            echo "ok    $from -> $to (${ADDR[$to]})"
        else
            echo "FAIL  $from -> $to (${ADDR[$to]})"
            failures=$((failures + 1))
        fi
    done
done
[ "$failures" -eq 0 ] || fail "$failures cross-cluster path(s) failed"

log "deleting SliceConfig $SLICE"
kc "$HUB" delete "sliceconfig/$SLICE" --timeout="${TIMEOUT}s"
retry no_workerslices

log "passed: ${#MEMBERS[@]} clusters, every pair reachable over slice0"
