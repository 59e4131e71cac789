#!/bin/bash
# What a router namespace's per-packet checks cost a forwarded TCP stream: no table, conntrack
# only (`ct state established,related accept`), the nft reverse-path check only (`fib saddr . iif
# oif missing drop` at priority raw), and both; iperf3 (one stream, T seconds) from namespace a
# through r to b, configurations alternating, RUNS rounds. docs/decisions.md ("Anti-spoofing")
# quotes its figures. Namespaces snbenchy-{a,r,b}, removed on exit. As root.
set -euo pipefail
RUNS=${RUNS:-3}
T=${T:-3}
P=snbenchy
cleanup() {
  [ -f "/tmp/$P-iperf.pid" ] && kill "$(cat /tmp/$P-iperf.pid)" 2>/dev/null || true
  rm -f "/tmp/$P-iperf.pid"
  for n in a r b; do ip netns del "$P-$n" 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup
for n in a r b; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip link add "$P-ar" netns "$P-a" type veth peer name "$P-ra" netns "$P-r"
ip link add "$P-br" netns "$P-b" type veth peer name "$P-rb" netns "$P-r"
ip -n "$P-a" addr add 10.99.1.2/24 dev "$P-ar"; ip -n "$P-a" link set "$P-ar" up
ip -n "$P-a" route add default via 10.99.1.1
ip -n "$P-b" addr add 10.99.2.2/24 dev "$P-br"; ip -n "$P-b" link set "$P-br" up
ip -n "$P-b" route add default via 10.99.2.1
ip -n "$P-r" addr add 10.99.1.1/24 dev "$P-ra"; ip -n "$P-r" link set "$P-ra" up
ip -n "$P-r" addr add 10.99.2.1/24 dev "$P-rb"; ip -n "$P-r" link set "$P-rb" up
ip netns exec "$P-r" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$P-b" iperf3 -s -D -p 5299 --pidfile "/tmp/$P-iperf.pid"
for _ in $(seq 50); do ip netns exec "$P-b" ss -Hltn 'sport = :5299' | grep -q . && break; sleep 0.1; done
FIB='chain p { type filter hook prerouting priority -300; iifname != "lo" fib saddr . iif oif missing drop; };'
CT='chain f { type filter hook forward priority 0; ct state established,related accept; ct state invalid drop; };'
declare -A rules=([none]="" [conntrack]="$CT" [fib]="$FIB" [both]="$FIB $CT")
declare -A got
for _ in $(seq "$RUNS"); do
  for c in none conntrack fib both; do
    ip netns exec "$P-r" nft flush ruleset
    [ -n "${rules[$c]}" ] && ip netns exec "$P-r" nft "table inet t { ${rules[$c]} }"
    g=$(ip netns exec "$P-a" timeout $((T + 20)) iperf3 -c 10.99.2.2 -p 5299 -t "$T" -J |
      jq '.end.sum_received.bits_per_second / 1e9 * 100 | round / 100')
    got[$c]="${got[$c]:-} $g"
  done
done
echo "| router checks | Gbit/s per run |"
echo "| --- | --- |"
for c in none conntrack fib both; do echo "| $c |${got[$c]} |"; done
