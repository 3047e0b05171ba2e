// Nodes in separate network namespaces, joined by a bridge in a hub namespace (all created and
// removed by this test, with names unique to this run, addresses 10.200.0.x inside them only):
// each node binds 0.0.0.0 and must pick its own 10.200.0.x as advertise address; cutting one
// node's link partitions the cluster, and once the link is back membership converges again.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT, waitFor } from '../helpers/index.ts';
import { ip, isRoot, NetnsLab, onJsonLines } from './netns.ts';

const N = 3;
let lab: NetnsLab;
let hub = '';
const nsName = (i: number) => `${lab.tag}-n${i}`;

interface NodeView {
  started?: { name: string; advertise: { ip: string; port: number; source: string } };
  last?: { size: number; members: Array<{ name: string; state: string; apiAddr: string }> };
  stderr: string;
}
const views: NodeView[] = [];

function startNode(i: number): void {
  const view: NodeView = { stderr: '' };
  views[i] = view;
  const child = lab.spawnNode(nsName(i), [
    join(ROOT, 'test/cluster/fixtures/gossip-node.ts'),
    '-cluster',
    'tcp://0.0.0.0:7659',
    '-peer',
    '10.200.0.1',
    '-name',
    `node-${i}`,
    '-fast',
  ]);
  onJsonLines(child, (ev) => {
    if (ev.ev === 'started') view.started = ev as NodeView['started'];
    if (ev.ev === 'state') view.last = ev as NodeView['last'];
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    view.stderr = (view.stderr + d).slice(-4000);
  });
}

const aliveCount = (v: NodeView) => v.last?.members.filter((m) => m.state === 'alive').length ?? 0;

describe('network namespaces', { skip: isRoot ? false : 'needs root for ip netns' }, () => {
  before(() => {
    lab = new NetnsLab();
    hub = lab.add('hub');
    ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', hub, 'link', 'set', 'br0', 'up');
    for (let i = 1; i <= N; i++) {
      const ns = lab.add(`n${i}`);
      ip('link', 'add', `vh${i}`, 'netns', hub, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
      ip('-n', hub, 'link', 'set', `vh${i}`, 'master', 'br0');
      ip('-n', hub, 'link', 'set', `vh${i}`, 'up');
      ip('-n', ns, 'addr', 'add', `10.200.0.${i}/24`, 'dev', 'eth0');
      ip('-n', ns, 'link', 'set', 'eth0', 'up');
    }
  });

  after(() => lab?.cleanup());

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
