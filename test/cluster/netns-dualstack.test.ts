// Two real `oklog store` nodes, each in its own network namespace (created and removed by this
// test), on a host shaped like many cloud VMs: eth0 holds the default route, a non-private IPv4
// (198.51.100.x, TEST-NET-2) and a private IPv6 ULA (fd00:200::x). With the default wildcard
// `-cluster` bind, go-sockaddr's order picks the ULA (the first *private* address), so the gossip
// sockets must listen dual-stack: IPv4-only sockets made such nodes advertise an address they did
// not listen on, and flap suspect/dead forever. Node 2 joins through node 1's IPv4 address (the
// join arrives IPv4-mapped on the dual-stack socket), then they probe each other over IPv6.
// They must converge, stay alive with no failed probe, and gossip API addresses that work.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Peer } from '../../cli/ctl/peers.ts';
import { ROOT, sleep, tempDir, waitFor } from '../helpers/index.ts';
import { ip, isRoot, NetnsLab, onJsonLines } from './netns.ts';

const v4 = (i: number) => `198.51.100.${i}`;
const v6 = (i: number) => `fd00:200::${i}`;
const api = (i: number) => `http://[${v6(i)}]:7650`;

let lab: NetnsLab;
let dir: { path: string; cleanup: () => Promise<void> } | null = null;
const stderr: string[] = ['', '', ''];
/** Every /cluster/peers answer, per node, as it arrived. */
const answers: Array<Array<{ at: number; peers: Peer[] }>> = [[], [], []];
const latest = new Map<string, { status?: number; body?: string; error?: string }>();

function startStore(i: number, ns: string): ChildProcess {
  const args = [join(ROOT, 'cli/oklog.ts'), 'store', '-store.path', join(dir?.path ?? '', `n${i}`)];
  // Every listener at its default (0.0.0.0, dual-stack): the gossiped IPv6 API address is reached.
  if (i > 1) args.push('-peer', v4(1));
  const child = lab.spawnNode(ns, args);
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr[i] = (stderr[i] + d).slice(-4000);
  });
  child.stdout?.resume();
  return child;
}

function withLogs(err: unknown): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  e.message += `\n--- node 1 ---\n${stderr[1]}\n--- node 2 ---\n${stderr[2]}`;
  return e;
}

function metric(text: string | undefined, re: RegExp): number {
  const m = re.exec(text ?? '');
  return m ? Number(m[1]) : 0;
}

describe('dual-stack gossip in network namespaces', {
  skip: isRoot ? false : 'needs root for ip netns',
}, () => {
  const ns: string[] = [];

  before(async () => {
    dir = await tempDir('oklog-netns6-');
    lab = new NetnsLab();
    const hub = lab.add('hub');
    ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', hub, 'link', 'set', 'br0', 'up');
    for (const i of [1, 2]) {
      ns[i] = lab.add(`d${i}`);
      ip('link', 'add', `vd${i}`, 'netns', hub, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns[i]);
      ip('-n', hub, 'link', 'set', `vd${i}`, 'master', 'br0');
      ip('-n', hub, 'link', 'set', `vd${i}`, 'up');
      ip('-n', ns[i], 'addr', 'add', `${v4(i)}/24`, 'dev', 'eth0');
      // nodad: usable at once, not "tentative" for the duplicate-address check.
      ip('-n', ns[i], 'addr', 'add', `${v6(i)}/64`, 'dev', 'eth0', 'nodad');
      ip('-n', ns[i], 'link', 'set', 'eth0', 'up');
      // eth0 holds the default route, as on the machine the flapping was seen on.
      ip('-n', ns[i], 'route', 'add', 'default', 'via', v4(254), 'dev', 'eth0');
    }
  });

  after(async () => {
    lab?.cleanup();
    await dir?.cleanup();
  });

  it('a non-private IPv4 and a ULA, default bind: advertise the ULA, converge and stay alive', async () => {
    startStore(1, ns[1]);
    startStore(2, ns[2]);
    // Both APIs polled from inside node 1's namespace (the test process cannot reach them).
    const urls = [1, 2].flatMap((i) => [`${api(i)}/cluster/peers`, `${api(i)}/metrics`]);
    const poller = lab.spawnNode(ns[1], [join(ROOT, 'test/cluster/fixtures/http-poll.ts'), '200', ...urls]);
    onJsonLines(poller, (v) => {
      const url = String(v.url);
      latest.set(url, v as { status?: number; body?: string; error?: string });
      const i = url.startsWith(api(1)) ? 1 : 2;
      if (url.endsWith('/cluster/peers') && v.status === 200)
        answers[i].push({ at: Date.now(), peers: JSON.parse(String(v.body)) as Peer[] });
    });
    const last = (i: number) => answers[i].at(-1)?.peers ?? [];
    const allAlive = (peers: Peer[]) => peers.length === 2 && peers.every((p) => p.state === 'alive');
    await waitFor(
      () => allAlive(last(1)) && allAlive(last(2)),
      'both nodes see both alive',
      40_000,
      100,
    ).catch((err) => {
      throw withLogs(err);
    });

    // The ULA was chosen, for gossip and for the API address in the peer map, bracketed.
    for (const i of [1, 2]) {
      assert.deepEqual(
        last(i)
          .map((p) => [p.type, p.gossipAddr, p.apiAddr])
          .sort(),
        [
          ['store', `[${v6(1)}]:7659`, `[${v6(1)}]:7650`],
          ['store', `[${v6(2)}]:7659`, `[${v6(2)}]:7650`],
        ],
      );
    }

    // Stable: for 5 s every answer of both nodes lists both members alive.
    const from = Date.now();
    await sleep(5000);
    for (const i of [1, 2]) {
      const window = answers[i].filter((a) => a.at >= from);
      assert.ok(window.length >= 10, `node ${i} answered ${window.length} times in 5 s`);
      for (const a of window)
        assert.ok(
          allAlive(a.peers),
          withLogs(`node ${i} at +${a.at - from} ms: ${JSON.stringify(a.peers.map((p) => p.state))}`).message,
        );
      const m = latest.get(`${api(i)}/metrics`)?.body;
      assert.equal(
        metric(m, /^oklog_cluster_probes_total\{result="failed"\} (\d+)$/m),
        0,
        `node ${i} failed probes`,
      );
      assert.ok(
        metric(m, /^oklog_cluster_probes_total\{result="ack"\} (\d+)$/m) > 0,
        `node ${i} acked probes`,
      );
      assert.equal(metric(m, /^oklog_cluster_members\{state="dead"\} (\d+)$/m), 0);
      assert.equal(metric(m, /^oklog_cluster_members\{state="suspect"\} (\d+)$/m), 0);
    }
  });
});
