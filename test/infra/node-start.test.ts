// The EC2 start-up path for real: infra/userdata/node-start.sh (its node-start part) against a
// fake IMDSv2 endpoint on loopback, a stub `aws` CLI (peer discovery) and a stub cfn-signal,
// installing into a temp root and running the unit's ExecStart without systemd. It must start a
// node that answers /health and was given the advertise address from the metadata endpoint.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NODE_START_SCRIPT, UNIT_FILE } from '../../infra/oklog-cluster.ts';
import { freePorts, REPO } from './helpers.ts';

const TOKEN = 'test-token-0123456789';

interface Imds {
  server: Server;
  url: string;
  log: string[];
}

/** IMDSv2 only: a session token from PUT /latest/api/token is required for every GET. */
async function startImds(ip: string): Promise<Imds> {
  const log: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const token = req.headers['x-aws-ec2-metadata-token'];
    log.push(`${req.method} ${req.url} token=${token ?? '-'}`);
    if (req.method === 'PUT' && req.url === '/latest/api/token') {
      if (!req.headers['x-aws-ec2-metadata-token-ttl-seconds']) return void res.writeHead(400).end();
      return void res.writeHead(200, { 'content-type': 'text/plain' }).end(TOKEN);
    }
    if (token !== TOKEN) return void res.writeHead(401).end();
    if (req.method === 'GET' && req.url === '/latest/meta-data/local-ipv4')
      return void res.writeHead(200).end(ip);
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return { server, url: `http://127.0.0.1:${port}`, log };
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number) {
  return new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stop(pid: number) {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

/** True once the lead's node CLI can run a node (until then a stub stands in for `oklog`). */
function realNodeAvailable(): boolean {
  const r = spawnSync(process.execPath, [join(REPO, 'cli/oklog.js'), 'ingeststore', '-h'], {
    timeout: 20_000,
    stdio: 'ignore',
  });
  return r.status === 0;
}

/** Stand-in `oklog`: records its argv, answers /health on the -api port, exits 0 on SIGTERM. */
const STUB_OKLOG = `#!/usr/bin/env node
const http = require('node:http');
const fs = require('node:fs');
const argv = process.argv.slice(2);
fs.writeFileSync(process.env.STUB_ARGV_FILE, JSON.stringify(argv));
const api = argv[argv.indexOf('-api') + 1];
const m = /^tcp:\\/\\/([^:]+):(\\d+)$/.exec(api);
const server = http.createServer((req, res) => res.writeHead(req.url === '/health' ? 200 : 404).end('ok'));
server.listen(Number(m[2]), m[1]);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
`;

describe('infra/userdata/node-start.sh: the node-start part, run locally', () => {
  const real = realNodeAvailable();
  const dir = mkdtempSync(join(tmpdir(), 'oklog-node-start-'));
  const root = join(dir, 'root');
  const bin = join(dir, 'bin');
  const data = join(dir, 'data');
  const pidFile = join(dir, 'oklog.pid');
  const logFile = join(dir, 'oklog.log');
  const awsLog = join(dir, 'aws.log');
  const signalLog = join(dir, 'cfn-signal.log');
  const argvFile = join(dir, 'argv.json');
  let imds: Imds;
  let ports: number[];
  let result: { code: number | null; out: string };

  before(async () => {
    mkdirSync(bin);
    if (real) symlinkSync(join(REPO, 'cli/oklog.js'), join(bin, 'oklog'));
    else writeFileSync(join(bin, 'oklog'), STUB_OKLOG, { mode: 0o755 });
    // Discovery: this node (127.0.0.1) and one other member.
    writeFileSync(
      join(bin, 'aws'),
      `#!/bin/sh\necho "$*" >>"${awsLog}"\nprintf '127.0.0.1\\t127.0.0.3\\n'\n`,
      { mode: 0o755 },
    );
    writeFileSync(join(bin, 'cfn-signal'), `#!/bin/sh\necho "$*" >>"${signalLog}"\n`, { mode: 0o755 });
    chmodSync(join(bin, 'oklog'), 0o755);
    imds = await startImds('127.0.0.1');
    ports = await freePorts(5);
    const [api, fast, durable, bulk, cluster] = ports;
    const env: NodeJS.ProcessEnv = {
      PATH: `${bin}:${process.env.PATH}`,
      HOME: dir,
      STUB_ARGV_FILE: argvFile,
      OKLOG_ROOT: root,
      OKLOG_IMDS_URL: imds.url,
      OKLOG_SKIP_PROVISION: '1',
      OKLOG_NO_SYSTEMD: '1',
      OKLOG_PID_FILE: pidFile,
      OKLOG_LOG_FILE: logFile,
      OKLOG_UNIT_SOURCE: UNIT_FILE,
      OKLOG_MODE: 'ingeststore',
      OKLOG_DATA_DIR: data,
      OKLOG_BIND: '127.0.0.1',
      OKLOG_API_PORT: String(api),
      OKLOG_FAST_PORT: String(fast),
      OKLOG_DURABLE_PORT: String(durable),
      OKLOG_BULK_PORT: String(bulk),
      OKLOG_CLUSTER_PORT: String(cluster),
      OKLOG_REPLICATION_FACTOR: '1',
      OKLOG_RETAIN: '24h',
      OKLOG_DISCOVERY_TAG_KEY: 'oklog:cluster',
      OKLOG_DISCOVERY_TAG_VALUE: 'test-cluster',
      OKLOG_REGION: 'eu-west-1',
      OKLOG_CFN_STACK: 'OkLog',
      OKLOG_CFN_RESOURCE: 'ClusterStoreFleetGroupASG',
      OKLOG_CFN_SIGNAL: join(bin, 'cfn-signal'),
      OKLOG_HEALTH_TIMEOUT: '40',
    };
    result = await run('bash', [NODE_START_SCRIPT], env, 50_000);
  });

  after(async () => {
    if (existsSync(pidFile)) await stop(Number(readFileSync(pidFile, 'utf8').trim()));
    await new Promise((r) => imds?.server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it(`starts ${real ? 'a real oklog node' : 'the stand-in oklog (cli/oklog.js cannot run a node yet)'} that answers /health`, async (t) => {
    if (!real)
      t.diagnostic('node CLI not ready: `node cli/oklog.js ingeststore -h` failed; used a stub oklog');
    const log = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    assert.equal(result.code, 0, `${result.out}\n--- node log ---\n${log}`);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    assert.ok(alive(pid), 'node process is running');
    const res = await fetch(`http://127.0.0.1:${ports[0]}/health`);
    assert.equal(res.status, 200);
  });

  it('fetched the private IPv4 with an IMDSv2 token and advertises it', () => {
    assert.deepEqual(imds.log, [
      'PUT /latest/api/token token=-',
      `GET /latest/meta-data/local-ipv4 token=${TOKEN}`,
    ]);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    const argv = real
      ? readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
      : (JSON.parse(readFileSync(argvFile, 'utf8')) as string[]);
    const args = argv.slice(argv.indexOf('ingeststore'));
    const [api, fast, durable, bulk, cluster] = ports;
    assert.deepEqual(args, [
      'ingeststore',
      ...['-api', `tcp://127.0.0.1:${api}`, '-cluster', `tcp://127.0.0.1:${cluster}`],
      ...['-cluster.advertise-addr', '127.0.0.1', '-peer', `127.0.0.3:${cluster}`],
      ...['-ingest.fast', `tcp://127.0.0.1:${fast}`, '-ingest.durable', `tcp://127.0.0.1:${durable}`],
      ...['-ingest.bulk', `tcp://127.0.0.1:${bulk}`, '-ingest.path', `${data}/ingest`],
      ...[
        '-store.path',
        `${data}/store`,
        '-store.segment-replication-factor',
        '1',
        '-store.segment-retain',
        '24h',
      ],
    ]);
  });

  it('discovered peers by cluster tag, pending or running, excluding itself', () => {
    assert.equal(
      readFileSync(awsLog, 'utf8').trim(),
      'ec2 describe-instances --region eu-west-1 --filters Name=tag:oklog:cluster,Values=test-cluster ' +
        'Name=instance-state-name,Values=pending,running --query Reservations[].Instances[].PrivateIpAddress --output text',
    );
  });

  it('installed the unit and environment file, and signalled success to CloudFormation', () => {
    assert.equal(
      readFileSync(join(root, 'etc/systemd/system/oklog.service'), 'utf8'),
      readFileSync(UNIT_FILE, 'utf8'),
    );
    const env = readFileSync(join(root, 'etc/oklog/oklog.env'), 'utf8');
    assert.match(env, /^OKLOG_MODE=ingeststore$/m);
    assert.match(
      env,
      /^OKLOG_FLAGS="-api tcp:\/\/127\.0\.0\.1:\d+ .*-cluster\.advertise-addr 127\.0\.0\.1 .*"$/m,
    );
    // The data dir is not /var/lib/oklog: a drop-in makes it writable under ProtectSystem=strict.
    assert.equal(
      readFileSync(join(root, 'etc/systemd/system/oklog.service.d/data-dir.conf'), 'utf8'),
      `[Service]\nReadWritePaths=${data}\nWorkingDirectory=${data}\n`,
    );
    assert.equal(
      readFileSync(signalLog, 'utf8').trim(),
      '-e 0 --stack OkLog --resource ClusterStoreFleetGroupASG --region eu-west-1',
    );
  });

  it('fails and signals failure when the metadata endpoint refuses (no node started)', async () => {
    const refusing = createServer((_req, res) => res.writeHead(401).end());
    await new Promise<void>((r) => refusing.listen(0, '127.0.0.1', r));
    const sub = join(dir, 'fail');
    const signals = join(sub, 'signal.log');
    mkdirSync(sub);
    writeFileSync(join(sub, 'cfn-signal'), `#!/bin/sh\necho "$*" >>"${signals}"\n`, { mode: 0o755 });
    try {
      const r = await run(
        'bash',
        [NODE_START_SCRIPT],
        {
          PATH: process.env.PATH,
          OKLOG_ROOT: join(sub, 'root'),
          OKLOG_DATA_DIR: join(sub, 'data'),
          OKLOG_IMDS_URL: `http://127.0.0.1:${(refusing.address() as { port: number }).port}`,
          OKLOG_SKIP_PROVISION: '1',
          OKLOG_NO_SYSTEMD: '1',
          OKLOG_PID_FILE: join(sub, 'pid'),
          OKLOG_UNIT_SOURCE: UNIT_FILE,
          OKLOG_CFN_STACK: 'OkLog',
          OKLOG_CFN_RESOURCE: 'Group',
          OKLOG_CFN_SIGNAL: join(sub, 'cfn-signal'),
        },
        20_000,
      );
      assert.notEqual(r.code, 0, r.out);
      assert.equal(readFileSync(signals, 'utf8').trim(), '-e 1 --stack OkLog --resource Group');
      assert.equal(existsSync(join(sub, 'pid')), false);
    } finally {
      await new Promise((r) => refusing.close(r));
    }
  });
});
