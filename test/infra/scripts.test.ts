// The systemd units (systemd-analyze verify, required directives), shellcheck on the user-data and
// install scripts, and infra/install.sh run into a temp root and as a dry run.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { NODE_START_SCRIPT, UNIT_FILE } from '../../infra/oklog-cluster.ts';
import { have, REPO } from './helpers.ts';

const INSTALL = join(REPO, 'infra/install.sh');
const FORWARD_UNIT = join(REPO, 'infra/systemd/oklog-forward.service');
const tmp = mkdtempSync(join(tmpdir(), 'oklog-scripts-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function directives(unit: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of readFileSync(unit, 'utf8').split('\n')) {
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (kv) m.set(kv[1], [...(m.get(kv[1]) ?? []), kv[2]]);
  }
  return m;
}

describe('systemd units', () => {
  const skip = !have('systemd-analyze') && 'systemd-analyze is not installed (run .ci/setup-system.sh)';
  for (const unit of [UNIT_FILE, FORWARD_UNIT]) {
    it(`systemd-analyze verify ${unit.slice(REPO.length + 1)}`, { skip }, () => {
      // ExecStart binaries (/usr/bin/env, /bin/sh) exist on any host, so verify checks them too.
      const r = spawnSync('systemd-analyze', ['verify', unit], {
        cwd: tmp,
        encoding: 'utf8',
        timeout: 20_000,
      });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.equal(r.stderr.trim(), '', 'no warnings');
    });
  }

  it('oklog.service: mode and flags from the environment file, graceful stop, hardening', () => {
    const d = directives(UNIT_FILE);
    const one = (k: string) => d.get(k)?.join(' ');
    assert.equal(one('EnvironmentFile'), '/etc/oklog/oklog.env');
    assert.equal(one('ExecStart'), '/usr/bin/env oklog $OKLOG_MODE $OKLOG_FLAGS');
    assert.equal(one('Restart'), 'on-failure');
    assert.equal(one('LimitNOFILE'), '65536');
    assert.equal(one('KillSignal'), 'SIGTERM');
    assert.ok(Number(one('TimeoutStopSec')) >= 60, 'time to flush');
    assert.equal(one('User'), 'oklog');
    for (const [k, v] of Object.entries({
      NoNewPrivileges: 'yes',
      ProtectSystem: 'strict',
      ReadWritePaths: '/var/lib/oklog',
      PrivateTmp: 'yes',
      ProtectHome: 'yes',
      ProtectKernelTunables: 'yes',
      ProtectKernelModules: 'yes',
      ProtectControlGroups: 'yes',
      RestrictAddressFamilies: 'AF_INET AF_INET6 AF_UNIX AF_NETLINK',
      CapabilityBoundingSet: '',
    })) {
      assert.equal(one(k), v, k);
    }
    // V8's JIT needs writable+executable pages.
    assert.equal(d.has('MemoryDenyWriteExecute'), false);
  });
});

describe('shellcheck', () => {
  const skip = !have('shellcheck') && 'shellcheck is not installed (run .ci/setup-system.sh)';
  for (const script of [NODE_START_SCRIPT, INSTALL]) {
    it(script.slice(REPO.length + 1), { skip }, () => {
      const r = spawnSync('shellcheck', ['-x', script], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(r.status, 0, r.stdout + r.stderr);
    });
  }
});

describe('infra/install.sh (bare metal)', () => {
  const install = (...args: string[]) =>
    spawnSync('bash', [INSTALL, ...args], { encoding: 'utf8', timeout: 20_000 });

  it('installs the unit and environment file for a store node into --root', () => {
    const root = join(tmp, 'store');
    // Never run without --root or --dry-run here: tests may run as root.
    const ok = install(
      ...['--mode', 'store', '--peer', '10.0.0.5', '--peer', '10.0.0.6:7000', '--advertise', '10.0.0.7'],
      ...['--data', '/var/lib/oklog', '--retain', '72h', '--root', root],
    );
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(
      readFileSync(join(root, 'etc/systemd/system/oklog.service'), 'utf8'),
      readFileSync(UNIT_FILE, 'utf8'),
    );
    assert.equal(
      readFileSync(join(root, 'etc/oklog/oklog.env'), 'utf8'),
      '# Written by oklog install.sh.\nOKLOG_MODE=store\n' +
        'OKLOG_FLAGS="-api tcp://0.0.0.0:7650 -cluster tcp://0.0.0.0:7659 -cluster.advertise-addr 10.0.0.7 ' +
        '-peer 10.0.0.5:7659 -peer 10.0.0.6:7000 -store.path /var/lib/oklog/store ' +
        '-store.segment-replication-factor 2 -store.segment-retain 72h"\n',
    );
    assert.equal(existsSync(join(root, 'etc/systemd/system/oklog.service.d/data-dir.conf')), false);
    assert.ok(existsSync(join(root, 'var/lib/oklog')));
  });

  it('a lone ingeststore defaults to replication factor 1; a custom data dir gets a drop-in', () => {
    const root = join(tmp, 'lone');
    const r = install('--mode', 'ingeststore', '--data', '/srv/oklog', '--flags', '-debug', '--root', root);
    assert.equal(r.status, 0, r.stderr);
    const env = readFileSync(join(root, 'etc/oklog/oklog.env'), 'utf8');
    assert.match(env, /-ingest\.path \/srv\/oklog\/ingest -store\.path \/srv\/oklog\/store /);
    assert.match(env, /-store\.segment-replication-factor 1 .*-debug"$/m);
    assert.equal(
      readFileSync(join(root, 'etc/systemd/system/oklog.service.d/data-dir.conf'), 'utf8'),
      '[Unit]\nRequiresMountsFor=/srv/oklog\n\n[Service]\nReadWritePaths=/srv/oklog\nWorkingDirectory=/srv/oklog\n',
    );
  });

  it('--dry-run prints the files and commands and writes nothing', () => {
    const r = install('--mode', 'ingest', '--peer', 'store-1.internal', '--dry-run');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /would write \/etc\/oklog\/oklog\.env/);
    assert.match(r.stdout, /^OKLOG_MODE=ingest$/m);
    assert.match(r.stdout, /-peer store-1\.internal:7659 -ingest\.path \/var\/lib\/oklog\/ingest"/);
    assert.match(r.stdout, /systemctl enable --now oklog\.service/);
  });

  it('rejects a bad mode, unknown options and shell metacharacters', () => {
    assert.equal(install('--mode', 'forward', '--dry-run').status, 2);
    assert.equal(install('--mode', 'store', '--bogus', '--dry-run').status, 2);
    assert.equal(install('--mode', 'store', '--flags', '-x "$(id)"', '--dry-run').status, 2);
    assert.equal(install('--mode', 'store', '--replication-factor', '0', '--dry-run').status, 2);
  });
});
