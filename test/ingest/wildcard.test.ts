// A wildcard listen address (OK Log's default `tcp://0.0.0.0:…`) is dual-stack, as Go's is: the
// cluster may advertise an IPv6 address, and peers then reach this node's API and ingest ports
// there. `tcp4://` keeps to IPv4.
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import { test } from 'node:test';
import { ipv6Available } from '../../shared/listen.ts';
import { nodePorts, startOklog, tempDir, waitFor } from '../helpers/index.ts';

async function send(host: string, port: number, text: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = connect({ host, port }, () => s.end(text));
    s.on('error', reject);
    s.on('close', () => resolve());
  });
}

async function reachable(url: string): Promise<boolean> {
  return fetch(url).then(
    (r) => r.ok,
    () => false,
  );
}

/** Whether ::1 exists here (some containers have IPv6 sockets but no IPv6 loopback). */
function loopback6(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '::1', port: 0 }, () => s.close(() => resolve(true)));
  });
}

test('a wildcard -api and ingest address answer on IPv4 and IPv6; tcp4:// only on IPv4', async (t) => {
  if (!(await ipv6Available()) || !(await loopback6())) {
    t.skip('no IPv6 on this machine');
    return;
  }
  const dir = await tempDir();
  const ports = await nodePorts();
  const node = await startOklog(
    'ingeststore',
    [
      '-api',
      `tcp://0.0.0.0:${ports.api}`,
      '-ingest.fast',
      `tcp://0.0.0.0:${ports.fast}`,
      '-ingest.durable',
      `tcp4://0.0.0.0:${ports.durable}`,
      '-ingest.path',
      `${dir.path}/ingest`,
      '-store.path',
      `${dir.path}/store`,
      '-ingest.segment-flush-age',
      '200ms',
      '-store.segment-target-age',
      '200ms',
    ],
    { ports },
  );
  try {
    assert.ok(await reachable(`http://127.0.0.1:${ports.api}/health`));
    assert.ok(await reachable(`http://[::1]:${ports.api}/health`), 'API over IPv6');
    await send('127.0.0.1', ports.fast, 'over-ipv4\n');
    await send('::1', ports.fast, 'over-ipv6\n');
    await send('127.0.0.1', ports.durable, 'durable-ipv4\n');
    await assert.rejects(send('::1', ports.durable, 'never\n'), /ECONNREFUSED/);
    const body = await waitFor(async () => {
      const r = await fetch(`http://[::1]:${ports.api}/store/query?from=1m&to=now`);
      const text = await r.text();
      return text.split('\n').length - 1 === 3 ? text : '';
    }, 'three records queryable');
    assert.match(body, / default over-ipv4\n/);
    assert.match(body, / default over-ipv6\n/);
    assert.match(body, / default durable-ipv4\n/);
  } finally {
    await node.proc.kill('SIGTERM');
    await dir.cleanup();
  }
});
