// Clusters of real `oklog ingest` / `oklog store` processes, each node on its own loopback address
// (127.0.0.x: the whole 127/8 is loopback on Linux), for the tests that check them from outside.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { Peer } from '../../cli/ctl/peers.ts';
import { freePort, type Proc, spawnTs, tempDir, waitFor } from '../helpers/index.ts';

export type { Peer };

export interface ProcNode {
  label: string;
  mode: 'ingest' | 'store';
  host: string;
  /** API `host:port`, as the cluster advertises it. */
  api: string;
  fast: number;
  cluster: number;
  proc: Proc;
}

export interface StartOptions {
  /** The node every other joins through (`-peer`). */
  seed?: ProcNode | null;
  /** `-cluster.key`: the gossip key file. */
  keyFile?: string;
  /** `-store.segment-replication-factor` of a store node. */
  replicationFactor?: number;
}

/** The nodes of one test file, their data under one temporary directory. */
export class ProcCluster {
  readonly nodes: ProcNode[] = [];
  /** Run in reverse by stop(): the directory is removed last, after every process is killed. */
  readonly cleanups: (() => Promise<unknown>)[] = [];
  /** Ports unique across the whole cluster (the kernel may hand out one number on two addresses). */
  private readonly usedPorts = new Set<number>();

  private constructor(readonly dir: string) {}

  static async create(prefix: string): Promise<ProcCluster> {
    const d = await tempDir(prefix);
    const c = new ProcCluster(d.path);
    c.cleanups.push(d.cleanup);
    return c;
  }

  async port(host: string): Promise<number> {
    for (;;) {
      const p = await freePort(host);
      if (!this.usedPorts.has(p)) {
        this.usedPorts.add(p);
        return p;
      }
    }
  }

  /** Adds every node's recent log to an error, so a failure can be understood from the test output. */
  withLogs = (err: unknown): Error => {
    const e = err instanceof Error ? err : new Error(String(err));
    e.message += `\n${this.nodes.map((n) => tail(n)).join('\n')}`;
    return e;
  };

  /** Starts `oklog <mode>` on `host` (data in `<dir>/<label>`, short segment ages) and waits for /health. */
  async start(label: string, mode: ProcNode['mode'], host: string, o: StartOptions = {}): Promise<ProcNode> {
    const api = await this.port(host);
    const cluster = await this.port(host);
    const args = ['-api', `tcp://${host}:${api}`, '-cluster', `tcp://${host}:${cluster}`];
    if (o.keyFile !== undefined) args.push('-cluster.key', o.keyFile);
    let fast = 0;
    if (mode === 'ingest') {
      fast = await this.port(host);
      args.push(
        '-ingest.fast',
        `tcp://${host}:${fast}`,
        '-ingest.durable',
        `tcp://${host}:${await this.port(host)}`,
        '-ingest.bulk',
        `tcp://${host}:${await this.port(host)}`,
        '-ingest.path',
        join(this.dir, label),
        '-ingest.segment-flush-age',
        '500ms',
      );
    } else {
      args.push('-store.path', join(this.dir, label), '-store.segment-target-age', '500ms');
      if (o.replicationFactor !== undefined)
        args.push('-store.segment-replication-factor', String(o.replicationFactor));
    }
    if (o.seed) args.push('-peer', `${o.seed.host}:${o.seed.cluster}`);
    const proc = spawnTs('cli/oklog.ts', [mode, ...args]);
    this.cleanups.push(() => proc.kill('SIGKILL'));
    const node: ProcNode = { label, mode, host, api: `${host}:${api}`, fast, cluster, proc };
    this.nodes.push(node);
    await waitFor(
      async () => {
        if (proc.child.exitCode !== null) throw new Error(`${label} exited early`);
        return (await fetch(`http://${node.api}/health`)).ok;
      },
      `${label} /health`,
      30_000,
    ).catch((err) => {
      throw this.withLogs(err);
    });
    return node;
  }

  /** Every process first (SIGKILL to its process group), then the directory. */
  async stop(): Promise<void> {
    for (const c of this.cleanups.reverse()) await c().catch(() => {});
  }
}

function tail(n: ProcNode, chars = 3000): string {
  return `--- ${n.label} (${n.api}) stderr ---\n${n.proc.stderr().slice(-chars)}`;
}

/** The node's `GET /cluster/peers`. */
export async function peersOf(n: ProcNode): Promise<Peer[]> {
  const r = await fetch(`http://${n.api}/cluster/peers`);
  assert.equal(r.status, 200);
  return (await r.json()) as Peer[];
}
