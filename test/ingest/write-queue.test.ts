// WriteQueue and the node-wide IngestMemory budget: queued bytes are charged until written,
// batches go out together, a failed write drops (and reports) what follows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IngestMemory, WriteQueue } from '../../node/ingest/write-queue.ts';
import type { Writer } from '../../node/ingest/writer.ts';

/** A writer whose writes finish when the test says so. */
class GatedWriter {
  calls: { bytes: number; records: number; sync: boolean }[] = [];
  private gates: (() => void)[] = [];
  fail = false;
  write(bufs: readonly Buffer[], records: number, sync = false): Promise<void> {
    this.calls.push({ bytes: bufs.reduce((n, b) => n + b.length, 0), records, sync });
    return new Promise((resolve, reject) => {
      this.gates.push(() => (this.fail ? reject(new Error('disk full')) : resolve()));
    });
  }
  async open(): Promise<void> {
    while (this.gates.length === 0) await new Promise((r) => setImmediate(r));
    this.gates.shift()?.();
  }
}

test('queued bytes of all connections are charged to one budget until written', async () => {
  const memory = new IngestMemory(100);
  const w1 = new GatedWriter();
  const w2 = new GatedWriter();
  const q1 = new WriteQueue(w1 as unknown as Writer, memory, false);
  const q2 = new WriteQueue(w2 as unknown as Writer, memory, true);
  q1.push(Buffer.alloc(40), 4);
  q2.push(Buffer.alloc(50), 5);
  assert.equal(memory.used, 90);
  assert.equal(memory.full, false);
  const p1 = q1.pump();
  await new Promise((r) => setImmediate(r)); // the first batch is being written
  q1.push(Buffer.alloc(20), 2);
  assert.equal(memory.full, true, 'both connections together reached the budget');
  await w1.open();
  await new Promise((r) => setImmediate(r));
  assert.equal(memory.used, 70, 'the written batch is released');
  await w1.open(); // the second batch: the 20 bytes queued meanwhile, in one write
  await p1;
  assert.deepEqual(
    w1.calls.map((c) => [c.bytes, c.records]),
    [
      [40, 4],
      [20, 2],
    ],
  );
  assert.equal(memory.used, 50);
  const p2 = q2.pump();
  await w2.open();
  await p2;
  assert.equal(w2.calls[0].sync, true, 'durable queues fsync');
  assert.equal(memory.used, 0);
  assert.ok(q1.empty && q2.empty);
});

test('after a failed write later batches are dropped and reported; clear() releases the rest', async () => {
  const memory = new IngestMemory(1000);
  const w = new GatedWriter();
  let dropped = 0;
  const q = new WriteQueue(w as unknown as Writer, memory, false, (n) => {
    dropped += n;
  });
  q.push(Buffer.alloc(10), 1);
  const p = q.pump();
  await new Promise((r) => setImmediate(r)); // the first batch is being written
  q.push(Buffer.alloc(10), 3);
  w.fail = true;
  await w.open();
  await p;
  assert.equal(q.failed, true);
  assert.equal(w.calls.length, 1, 'nothing written after the failure');
  assert.equal(dropped, 3);
  assert.equal(memory.used, 0);
  q.push(Buffer.alloc(7), 1);
  q.clear();
  assert.equal(memory.used, 0);
  await q.idle();
});
