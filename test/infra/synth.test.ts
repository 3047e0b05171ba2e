// `npx cdk synth` exactly as a user runs it, with no credentials and (where the kernel allows a
// network namespace) no network at all: cdk.json turns off notices, telemetry and version checks,
// the stack makes no lookups, the release is packed locally, and cdk-nag fails synthesis on any
// unacknowledged finding.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { REPO } from './helpers.ts';

/** A prefix that runs a command without network access, if this host allows one. */
function offlinePrefix(): string[] {
  for (const args of [['-rn'], ['-n']]) {
    if (spawnSync('unshare', [...args, 'true'], { stdio: 'ignore' }).status === 0)
      return ['unshare', ...args];
  }
  return [];
}

function synth(out: string, extra: string[], timeoutMs: number) {
  const prefix = offlinePrefix();
  const argv = [...prefix, 'npx', 'cdk', 'synth', '--output', out, '--quiet', ...extra];
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    CDK_DISABLE_VERSION_CHECK: '1',
    CDK_DISABLE_CLI_TELEMETRY: '1',
    AWS_EC2_METADATA_DISABLED: 'true',
    npm_config_update_notifier: 'false',
  };
  return new Promise<{ code: number | null; out: string; offline: boolean }>((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    child.stderr.on('data', (d) => (text += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out: text, offline: prefix.length > 0 });
    });
  });
}

describe('npx cdk synth', () => {
  const out = mkdtempSync(join(tmpdir(), 'oklog-cdk-out-'));
  after(() => rmSync(out, { recursive: true, force: true }));

  it('synthesizes the default app offline, packing the release, with cdk-nag clean', {
    timeout: 90_000,
  }, async (t) => {
    const r = await synth(out, [], 85_000);
    if (!r.offline) t.diagnostic('unshare is not permitted here: ran without a network namespace');
    assert.equal(r.code, 0, r.out);
    assert.doesNotMatch(r.out, /AwsSolutions|ERROR/);

    const template = JSON.parse(readFileSync(join(out, 'OkLog.template.json'), 'utf8'));
    const types = Object.values(template.Resources as Record<string, { Type: string }>).map((x) => x.Type);
    assert.equal(types.filter((x) => x === 'AWS::AutoScaling::AutoScalingGroup').length, 2);
    assert.equal(types.includes('AWS::CDK::Metadata'), false, 'versionReporting is off');

    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    assert.equal(manifest.missing, undefined, 'no context lookups');

    // The release tarball (npm pack of this checkout) is the S3 asset the instances install.
    const assets = JSON.parse(readFileSync(join(out, 'OkLog.assets.json'), 'utf8'));
    const files = Object.values(assets.files as Record<string, { source: { path: string } }>);
    const release = files.find((f) => f.source.path.endsWith('.tgz'));
    assert.ok(release, JSON.stringify(assets.files));
    assert.ok(existsSync(join(out, release.source.path)));
    const listing = spawnSync('tar', ['-tzf', join(out, release.source.path)], { encoding: 'utf8' });
    assert.equal(listing.status, 0, listing.stderr);
    for (const f of ['package/package.json', 'package/cli/oklog.js', 'package/infra/install.sh']) {
      assert.ok(listing.stdout.split('\n').includes(f), `release has ${f}`);
    }
    assert.ok(readdirSync(out).includes('cdk.out'));
  });
});
