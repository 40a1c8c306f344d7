/**
 * A small routed LAN of network namespaces for partitions (bench/faults.ts): one namespace per
 * node and a router namespace between everything. The caller's own namespace (where clients,
 * consoles and Redis run) is attached to the router too, with a few addresses of its own. Each
 * attachment is a veth pair with its own small subnet; the router forwards between them.
 * Addresses are in a /24 of 10.213.0.0/16 picked at random, so runs on one machine do not collide.
 *
 * A cut is a pair of policy rules in the router (`ip rule add from A to B blackhole`, and back):
 * the router drops what the two addresses send each other, in the middle, silently (no FIN, no
 * RST, no ICMP), as a real partition does. Both ends see their packets leave and nothing come
 * back. Only `ip` (iproute2) and root are needed: iptables and nft are not installed here.
 * Everything is removed on teardown.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface LanNode {
  /** The namespace's name, for `ip netns exec`. */
  readonly netns: string;
  readonly host: string;
}

export interface Lan {
  /** The caller's first address on the LAN: its connections come from it. */
  readonly gateway: string;
  /** Further addresses of the caller's namespace (`extra` of them). */
  readonly extra: readonly string[];
  readonly nodes: ReadonlyMap<string, LanNode>;
  /** The router drops whatever `a` and each of `others` send each other. */
  cut(a: string, others: readonly string[]): void;
  heal(a: string, others: readonly string[]): void;
  /**
   * Make node `id`'s link slow, both ways: a token bucket (`tc qdisc ... tbf`) of `rate` (e.g.
   * `128kbit`) with a queue of `latencyMs`, beyond which packets are dropped (so a saturated link
   * is lossy too). `tc netem` would add delay and loss directly, but this kernel has no sch_netem.
   */
  slow(id: string, rate: string, latencyMs: number): void;
  fast(id: string): void;
}

function tc(args: string[]): void {
  const r = spawnSync('tc', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tc ${args.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
}

/** Why a LAN cannot be made here (no root, no `ip`), or false. */
export function lanUnavailable(): string | false {
  const name = `op-probe-${randomBytes(3).toString('hex')}`;
  const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (r.status !== 0) return `network namespaces unavailable (ip netns add: ${(r.stderr || r.error?.message || '').trim()})`;
  spawnSync('ip', ['netns', 'del', name]);
  return false;
}

/**
 * Nodes `ids` (at most 14), each in its own namespace, and `extra` (at most 12) more addresses
 * for the caller. Layout in 10.213.N.0/24: the caller's link .0/28 (caller .1 and up, router
 * .14); node k's link .16k/30 (node .16k+1, router .16k+2).
 */
export function startLan(t: Teardown, ids: readonly string[], extra = 0): Lan {
  const tag = randomBytes(2).toString('hex');
  const net = `10.213.${randomBytes(1)[0]!}`;
  const undo: Array<() => void> = [];
  t.teardown(() => {
    for (const f of undo.reverse()) {
      try {
        f();
      } catch {
        // Already gone.
      }
    }
  });
  const router = `op-${tag}-r`;
  ip(['netns', 'add', router]);
  undo.push(() => ip(['netns', 'del', router]));
  ip(['-n', router, 'link', 'set', 'lo', 'up']);
  const forward = spawnSync('ip', ['netns', 'exec', router, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'], { encoding: 'utf8' });
  if (forward.status !== 0) throw new Error(`cannot turn forwarding on in ${router}: ${forward.stderr}`);

  // The caller's link.
  const own = `opc${tag}`;
  ip(['link', 'add', own, 'type', 'veth', 'peer', 'name', 'c0', 'netns', router]);
  undo.push(() => ip(['link', 'del', own]));
  const gateway = `${net}.1`;
  const extras = Array.from({ length: extra }, (_, i) => `${net}.${2 + i}`);
  for (const a of [gateway, ...extras]) ip(['addr', 'add', `${a}/28`, 'dev', own]);
  ip(['link', 'set', own, 'up']);
  ip(['-n', router, 'addr', 'add', `${net}.14/28`, 'dev', 'c0']);
  ip(['-n', router, 'link', 'set', 'c0', 'up']);
  ip(['route', 'add', `${net}.0/24`, 'via', `${net}.14`, 'dev', own]);

  const nodes = new Map<string, LanNode>();
  for (const [i, id] of ids.entries()) {
    const k = i + 1;
    const netns = `op-${tag}-${id}`;
    const host = `${net}.${16 * k + 1}`;
    const hop = `${net}.${16 * k + 2}`;
    ip(['netns', 'add', netns]);
    undo.push(() => ip(['netns', 'del', netns]));
    ip(['-n', router, 'link', 'add', `n${k}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    ip(['-n', router, 'addr', 'add', `${hop}/30`, 'dev', `n${k}`]);
    ip(['-n', router, 'link', 'set', `n${k}`, 'up']);
    ip(['-n', netns, 'link', 'set', 'lo', 'up']);
    ip(['-n', netns, 'addr', 'add', `${host}/30`, 'dev', 'eth0']);
    ip(['-n', netns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', netns, 'route', 'add', 'default', 'via', hop]);
    nodes.set(id, { netns, host });
  }
  const rules = (verb: 'add' | 'del', a: string, others: readonly string[]): void => {
    for (const b of others) {
      ip(['-n', router, 'rule', verb, 'from', a, 'to', b, 'blackhole']);
      ip(['-n', router, 'rule', verb, 'from', b, 'to', a, 'blackhole']);
    }
  };
  // Node id's two ends of its link: eth0 in its namespace, n<k> in the router's.
  const ends = (id: string): Array<[string, string]> => {
    const k = ids.indexOf(id) + 1;
    const n = nodes.get(id);
    if (!n || k === 0) throw new Error(`no node ${id} on the LAN`);
    return [
      [n.netns, 'eth0'],
      [router, `n${k}`],
    ];
  };
  return {
    gateway,
    extra: extras,
    nodes,
    cut: (a, others) => rules('add', a, others),
    heal: (a, others) => rules('del', a, others),
    slow: (id, rate, latencyMs) => {
      for (const [ns, dev] of ends(id)) tc(['-n', ns, 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '4kb', 'latency', `${latencyMs}ms`]);
    },
    fast: (id) => {
      for (const [ns, dev] of ends(id)) tc(['-n', ns, 'qdisc', 'del', 'dev', dev, 'root']);
    },
  };
}
