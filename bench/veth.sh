# Sourced by bench/run, bench/ab and bench/profile.
#
# veth_pair NS_A NS_B MTU: creates network namespaces NS_A and NS_B joined by a veth pair with
# that MTU, eth0 in each: 10.213.0.1 in NS_A and 10.213.0.2 in NS_B (addresses that exist only
# inside them). The caller deletes the namespaces (the pair goes with them).
veth_pair() {
    local a=$1 b=$2 mtu=$3 n
    ip netns add "$a"
    ip netns add "$b"
    ip link add "ov$$a" type veth peer name "ov$$b"
    ip link set "ov$$a" netns "$a"
    ip link set "ov$$b" netns "$b"
    ip -n "$a" link set "ov$$a" name eth0
    ip -n "$b" link set "ov$$b" name eth0
    for n in "$a" "$b"; do
        ip -n "$n" link set lo up
        ip -n "$n" link set eth0 mtu "$mtu" up
    done
    ip -n "$a" addr add 10.213.0.1/24 dev eth0
    ip -n "$b" addr add 10.213.0.2/24 dev eth0
}
