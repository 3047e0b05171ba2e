// The stored record: `<ULID> <topic> <payload>\n` (reference §2.1).
import { ULID_LENGTH } from './ulid.ts';

export const NEWLINE = 0x0a;
export const SPACE = 0x20;
/** Bytes before the filterable text: ULID + space. */
export const RECORD_PREFIX_LENGTH = ULID_LENGTH + 1;
export const DEFAULT_TOPIC = 'default';
export const TOPIC_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;

export function isValidTopic(topic: string): boolean {
  return TOPIC_PATTERN.test(topic);
}

const TOPIC_START = new Uint8Array(256);
const TOPIC_CHAR = new Uint8Array(256);
for (let c = 0; c < 256; c++) {
  const ch = String.fromCharCode(c);
  if (/[A-Za-z0-9]/.test(ch)) {
    TOPIC_START[c] = 1;
    TOPIC_CHAR[c] = 1;
  }
  if (ch === '_' || ch === '-') TOPIC_CHAR[c] = 1;
}

/**
 * Length of the valid topic at the start of `buf[start..end)` followed by a space, or -1.
 * Used by dynamic-topic ingest and by the store's topic filter without making strings.
 */
export function topicLengthAt(buf: Uint8Array, start: number, end: number): number {
  if (start >= end || TOPIC_START[buf[start]] === 0) return -1;
  let i = start + 1;
  while (i < end && TOPIC_CHAR[buf[i]] === 1) i++;
  if (i >= end || buf[i] !== SPACE) return -1;
  return i - start;
}
