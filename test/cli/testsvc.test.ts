// `oklog testsvc`: line format, exact sizes, counter, stderr lines, cycle maths, errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cycle, makeBodies } from '../../cli/testsvc.ts';
import { type Proc, sleep, spawnTs, waitFor } from '../helpers/index.ts';
import { run } from './helpers.ts';

test('cycle timing doubles until at least 50 ms; bodies have spaces every 5–19 chars', () => {
  assert.deepEqual(cycle(5), { recordsPerCycle: 1, cycleNs: 200_000_000 });
  assert.deepEqual(cycle(100), { recordsPerCycle: 8, cycleNs: 80_000_000 });
  assert.deepEqual(cycle(1000), { recordsPerCycle: 64, cycleNs: 64_000_000 });
  for (const b of makeBodies(300, 50)) {
    assert.equal(b.length, 300);
    assert.match(b.toString(), /^[0-9A-HJKMNP-TV-Z]([0-9A-HJKMNP-TV-Z ]*[0-9A-HJKMNP-TV-Z])?$/);
    // Words of wordLen-1 characters (wordLen in 5..19), the last one possibly shorter.
    const words = b.toString().split(' ').slice(0, -1);
    assert.ok(words.every((w) => w.length === words[0].length && w.length >= 4 && w.length <= 18));
  }
});

test('emits -size byte lines `<RFC3339> <id> <%09d> <body>` at -rate', async () => {
  const p = spawnTs('cli/oklog.ts', ['testsvc', '-id', 'bar', '-size', '100', '-rate', '200']);
  try {
    await waitFor(() => p.stdout().split('\n').length > 60, 'some lines', 10_000);
    assert.equal(await p.kill('SIGTERM'), 0);
    const lines = p.stdout().split('\n').slice(0, -1);
    lines.forEach((l, i) => {
      assert.equal(Buffer.byteLength(l) + 1, 100, 'exactly -size bytes with the newline');
      const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)) bar (\d{9}) [0-9A-Z ]+$/.exec(l);
      assert.ok(m, l);
      assert.equal(Number(m[2]), i + 1, 'counter from 1');
    });
    assert.match(
      p.stderr(),
      /^reticulating splines\.\.\.\nbar starting, 100 bytes\/record, 200 records\/sec; 16 records\/cycle, 80ms\/cycle\n/,
    );
  } finally {
    await p.kill('SIGKILL');
  }
});

test('too small -size names the minimum; -h shows defaults', async () => {
  const r = await run('cli/oklog.ts', ['testsvc', '-id', 'x', '-size', '10']);
  assert.equal(r.code, 1);
  // "<20-char UTC time> x 000000001 " is 33 bytes, plus one body byte and the newline.
  const tz = new Date().getTimezoneOffset() === 0 ? 20 : 25;
  assert.match(r.stderr, new RegExp(`with -id "x", minimum -size is ${tz + 13 + 2}\\n$`));
  const h = await run('cli/oklog.ts', ['testsvc', '-h']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /-id foo/);
  assert.match(h.stdout, /-size 512/);
  assert.match(h.stdout, /-rate 5/);
});

/** Sends SIGTERM and resolves with the exit code, or 'hung' if it is still running after 3 s. */
async function termWithin3s(p: Proc): Promise<number | string> {
  process.kill(-p.pid, 'SIGTERM');
  const hung = sleep(3000).then(() => 'hung');
  return await Promise.race([p.exited, hung]);
}

test('SIGTERM stops it while stdout is blocked (`testsvc | sleep 30`)', async () => {
  const p = spawnTs('cli/oklog.ts', ['testsvc', '-rate', '10000']);
  try {
    p.child.stdout!.pause(); // nobody reads: the pipe fills and the write waits
    await waitFor(() => p.stderr().includes('starting'), 'started');
    await sleep(500);
    assert.equal(await termWithin3s(p), 0);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('SIGTERM stops it when -rate is more than it can produce', async () => {
  // 1e8 records/s: cycles of 2^23 records, always behind schedule.
  const p = spawnTs('cli/oklog.ts', ['testsvc', '-rate', '100000000', '-size', '60']);
  try {
    await waitFor(() => p.stdout().length > 1_000_000, 'output flowing');
    assert.equal(await termWithin3s(p), 0);
    const lines = p.stdout().split('\n').slice(0, -1);
    assert.ok(
      lines.every((l) => Buffer.byteLength(l) === 59),
      'whole lines of -size bytes',
    );
  } finally {
    await p.kill('SIGKILL');
  }
});
