// `oklog forward` as a real process against real sockets: a TCP sink for the fast port and a
// fake `/ingest/write` for -ack.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { autoWindowBytes } from '../../cli/forward/resend-window.ts';
import { freePort, sleep, waitFor } from '../helpers/index.ts';
import {
  FakeHttp,
  lineNumbers,
  metric,
  numberedLines,
  run,
  startForward,
  TcpSink,
  writeStdin,
} from './helpers.ts';

const sinks: TcpSink[] = [];
const servers: FakeHttp[] = [];
after(async () => {
  for (const s of sinks) await s.close();
  for (const s of servers) await s.close();
});

async function sink(port?: number): Promise<TcpSink> {
  const s = await TcpSink.start(port);
  sinks.push(s);
  return s;
}

/** Every number 1..n appears at least once and the received order never goes backwards except
 *  where a resend starts (a reconnect); returns the number of duplicates. */
function checkAtLeastOnce(nums: number[], n: number): number {
  const seen = new Set(nums);
  for (let i = 1; i <= n; i++) assert.ok(seen.has(i), `line ${i} lost`);
  assert.ok(!seen.has(-1), 'garbled line');
  return nums.length - seen.size;
}

test('100k lines arrive exactly, in order; % and binary bytes untouched; CRLF → LF; -prefix', async () => {
  const s = await sink();
  const lines: Buffer[] = [];
  const expected: Buffer[] = [];
  for (let i = 0; i < 100_000; i++) {
    const text = Buffer.from(`${i} 100% done %s %d %!x `);
    const bin = Buffer.from([i & 0xff, 0x00, 0xff, 0x80, 0xc3, 0x28]);
    const body = Buffer.concat([text, bin]).map((c) => (c === 0x0a ? 0x0b : c)) as Buffer;
    const crlf = i % 3 === 0;
    lines.push(body, Buffer.from(crlf ? '\r\n' : '\n'));
    expected.push(Buffer.from('app=web env=prod '), body, Buffer.from('\n'));
  }
  const input = Buffer.concat(lines);
  const r = await run('cli/oklog.ts', ['forward', '-prefix', 'app=web', '-prefix', 'env=prod', s.address], {
    input,
  });
  assert.equal(r.code, 0, r.stderr);
  await waitFor(() => s.bytes >= Buffer.concat(expected).length, 'all bytes at the sink');
  assert.ok(s.raw().equals(Buffer.concat(expected)), 'byte-exact stream');
  assert.equal(s.connections.length, 1);
});

