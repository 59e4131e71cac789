#!/usr/bin/env bash
# slicenet end to end on kind: 1 hub + 3 member clusters, installed with `slicectl install`,
# joined with `slicectl join` (one join file per cluster, no hand-made kubeconfig), one
# SliceConfig across the three, pods in each cluster pinging each other's slice0 addresses, a
# multi-cluster service found by its slice DNS name, a MultiNetworkPolicy that cuts a path and
# its removal that restores it, a token rotation, `slicectl version`, and `slicectl uninstall`
# of every member and the hub, after which each node's CNI conflist is as before the install
# and pods still start. The commands of README.md's "On real clusters" guide are these.
# Needs Docker, kind, kubectl and (for the MultiNetworkPolicy CRD) internet; see README.md.
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
# The MultiNetworkPolicy CRD (k8snetworkplumbingwg/multi-networkpolicy).
MNP_CRD=${MNP_CRD:-https://raw.githubusercontent.com/k8snetworkplumbingwg/multi-networkpolicy/master/scheme.yml}

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
resolves() {
    kc "$PREFIX-$1" -n "$NAMESPACE" exec probe -- getent hosts "$2"
}
pings() {
    kc "$PREFIX-$1" -n "$NAMESPACE" exec probe -- ping -c 1 -W 2 -I slice0 "$2"
}
ping_fails() { ! pings "$@"; }
no_membercluster() {
    ! kc "$HUB" get membercluster "$1" >/dev/null 2>&1
}
no_slicenet_pods() {
    [ -z "$(kc "$PREFIX-$1" get pods -A -l app.kubernetes.io/part-of=slicenet -o name 2>/dev/null)" ]
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

# The hub admin's kubeconfig: `slicectl join` uses it to register each member on the hub.
HUB_KUBECONFIG="$WORK/hub-admin.kubeconfig"
kind get kubeconfig --name "$HUB" >"$HUB_KUBECONFIG"

# Every node's CNI conflists before the install, to compare after the uninstall.
conflists() { docker exec "$1" sh -c 'for f in /etc/cni/net.d/*; do echo "== $f"; cat "$f"; done'; }
nodes_of() { kind get nodes --name "$PREFIX-$1"; }
for m in "${MEMBERS[@]}"; do
    while read -r node; do conflists "$node" >"$WORK/$node.conflists.before"; done < <(nodes_of "$m")
done

for m in "${MEMBERS[@]}"; do
    log "joining $m"
    "$SLICECTL" join --cluster "$m" --hub-kubeconfig "$HUB_KUBECONFIG" --hub-server "$HUB_SERVER" \
        --pod-cidr 10.244.0.0/16 --service-cidr 10.96.0.0/16 --output "$WORK/$m.join"
    [ "$(stat -c %a "$WORK/$m.join")" = 600 ] || fail "$WORK/$m.join is not mode 0600"
    kc "$HUB" get membercluster "$m" >/dev/null
    kc "$HUB" -n "slicenet-cluster-$m" get serviceaccount slicenet-worker >/dev/null

    log "installing the worker in $m"
    "$SLICECTL" install mcs-crds | kc "$PREFIX-$m" apply --server-side -f -
    kubectl --context "kind-$PREFIX-$m" apply -f "$MNP_CRD"
    "$SLICECTL" install worker --join "$WORK/$m.join" --image "$IMAGE" >"$WORK/$m.yaml"
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

log "slice DNS: a service of c2 by its slice.local name from c1"
kc "$PREFIX-c2" -n "$NAMESPACE" expose pod probe --name web --port 80 --target-port 80
kc "$PREFIX-c2" apply -f - <<YAML
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata:
  name: web
  namespace: $NAMESPACE
YAML
retry resolves c1 "web.$NAMESPACE.svc.slice.local"
resolves c1 "web.$NAMESPACE.svc.slice.local"

log "a MultiNetworkPolicy in c2: nothing reaches c2's probe over the slice, then it is deleted"
kc "$PREFIX-c2" apply -f - <<YAML
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: deny-in
  namespace: $NAMESPACE
  annotations:
    k8s.v1.cni.cncf.io/policy-for: slice-$SLICE
spec:
  podSelector: {}
  policyTypes: [Ingress]
YAML
retry ping_fails c1 "${ADDR[c2]}"
kc "$PREFIX-c2" -n "$NAMESPACE" delete multi-networkpolicy deny-in
retry pings c1 "${ADDR[c2]}"

log "rotating c1's hub token: the slice keeps working"
"$SLICECTL" join --cluster c1 --hub-kubeconfig "$HUB_KUBECONFIG" --hub-server "$HUB_SERVER" --rotate \
    --output "$WORK/c1.join"
"$SLICECTL" install worker-credentials --join "$WORK/c1.join" | kc "$PREFIX-c1" apply --server-side -f -
pings c1 "${ADDR[c2]}"

log "versions as running"
for m in "${MEMBERS[@]}"; do
    kind get kubeconfig --name "$PREFIX-$m" >"$WORK/$m-admin.kubeconfig"
    "$SLICECTL" version --kubeconfig "$WORK/$m-admin.kubeconfig" | tee "$WORK/$m.versions"
    if grep -q '^skew:' "$WORK/$m.versions"; then fail "version skew in $m"; fi
done
"$SLICECTL" status --hub-kubeconfig "$HUB_KUBECONFIG"

log "deleting SliceConfig $SLICE"
kc "$HUB" delete "sliceconfig/$SLICE" --timeout="${TIMEOUT}s"
retry no_workerslices

log "uninstalling the members, then the hub"
for m in "${MEMBERS[@]}"; do
    "$SLICECTL" uninstall worker --kubeconfig "$WORK/$m-admin.kubeconfig" --dry-run --image "$IMAGE"
    if [ "$m" = c3 ]; then
        # c3 leaves the hub too; c1 and c2 go with the hub below.
        "$SLICECTL" uninstall worker --kubeconfig "$WORK/$m-admin.kubeconfig" --image "$IMAGE" \
            --hub-kubeconfig "$HUB_KUBECONFIG" --cluster "$m"
        retry no_membercluster "$m"
    else
        "$SLICECTL" uninstall worker --kubeconfig "$WORK/$m-admin.kubeconfig" --image "$IMAGE"
    fi
    [ "$("$SLICECTL" uninstall worker --kubeconfig "$WORK/$m-admin.kubeconfig" --image "$IMAGE")" \
        = "nothing of slicenet's in this cluster" ] || fail "a second uninstall of $m found something"
    retry no_slicenet_pods "$m"
    if kc "$PREFIX-$m" -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' | grep -q 'slice.local'; then
        fail "$m: the slice DNS stanza is still in CoreDNS's Corefile"
    fi
    while read -r node; do
        conflists "$node" >"$WORK/$node.conflists.after"
        diff -u "$WORK/$node.conflists.before" "$WORK/$node.conflists.after" \
            || fail "$node: the CNI conflists differ from before the install"
        if docker exec "$node" test -e /opt/cni/bin/slice-cni; then fail "$node: slice-cni is still installed"; fi
        if docker exec "$node" sh -c 'ls /run/netns 2>/dev/null' | grep -q '^slice-'; then
            fail "$node: a slice router namespace is left"
        fi
        if docker exec "$node" nft list tables | grep -q slicenet; then fail "$node: an nftables table is left"; fi
    done < <(nodes_of "$m")
    # A pod made now starts on the cluster's CNI alone.
    kc "$PREFIX-$m" -n "$NAMESPACE" run after --image "$IMAGE" --image-pull-policy=IfNotPresent \
        --command -- sleep infinity
    kc "$PREFIX-$m" -n "$NAMESPACE" wait --for=condition=Ready pod/after --timeout="${TIMEOUT}s"
    if kc "$PREFIX-$m" -n "$NAMESPACE" exec after -- ip link show slice0 >/dev/null 2>&1; then
        fail "$m: a pod made after the uninstall has slice0"
    fi
done
"$SLICECTL" uninstall hub --kubeconfig "$HUB_KUBECONFIG" --image "$IMAGE"
if kc "$HUB" get crd sliceconfigs.slicenet.io >/dev/null 2>&1; then fail "the hub's CRDs are left"; fi

log "passed: ${#MEMBERS[@]} clusters, every pair reachable over slice0, DNS, policy, rotation, uninstall"
