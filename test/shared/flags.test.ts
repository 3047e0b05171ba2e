import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type FlagSpec, parseFlags, usage } from '../../shared/flags.ts';

const specs: FlagSpec[] = [
  { name: 'debug', kind: 'bool', default: false, help: 'debug logging' },
  { name: 'api', kind: 'string', default: 'tcp://0.0.0.0:7650', help: 'API address' },
  { name: 'n', kind: 'int', default: 1, help: 'count' },
  { name: 'peer', kind: 'strings', default: [], help: 'peers' },
];

test('Go flag forms', () => {
  const p = parseFlags(specs, [
    '-debug',
    '--api=tcp://x:1',
    '-n',
    '5',
    '-peer',
    'a',
    '-peer=b',
    'pos1',
    '-notaflag',
  ]);
  assert.equal(p.values.debug, true);
  assert.equal(p.values.api, 'tcp://x:1');
  assert.equal(p.values.n, 5);
  assert.deepEqual(p.values.peer, ['a', 'b']);
  assert.deepEqual(p.positional, ['pos1', '-notaflag']);
  assert.deepEqual([...p.set].sort(), ['api', 'debug', 'n', 'peer']);
  assert.equal(parseFlags(specs, ['-debug=false']).values.debug, false);
  assert.deepEqual(parseFlags(specs, ['--', '-debug']).positional, ['-debug']);
  assert.equal(parseFlags(specs, ['-h']).help, true);
});

test('flag errors are typed', () => {
  assert.throws(() => parseFlags(specs, ['-nope']), /flag provided but not defined: -nope/);
  assert.throws(() => parseFlags(specs, ['-api']), /flag needs an argument/);
  assert.throws(() => parseFlags(specs, ['-n', 'x']), /not an integer/);
  assert.throws(() => parseFlags(specs, ['-debug=maybe']), /invalid boolean/);
});

test('usage lists every flag with its default', () => {
  const u = usage('oklog ingest', specs);
  assert.match(u, /^USAGE\n {2}oklog ingest \[flags\]/);
  assert.match(u, /-api tcp:\/\/0\.0\.0\.0:7650 +API address/);
  assert.match(u, /-debug false/);
});
