// `oklog testsvc`: a synthetic log producer (reference §8.3). Lines are exactly -size bytes:
// `<RFC3339 now> <id> <%09d counter> <body>\n`, bodies precomputed so the hot loop only formats a
// prefix. Emits -rate records per second in cycles of at least 50 ms.
import type { FlagSpec } from '../shared/flags.ts';
import { formatDuration } from '../shared/time.ts';
import { EXIT_OK, fail, Output, parseCommand, usageError } from './common.ts';
import { formatRfc3339Local } from './output.ts';

export const testsvcFlagSpecs: FlagSpec[] = [
  { name: 'id', kind: 'string', default: 'foo', help: 'ID for this instance' },
  { name: 'size', kind: 'int', default: 512, help: 'bytes per record' },
  { name: 'rate', kind: 'int', default: 5, help: 'records per second' },
];

const CHARSET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
/** Records built and written at a time within one cycle. */
const CHUNK_RECORDS = 1024;
const BODIES = 10_000;

/** `n` random bodies of `len` bytes: Crockford characters with a space every 5–19 characters. */
export function makeBodies(len: number, n = BODIES, random: () => number = Math.random): Buffer[] {
  const bodies: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const b = Buffer.allocUnsafe(len);
    const wordLen = 5 + Math.floor(random() * 15);
    for (let j = 0; j < len; j++) {
      // Never a space last, so the line keeps its exact size (OK Log trimmed it and came up short).
      b[j] =
        j % wordLen === wordLen - 1 && j !== len - 1 ? 0x20 : CHARSET.charCodeAt(Math.floor(random() * 32));
    }
    bodies.push(b);
  }
  return bodies;
}

/** Cycle length starts at 1s/rate and doubles (with the records per cycle) until ≥ 50 ms. */
export function cycle(rate: number): { recordsPerCycle: number; cycleNs: number } {
  let recordsPerCycle = 1;
  let cycleNs = Math.trunc(1e9 / rate);
  while (cycleNs < 50e6) {
    recordsPerCycle *= 2;
    cycleNs *= 2;
  }
  return { recordsPerCycle, cycleNs };
}

export async function main(argv: string[], name = 'oklog testsvc'): Promise<number> {
  const parsed = parseCommand(name, testsvcFlagSpecs, argv);
  if (typeof parsed === 'number') return parsed;
  const id = String(parsed.values.id);
  const size = parsed.values.size as number;
  const rate = parsed.values.rate as number;
  if (parsed.positional.length > 0)
    return usageError(name, testsvcFlagSpecs, `unexpected argument ${JSON.stringify(parsed.positional[0])}`);
  if (rate <= 0) return usageError(name, testsvcFlagSpecs, '-rate must be positive');

  process.stderr.write('reticulating splines...\n');
  const tslen = formatRfc3339Local(Date.now()).length;
  const presz = tslen + 1 + Buffer.byteLength(id) + 1 + 9 + 1; // "<ts> <id> 000000001 "
  const recsz = size - presz - 1; // prefix, body, newline
  if (recsz <= 0)
    return fail(name, new Error(`with -id ${JSON.stringify(id)}, minimum -size is ${presz + 2}`));
  const bodies = makeBodies(recsz);
  const { recordsPerCycle, cycleNs } = cycle(rate);
  const cycleMs = cycleNs / 1e6;

  let stop = false;
  let wake: (() => void) | null = null;
  const out = new Output(process.stdout, () => onSignal());
  const onSignal = () => {
    stop = true;
    wake?.();
    // A blocked stdout (`testsvc | sleep 30`) never drains by itself: release that wait too.
    out.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  let nBytes = 0;
  let nRecords = 0;
  let prevBytes = 0;
  let prevRecords = 0;
  let ticks = 0;
  const stats = setInterval(() => {
    const bps = nBytes - prevBytes;
    const rps = nRecords - prevRecords;
    prevBytes = nBytes;
    prevRecords = nRecords;
    if (++ticks % 10 === 0)
      process.stderr.write(` 1s average: ${bps.toFixed(2)} bytes/sec, ${rps.toFixed(2)} records/sec\n`);
  }, 1000);

  process.stderr.write(
    `${id} starting, ${size} bytes/record, ${rate} records/sec; ` +
      `${recordsPerCycle} records/cycle, ${formatDuration(cycleMs)}/cycle\n`,
  );
  const idPart = ` ${id} `;
  const nl = Buffer.from('\n');
  let count = 0;
  // Ticks are scheduled against absolute times, so a slow write does not drift the rate.
  let next = performance.now() + cycleMs;
  try {
    while (!stop) {
      const delay = next - performance.now();
      if (delay > 0) {
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, delay);
        });
        wake = null;
      } else {
        // Behind schedule (-rate beyond what we can produce): without a trip through the event
        // loop once per cycle, signals would never be handled.
        await new Promise<void>((r) => setImmediate(r));
      }
      if (stop) break;
      // Like Go's time.Tick, a producer that fell more than a cycle behind skips ticks, not bursts.
      next = Math.max(next + cycleMs, performance.now());
      // A cycle goes out in chunks: a huge -rate makes cycles of millions of records, which must
      // neither be built in memory at once nor keep signals waiting until they are done.
      for (let done = 0; done < recordsPerCycle && !stop; ) {
        const n = Math.min(CHUNK_RECORDS, recordsPerCycle - done);
        const parts: Buffer[] = [];
        for (let i = 0; i < n; i++) {
          count++;
          const prefix = `${formatRfc3339Local(Date.now())}${idPart}${String(count).padStart(9, '0')} `;
          parts.push(Buffer.from(prefix), bodies[count % bodies.length], nl);
        }
        const data = Buffer.concat(parts);
        if (!(await out.write(data))) {
          stop = true;
          break;
        }
        nBytes += data.length;
        nRecords += n;
        done += n;
        if (done < recordsPerCycle) await new Promise<void>((r) => setImmediate(r));
      }
    }
  } finally {
    clearInterval(stats);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (out.error) return fail(name, out.error);
  return EXIT_OK;
}
