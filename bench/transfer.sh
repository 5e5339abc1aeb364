#!/usr/bin/env bash
# Transfer benchmark: one run measures, on loopback,
#   raw TCP (socat, written to disk and synced), rsync over ssh, and mynet (Noise-encrypted,
#   every piece verified, stored durably) from 1 provider and from 4 providers,
# and prints one JSON line with MiB/s and the ratios, plus the peak RSS of the nodes.
# Usage: bench/transfer.sh [SIZE_MIB (default 1024)] [RSS_SIZE_MIB (default 4096, 0 to skip)]
# Installs openssh-server, rsync and socat from Debian's packages if missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rss_mib=${2:-4096}
need=()
command -v socat >/dev/null || need+=(socat)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
fi
cargo build --release -q -p mynet-runtime
bin=$PWD/target/release/mynet
work=$(mktemp -d /tmp/mynet-bench.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ $rc -ne 0 ]; then tail -n 5 "$work"/*.log >&2 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
rate() { python3 -c "print(round($1 / ($3 - $2), 1))"; }

head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/file"
sync

# ---- raw TCP: socat into a file, then fsync it ----
port=$((20000 + RANDOM % 20000))
socat -u TCP-LISTEN:$port,reuseaddr OPEN:"$work/tcp-out",creat,trunc & listener=$!
sleep 0.3
t0=$(now); socat -u FILE:"$work/file" TCP:127.0.0.1:$port; wait $listener; sync "$work/tcp-out"; t1=$(now)
tcp=$(rate "$size_mib" "$t0" "$t1")
rm -f "$work/tcp-out"

# ---- rsync over ssh (sshd on a private port, a throwaway key) ----
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
ssh-keygen -q -t ed25519 -N '' -f "$work/hostkey"
mkdir -p /root/.ssh && chmod 700 /root/.ssh
touch /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
cp /root/.ssh/authorized_keys "$work/authorized_keys.saved"
cat "$work/key.pub" >> /root/.ssh/authorized_keys
restore_keys() { cp "$work/authorized_keys.saved" /root/.ssh/authorized_keys; }
sshport=$((port + 1))
mkdir -p /run/sshd
/usr/sbin/sshd -D -p $sshport -h "$work/hostkey" -o PidFile="$work/sshd.pid" -o ListenAddress=127.0.0.1 & pids+=($!)
sleep 0.5
mkdir -p "$work/rsync-out"
t0=$(now)
rsync -a -e "ssh -p $sshport -i $work/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR" \
  "$work/file" root@127.0.0.1:"$work/rsync-out/"
sync "$work/rsync-out/file"; t1=$(now)
restore_keys
rsync_ssh=$(rate "$size_mib" "$t0" "$t1")
rm -rf "$work/rsync-out"

# ---- mynet nodes ----
node() { # node NAME PORT [replicate] [bootstrap-json]
  local dir=$work/$1
  "$bin" --data-dir "$dir" init >/dev/null
  echo "{\"listen_addr\":\"127.0.0.1:$2\",\"replicate\":\"${3:-all}\",\"max_per_ip\":64}" > "$dir/node_config.json"
  echo "{\"network_id\":\"bench\",\"bootstrap_nodes\":[${4:-}]}" > "$dir/bootstrap.json"
  RUST_LOG=info,fjall=warn,lsm_tree=warn "$bin" --data-dir "$dir" run 2>"$work/$1.log" & pids+=($!)
  eval "pid_$1=$!"
}
entry() { "$bin" --data-dir "$work/$1" init | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'node_id':d['node_id'],'public_key':d['public_key'],'address':'127.0.0.1:$2'}))"; }
ready() { for _ in $(seq 300); do "$bin" --data-dir "$work/$1" status --json 2>/dev/null | grep -q '"phase": "ready"' && return; sleep 0.1; done; echo "$1 not ready" >&2; exit 1; }
complete() { for _ in $(seq 60000); do "$bin" --data-dir "$work/$1" ls --json | grep -q '"state": "complete"' && return; sleep 0.02; done; echo "$1 never completed" >&2; exit 1; }
hwm() { awk '/VmHWM/ {print int($2/1024)}' /proc/"$1"/status; }
cpu() { awk '{print ($14 + $15) / 100}' /proc/"$1"/stat; }
# Times a fetch on node $1 from its request until the item is complete (durable and verified
# in its store), polling every 20 ms; prints seconds.
fetch() {
  local t0 t1
  t0=$(now)
  "$bin" --data-dir "$work/$1" get "$2" -o /dev/null --timeout 60m >/dev/null & local getter=$!
  for _ in $(seq 200000); do
    "$bin" --data-dir "$work/$1" ls --json | grep -q '"state": "complete"' && break
    sleep 0.02
  done
  t1=$(now)
  wait $getter
  python3 -c "print($t1 - $t0)"
}

base=$((port + 10))
node a $base all; ready a
boot=$(entry a $base)
node b $((base + 1)) none "$boot"; ready b
id=$("$bin" --data-dir "$work/a" add "$work/file")
cpu0=$(python3 -c "print($(cpu "$pid_a") + $(cpu "$pid_b"))")
secs=$(fetch b "$id")
cpu1=$(python3 -c "print($(cpu "$pid_a") + $(cpu "$pid_b"))")
one=$(rate "$size_mib" 0 "$secs")
cpu_per_gib=$(python3 -c "print(round(($cpu1 - $cpu0) * 1024 / $size_mib, 2))")

# ---- 4 providers to 1 downloader: c, d, e replicate from a; f fetches from all four ----
for n in c d e; do node $n $((base + $(printf '%d' "'$n") - 96)) all "$boot"; done
for n in c d e; do ready $n; complete $n; done
node f $((base + 9)) none "$boot"; ready f
for _ in $(seq 100); do
  peers=$("$bin" --data-dir "$work/f" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_count"])')
  [ "$peers" -ge 4 ] && break; sleep 0.1
done
secs=$(fetch f "$id")
four=$(rate "$size_mib" 0 "$secs")
sources=$(grep -o 'complete ([0-9]* bytes from [0-9]* peer' "$work/f.log" | tail -1 | grep -o 'from [0-9]*' | cut -d' ' -f2 || true)

# ---- peak RSS of a provider and a downloader during a larger transfer ----
rss_a=null; rss_b=null
if [ "$rss_mib" -gt 0 ]; then
  rm -f "$work/file"
  head -c $((rss_mib * 1024 * 1024)) /dev/urandom > "$work/big"
  big=$("$bin" --data-dir "$work/a" add "$work/big")
  rm -f "$work/big"
  "$bin" --data-dir "$work/b" get "$big" -o /dev/null --timeout 60m >/dev/null
  rss_a=$(hwm "$pid_a"); rss_b=$(hwm "$pid_b")
fi

python3 - "$size_mib" "$tcp" "$rsync_ssh" "$one" "$four" "${sources:-0}" "$rss_mib" "$rss_a" "$rss_b" "$cpu_per_gib" <<'PY'
import json, sys
size, tcp, rs, one, four, sources, rss_size, ra, rb, cpu = sys.argv[1:]
tcp, rs, one, four = map(float, (tcp, rs, one, four))
print(json.dumps({
    "size_mib": int(size),
    "raw_tcp_mib_s": tcp, "rsync_ssh_mib_s": rs,
    "mynet_mib_s": one, "mynet_4_providers_mib_s": four, "sources_used": int(sources),
    "mynet_over_rsync_ssh": round(one / rs, 2), "mynet_over_raw_tcp": round(one / tcp, 2),
    "four_over_one": round(four / one, 2), "mynet_cpu_s_per_gib_both_nodes": float(cpu),
    "rss_transfer_mib": int(rss_size), "provider_peak_rss_mib": None if ra == "null" else int(ra),
    "downloader_peak_rss_mib": None if rb == "null" else int(rb),
}))
PY
