// Nodes in separate network namespaces, joined by a bridge in a hub namespace (all created and
// removed by this test, with names unique to this run, addresses 10.200.0.x inside them only):
// each node binds 0.0.0.0 and must pick its own 10.200.0.x as advertise address; cutting one
// node's link partitions the cluster, and once the link is back membership converges again.
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT, waitFor } from '../helpers/index.ts';

const isRoot = process.getuid?.() === 0;
const PREFIX = 'oklogtest';
const tag = `${PREFIX}${process.pid}x${randomBytes(2).toString('hex')}`;
const hub = `${tag}-hub`;
const nsName = (i: number) => `${tag}-n${i}`;
const N = 3;
const created: string[] = [];
const procs: ChildProcess[] = [];

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Namespaces left by an earlier run of this test that was killed (its pid is gone). */
function removeStale(): void {
  let list = '';
  try {
    list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  } catch {
    return;
  }
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0];
    const m = new RegExp(`^${PREFIX}(\\d+)x[0-9a-f]{4}-(hub|n\\d+)$`).exec(name);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // that test is still running
    } catch {}
    try {
      ip('netns', 'del', name);
    } catch {}
  }
}

function cleanup(): void {
  for (const p of procs) {
    try {
      if (p.pid && p.exitCode === null) process.kill(-p.pid, 'SIGKILL');
    } catch {}
  }
  for (const ns of created.splice(0).reverse()) {
    try {
      ip('netns', 'del', ns);
    } catch {}
  }
}
process.on('exit', cleanup);

interface NodeView {
  started?: { name: string; advertise: { ip: string; port: number; source: string } };
  last?: { size: number; members: Array<{ name: string; state: string; apiAddr: string }> };
  stderr: string;
}
const views: NodeView[] = [];

function startNode(i: number): void {
  const view: NodeView = { stderr: '' };
  views[i] = view;
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      nsName(i),
      process.execPath,
      '--import',
      'tsx',
      join(ROOT, 'test/cluster/fixtures/gossip-node.ts'),
      '-cluster',
      'tcp://0.0.0.0:7659',
      '-peer',
      '10.200.0.1',
      '-name',
      `node-${i}`,
      '-fast',
    ],
    { cwd: ROOT, detached: true, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  procs.push(child);
  let buf = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        const ev = JSON.parse(line);
        if (ev.ev === 'started') view.started = ev;
        if (ev.ev === 'state') view.last = ev;
      } catch {}
      nl = buf.indexOf('\n');
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    view.stderr = (view.stderr + d).slice(-4000);
  });
}

const aliveCount = (v: NodeView) => v.last?.members.filter((m) => m.state === 'alive').length ?? 0;

describe('network namespaces', { skip: isRoot ? false : 'needs root for ip netns' }, () => {
  before(() => {
    removeStale();
    ip('netns', 'add', hub);
    created.push(hub);
    ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', hub, 'link', 'set', 'br0', 'up');
    for (let i = 1; i <= N; i++) {
      const ns = nsName(i);
      ip('netns', 'add', ns);
      created.push(ns);
      ip('link', 'add', `vh${i}`, 'netns', hub, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      ip('-n', hub, 'link', 'set', `vh${i}`, 'master', 'br0');
      ip('-n', hub, 'link', 'set', `vh${i}`, 'up');
      ip('-n', ns, 'addr', 'add', `10.200.0.${i}/24`, 'dev', 'eth0');
      ip('-n', ns, 'link', 'set', 'eth0', 'up');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
  });

  after(cleanup);

  it('choose advertise addresses, converge, partition and heal', async () => {
    for (let i = 1; i <= N; i++) startNode(i);
    await waitFor(() => views.slice(1).every((v) => v.started), 'nodes started', 30_000, 100).catch((err) => {
      throw new Error(`${err.message}\n${views.map((v) => v?.stderr).join('\n---\n')}`);
    });
    for (let i = 1; i <= N; i++) {
      assert.equal(views[i].started?.advertise.ip, `10.200.0.${i}`);
      assert.equal(views[i].started?.advertise.source, 'private-ip');
    }
    await waitFor(() => views.slice(1).every((v) => aliveCount(v) === N), 'convergence', 15_000, 100);
    const apis = views[1].last?.members.map((m) => m.apiAddr).sort();
    assert.deepEqual(apis, ['10.200.0.1:7650', '10.200.0.2:7650', '10.200.0.3:7650']);

    // Partition: node 3's link goes down.
    ip('-n', hub, 'link', 'set', `vh${N}`, 'down');
    await waitFor(
      () => aliveCount(views[1]) === N - 1 && aliveCount(views[2]) === N - 1 && aliveCount(views[N]) === 1,
      'partition detected on both sides',
      15_000,
      100,
    );
    // Heal: the link comes back and membership converges again.
    const t0 = Date.now();
    ip('-n', hub, 'link', 'set', `vh${N}`, 'up');
    await waitFor(() => views.slice(1).every((v) => aliveCount(v) === N), 'healed convergence', 20_000, 100);
    assert.ok(Date.now() - t0 < 20_000);
  });
});
