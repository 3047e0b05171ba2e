import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatDuration, parseDuration, parseRfc3339, parseTimeArg } from '../../shared/time.ts';

test('Go durations plus days', () => {
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('90s'), 90_000);
  assert.equal(parseDuration('1.5h'), 5_400_000);
  assert.equal(parseDuration('2d'), 172_800_000);
  assert.equal(parseDuration('100ms'), 100);
  assert.equal(parseDuration('-5m'), -300_000);
  assert.equal(parseDuration('0'), 0);
  for (const bad of ['', '5', 'm', '5x', '1h 30m', 'abc'])
    assert.throws(() => parseDuration(bad), { code: 'OKLOG_ERR_INVALID_ARGUMENT' }, bad);
});

test('time arguments: now, durations ago (sign ignored), RFC 3339', () => {
  const now = 1_700_000_000_000;
  assert.equal(parseTimeArg('now', now), now);
  assert.equal(parseTimeArg('NOW', now), now);
  assert.equal(parseTimeArg('5m', now), now - 300_000);
  assert.equal(parseTimeArg('-5m', now), now - 300_000);
  assert.equal(parseTimeArg('2d', now), now - 172_800_000);
  assert.equal(parseTimeArg('2024-01-02T03:04:05Z', now), Date.UTC(2024, 0, 2, 3, 4, 5));
  assert.equal(parseTimeArg('2024-01-02T03:04:05.678+01:00', now), Date.UTC(2024, 0, 2, 2, 4, 5, 678));
  assert.equal(parseRfc3339('2018-01-01T00:00:00.12345Z'), Date.UTC(2018, 0, 1, 0, 0, 0, 123));
  assert.throws(() => parseTimeArg('yesterday', now), { code: 'OKLOG_ERR_INVALID_TIME' });
  assert.throws(() => parseTimeArg('2024-13-02T03:04:05Z', now), { code: 'OKLOG_ERR_INVALID_TIME' });
});

test('formatDuration renders Go duration strings', () => {
  assert.equal(formatDuration(3000), '3s');
  assert.equal(formatDuration(5_400_000), '1h30m0s');
  assert.equal(formatDuration(2.316), '2.316ms');
  assert.equal(formatDuration(0), '0s');
  assert.equal(formatDuration(0.5), '500µs');
  assert.equal(formatDuration(61_500), '1m1.5s');
});