test('several ingesters: a dead one is skipped; a failing one hands over to the next', async () => {
  const a = await sink();
  const b = await sink();
  const dead = await freePort();
  const p = startForward([`127.0.0.1:${dead}`, a.address, b.address]);
  try {
    await writeStdin(p, numberedLines(20_000));
    await waitFor(() => a.lines().length + b.lines().length >= 20_000, 'first half delivered');
    // Whichever sink is in use goes away; the forwarder must move to the other one.
    const used = a.bytes > 0 ? a : b;
    const other = used === a ? b : a;
    await used.close();
    await writeStdin(p, numberedLines(20_000, 'payload', 20_001));
    p.child.stdin!.end();
    assert.equal(await p.exited, 0, p.stderr());
    const nums = lineNumbers([...used.lines(), ...other.lines()]);
    checkAtLeastOnce(nums, 40_000);
    assert.ok(other.lines().length > 0, 'the other ingester took over');
    assert.match(p.stderr(), /connection lost/);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('ingester restart mid-stream: reconnects, the record in flight and the window are resent', async () => {
  const s = await sink();
  const p = startForward([s.address]);
  try {
    await writeStdin(p, numberedLines(30_000));
    await waitFor(() => s.lines().length >= 30_000, 'first batch delivered');
    await s.close();
    // Written while the ingester is down: must wait in the buffer, then arrive.
    await writeStdin(p, numberedLines(30_000, 'payload', 30_001));
    await sleep(300);
    await s.listen();
    await writeStdin(p, numberedLines(30_000, 'payload', 60_001));
    p.child.stdin!.end();
    assert.equal(await p.exited, 0, p.stderr());
    const nums = lineNumbers(s.lines());
    const dups = checkAtLeastOnce(nums, 90_000);
    // In order within each connection.
    const second = lineNumbers(
      Buffer.concat(s.connections.at(-1)!).toString('latin1').split('\n').slice(0, -1),
    );
    for (let i = 1; i < second.length; i++) assert.ok(second[i] > second[i - 1], 'ordered after reconnect');
    // 21-byte lines; the window (auto: at least 16 MiB) keeps whole writes of up to 256 KiB beyond it.
    assert.ok(
      dups * 21 <= autoWindowBytes() + 256 * 1024,
      `duplicates bounded by the resend window: ${dups}`,
    );
  } finally {
    await p.kill('SIGKILL');
  }
});

test('drop-oldest with a stalled ingester drops and counts; the rest arrives in order', async () => {
  const s = await sink();
  s.pause();
  const apiPort = await freePort();
  const total = 600_000;
  const p = startForward([
    '-buffer-size',
    '1000',
    '-on-full',
    'drop-oldest',
    '-resend-window',
    '0',
    '-api',
    `127.0.0.1:${apiPort}`,
    s.address,
  ]);
  try {
    const input = numberedLines(total, 'x'.repeat(20));
    await writeStdin(p, input);
    p.child.stdin!.end();
    const metrics = `http://127.0.0.1:${apiPort}/metrics`;
    const dropped = await waitFor(async () => {
      const v = await metric(metrics, 'oklog_forward_dropped_records_total{reason="buffer_full"}');
      return Math.max(v, 0);
    }, 'drops counted');
    assert.ok(dropped > 0);
    assert.equal((await fetch(`http://127.0.0.1:${apiPort}/health`)).status, 200);
    s.resume();
    assert.equal(await p.exited, 0, p.stderr());
    const nums = lineNumbers(s.lines());
    for (let i = 1; i < nums.length; i++) assert.ok(nums[i] > nums[i - 1], 'a subsequence in order');
    assert.equal(nums.at(-1), total, 'the newest record arrives');
    const m = /dropped records in total" buffer_full=(\d+)/.exec(p.stderr());
    assert.ok(m, p.stderr());
    assert.equal(nums.length + Number(m[1]), total, 'received + dropped = sent');
  } finally {
    await p.kill('SIGKILL');
  }
});

test('block mode applies backpressure: stdin is not consumed while the ingester stalls', async () => {
  const s = await sink();
  s.pause();
  const total = 600_000;
  const p = startForward(['-buffer-size', '1000', s.address]);
  try {
    const input = numberedLines(total, 'x'.repeat(20));
    let consumed = false;
    const written = writeStdin(p, input).then(() => {
      consumed = true;
    });
    await sleep(1500);
    assert.equal(consumed, false, 'the forwarder stopped reading stdin');
    s.resume();
    await written;
    p.child.stdin!.end();
    assert.equal(await p.exited, 0, p.stderr());
    assert.ok(s.raw().equals(input), 'everything, exactly, in order');
    assert.doesNotMatch(p.stderr(), /dropped/);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('-max-record-size drops longer lines with a count, not an exit', async () => {
  const s = await sink();
  const input = `short\n${'y'.repeat(5000)}\nafter\n${'z'.repeat(200)}`;
  const r = await run('cli/oklog.ts', ['forward', '-max-record-size', '100', s.address], { input });
  assert.equal(r.code, 0, r.stderr);
  await waitFor(() => s.lines().length >= 2, 'lines');
  assert.deepEqual(s.lines(), ['short', 'after']);
  assert.match(r.stderr, /too_long=2/);
});

test('-max-record-size counts the -prefix; a -prefix with a newline is a usage error', async () => {
  const s = await sink();
  // "host=a " is 7 bytes: a 93-byte line makes a 100-byte record, a 94-byte one is too long.
  const input = `${'k'.repeat(93)}\n${'d'.repeat(94)}\n`;
  const r = await run(
    'cli/oklog.ts',
    ['forward', '-max-record-size', '100', '-prefix', 'host=a', s.address],
    {
      input,
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(s.lines(), [`host=a ${'k'.repeat(93)}`]);
  assert.match(r.stderr, /too_long=1/);
  const nl = await run('cli/oklog.ts', ['forward', '-prefix', 'a\nb', s.address], { input: 'x\n' });
  assert.equal(nl.code, 2);
  assert.match(nl.stderr, /^oklog forward: -prefix must not contain a newline\nUSAGE/);
  const big = await run('cli/oklog.ts', ['forward', '-max-record-size', '4', '-prefix', 'long', s.address]);
  assert.equal(big.code, 2);
  assert.match(big.stderr, /leaves no room under -max-record-size/);
});

test('resend window: a stalled ingester that dies keeps nothing older than the age from being resent', async () => {
  // The ingester stops reading: the socket buffers fill and writes block (backpressure). It then
  // dies (RST: whatever it had not read is gone) well after -resend-window-age. Everything
  // written on that connection must be sent again; an age limit alone dropped it.
  const s = await sink();
  s.pause();
  const total = 200_000; // ~8.6 MB: more than loopback buffers of a reader that stopped
  const p = startForward(['-resend-window-age', '300ms', s.address]);
  try {
    await writeStdin(p, numberedLines(total, 'x'.repeat(20)));
    await waitFor(() => p.stderr().includes('msg=connected'), 'connected');
    await sleep(1500);
    await s.close();
    s.resume();
    await s.listen();
    p.child.stdin!.end();
    assert.equal(await p.exited, 0, p.stderr());
    assert.match(p.stderr(), /connection lost/);
    const dups = checkAtLeastOnce(lineNumbers(s.lines()), total);
    assert.ok(dups < total, `${dups} duplicates`);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('resend window: a slow ingester (1 MB/s) behind a faster producer loses nothing at a reset', async () => {
  const s = await sink();
  s.throttle(1_000_000);
  const total = 150_000; // ~6.5 MB
  const p = startForward(['-resend-window-age', '500ms', s.address]);
  try {
    await writeStdin(p, numberedLines(total, 'x'.repeat(20)));
    await waitFor(() => s.bytes > 2_000_000, 'the slow reader got going');
    // Megabytes written long before (> age) still sit unread in the socket buffers.
    await s.close();
    s.throttle(0);
    await s.listen();
    p.child.stdin!.end();
    assert.equal(await p.exited, 0, p.stderr());
    checkAtLeastOnce(lineNumbers(s.lines()), total);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('end of input: exits 0 only once a slow ingester has read everything (its FIN)', async () => {
  const s = await sink();
  s.throttle(1_000_000);
  const input = numberedLines(100_000, 'x'.repeat(20)); // ~4.3 MB: about 4 s at 1 MB/s
  const r = await run('cli/oklog.ts', ['forward', s.address], { input });
  assert.equal(r.code, 0, r.stderr);
  // Checked at once, not waited for: the forwarder may exit only after the ingester read it all.
  assert.equal(s.bytes, input.length, 'everything read when the forwarder exited');
  assert.equal(s.eofs, 1);
});

test('end of input: an ingester that never confirms gives a warning with a count and exit 1', async () => {
  const s = await sink();
  s.pause();
  const r = await run('cli/oklog.ts', ['forward', '-close-timeout', '1s', s.address], {
    input: numberedLines(5000),
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /the ingester did not confirm it read everything.* records=5000 /);
  assert.match(r.stderr, /level=error msg="records written but not confirmed by the ingester" records=5000/);
});

test('-resend-window 0: an ingester that never confirms is exit 1 too, at the close timeout and at a signal', async () => {
  const s = await sink();
  s.pause();
  const r = await run('cli/oklog.ts', ['forward', '-resend-window', '0', '-close-timeout', '1s', s.address], {
    input: numberedLines(5000),
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /records written but not confirmed by the ingester" records=5000/);
  const p = startForward(['-resend-window', '0', s.address]);
  try {
    await writeStdin(p, numberedLines(100));
    p.child.stdin!.end();
    await waitFor(() => p.stderr().includes('msg=connected'), 'connected');
    await sleep(300); // written, waiting for the ingester's close
    assert.equal(await p.kill('SIGTERM'), 1, p.stderr());
    assert.match(p.stderr(), /records written but not confirmed by the ingester" records=100/);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('end of input with -resend-window 0: a reset before the ingester confirmed is exit 1, not 0', async () => {
  const s = await sink();
  s.pause();
  const p = startForward(['-resend-window', '0', s.address]);
  try {
    await writeStdin(p, numberedLines(3000));
    p.child.stdin!.end();
    await waitFor(() => p.stderr().includes('msg=connected'), 'connected');
    await sleep(300);
    await s.close(); // RST: the unread records are gone, and there is no window to send again
    assert.equal(await p.exited, 1, p.stderr());
    assert.match(p.stderr(), /records in socket buffers may be lost \(-resend-window 0\)/);
    assert.match(p.stderr(), /records written but not confirmed by the ingester" records=3000/);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('no ingester reachable: one rate-limited warning and retrying; -give-up exits 1 with a count', async () => {
  const dead = await freePort();
  const p = startForward([`127.0.0.1:${dead}`]);
  try {
    await writeStdin(p, 'hi\n');
    p.child.stdin!.end();
    await waitFor(() => p.stderr().includes('no ingester reachable'), 'the warning');
    await sleep(2500); // several attempts (backoff up to ~1 s), still one line
    assert.equal(p.child.exitCode, null, 'keeps retrying after end of input (never loses by default)');
    const warnings = p.stderr().match(/level=warn msg="no ingester reachable; still retrying[^\n]*/g) ?? [];
    assert.equal(warnings.length, 1, p.stderr());
    assert.match(warnings[0], new RegExp(`ingesters="127\\.0\\.0\\.1:${dead}: [^"]*ECONNREFUSED`));
    assert.match(warnings[0], /records_waiting=1 give_up=never/);
  } finally {
    await p.kill('SIGKILL');
  }
  const r = await run('cli/oklog.ts', ['forward', '-give-up', '1s', `127.0.0.1:${dead}`], {
    input: 'hi\nthere\n',
  });
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    new RegExp(
      `\noklog forward: gave up after 1s \\(-give-up\\): no ingester reachable \\(127\\.0\\.0\\.1:${dead}: [^)]*\\); 2 record\\(s\\) not delivered\n$`,
    ),
  );
});

test('tcp+dns:// resolves (and -topic becomes the first prefix word)', async () => {
  const s = await sink();
  const r = await run('cli/oklog.ts', ['forward', '-topic', 'web', `tcp+dns://localhost:${s.port}`], {
    input: 'hello\n',
  });
  assert.equal(r.code, 0, r.stderr);
  await waitFor(() => s.lines().length >= 1, 'line');
  assert.deepEqual(s.lines(), ['web hello']);
});

test('-ack: a failed attempt is resent; exits 0 once every batch is acknowledged', async () => {
  const api = await FakeHttp.start();
  servers.push(api);
  let attempt = 0;
  const acked: string[] = [];
  api.handler = (req, res, body) => {
    attempt++;
    if (attempt === 1) {
      res.writeHead(503).end('try later\n');
      return;
    }
    if (attempt === 3) {
      req.socket.destroy(); // connection dropped before the answer
      return;
    }
    const text = body.toString();
    acked.push(text);
    const records = text.split('\n').length - 1;
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ records, bytes: body.length }));
  };
  const r = await run(
    'cli/oklog.ts',
    ['forward', '-ack', '-topic', 'audit', '-ack-batch-records', '1000', api.address],
    { input: numberedLines(5000) },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.ok(api.requests.every((q) => q.method === 'POST' && q.url === '/ingest/write?topic=audit'));
  const nums = lineNumbers(acked.join('').split('\n').slice(0, -1));
  checkAtLeastOnce(nums, 5000);
  for (let i = 1; i < nums.length; i++) assert.ok(nums[i] > nums[i - 1], 'in order');
  assert.ok(api.requests[0].body.equals(api.requests[1].body), 'the same batch was resent');
  assert.match(r.stderr, /batch not acknowledged; will resend/);
});

test('-ack: failures logged at most every 10 s; -give-up exits 1 with the unacknowledged count', async () => {
  const api = await FakeHttp.start();
  servers.push(api);
  api.handler = (_req, res) => res.writeHead(503).end('down\n');
  const r = await run('cli/oklog.ts', ['forward', '-ack', '-give-up', '2s', api.address], {
    input: numberedLines(30),
  });
  assert.equal(r.code, 1);
  assert.ok(api.requests.length >= 4, `retried: ${api.requests.length}`);
  const logged = r.stderr.match(/batch not acknowledged; will resend/g) ?? [];
  assert.equal(logged.length, 1, r.stderr);
  assert.match(
    r.stderr,
    /oklog forward: gave up after 2s \(-give-up\): no batch acknowledged \(.*503.*\); 30 record\(s\) not delivered\n$/,
  );
});

test('-ack: 413 splits the batch; a single record the ingester refuses is dropped and counted', async () => {
  const api = await FakeHttp.start();
  servers.push(api);
  const acked: string[] = [];
  api.handler = (_req, res, body) => {
    const text = body.toString();
    const records = text.split('\n').length - 1;
    if (records > 100 || text.includes('HUGE')) {
      res.writeHead(413).end('too large\n');
      return;
    }
    acked.push(text);
    res.writeHead(200).end(JSON.stringify({ records, bytes: body.length }));
  };
  const input = Buffer.concat([
    numberedLines(500),
    Buffer.from('HUGE\n'),
    numberedLines(500, 'payload', 501),
  ]);
  const r = await run('cli/oklog.ts', ['forward', '-ack', '-ack-batch-records', '1000', api.address], {
    input,
  });
  assert.equal(r.code, 0, r.stderr);
  const nums = lineNumbers(acked.join('').split('\n').slice(0, -1));
  assert.deepEqual(
    nums,
    Array.from({ length: 1000 }, (_, i) => i + 1),
    'every other record once, in order',
  );
  assert.match(r.stderr, /record rejected as too large by the ingester; dropped/);
  assert.match(r.stderr, /dropped records in total" buffer_full=0 too_long=1/);
});

test('-ack: a rejected batch (400) ends with one line and a non-zero exit', async () => {
  const api = await FakeHttp.start();
  servers.push(api);
  api.handler = (_req, res) => res.writeHead(400).end('invalid topic\n');
  const r = await run('cli/oklog.ts', ['forward', '-ack', api.address], { input: 'x\n' });
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /oklog forward: POST http:\/\/127\.0\.0\.1:\d+\/ingest\/write: 400 Bad Request: invalid topic/,
  );
});

test('signals: a full flush exits 0; a torn last line is not sent as a record', async () => {
  const s = await sink();
  const p = startForward([s.address]);
  try {
    await writeStdin(p, Buffer.concat([numberedLines(10_000), Buffer.from('half-writ')]));
    await waitFor(() => s.lines().length >= 10_000, 'lines delivered');
    process.kill(-p.pid, 'SIGTERM');
    assert.equal(await p.exited, 0, p.stderr());
    assert.deepEqual(
      lineNumbers(s.lines()),
      Array.from({ length: 10_000 }, (_, i) => i + 1),
    );
    assert.ok(!s.raw().includes('half-writ'), 'the torn line was not sent');
    assert.match(p.stderr(), /input stopped by a signal mid-line; that partial line is not sent" bytes=9/);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('signals: records that cannot get out are reported and the exit code is 1', async () => {
  const dead = await freePort();
  const p = startForward([`127.0.0.1:${dead}`]);
  try {
    await writeStdin(p, 'stuck\n');
    await waitFor(() => p.stderr().includes('no ingester reachable'), 'a failed connect');
    process.kill(-p.pid, 'SIGTERM');
    await waitFor(() => p.stderr().includes('flushing'), 'first signal handled');
    process.kill(-p.pid, 'SIGTERM'); // the second one does not wait for the grace period
    assert.equal(await p.exited, 1);
    assert.match(p.stderr(), /level=error msg="records not forwarded" records=1/);
  } finally {
    await p.kill('SIGKILL');
  }
});

test('forward: -h, bad flags, missing and bad addresses', async () => {
  const h = await run('cli/oklog.ts', ['forward', '-h']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /USAGE\n {2}oklog forward \[flags\] <ingester>/);
  assert.match(h.stdout, /-on-full block/);
  assert.match(h.stdout, /-buffer-size 16MiB/);
  const bad = await run('cli/oklog.ts', ['forward', '-nope', 'x']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^oklog forward: flag provided but not defined: -nope\nUSAGE/);
  const none = await run('cli/oklog.ts', ['forward']);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /specify at least one ingest address as an argument/);
  const addr = await run('cli/oklog.ts', ['forward', 'tcp://host/path']);
  assert.equal(addr.code, 1);
  assert.equal(addr.stderr, 'oklog forward: tcp://host/path: unsupported address format\n');
  const full = await run('cli/oklog.ts', ['forward', '-on-full', 'explode', 'x']);
  assert.equal(full.code, 2);
  assert.match(full.stderr, /-on-full must be block or drop-oldest/);
});
