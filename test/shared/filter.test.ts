import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compileFilter, parseRegexParam } from '../../node/store/filter.ts';

const rec = (s: string) => {
  const b = Buffer.from(`01ARZ3NDEKTSV4RRFFQ69G5FAV ${s}\n`);
  return [b, 0, b.length - 1] as const;
};

test('plain terms match topic and payload, case-sensitively', () => {
  const m = compileFilter({ q: 'error', regex: false });
  assert.ok(m(...rec('default an error here')));
  assert.ok(!m(...rec('default an ERROR here')));
  assert.ok(compileFilter({ q: 'default', regex: false })(...rec('default x')));
  assert.ok(compileFilter({ q: '', regex: false })(...rec('default x')));
});

test('plain search stays inside the record', () => {
  const b = Buffer.from('01ARZ3NDEKTSV4RRFFQ69G5FAV default aaa\n01ARZ3NDEKTSV4RRFFQ69G5FAW default bbb\n');
  const m = compileFilter({ q: 'bbb', regex: false });
  assert.ok(!m(b, 0, 38));
  assert.ok(m(b, 39, b.length - 1));
});

test('regex: $ matches at end of line, ^ at the topic; linear engine', () => {
  assert.ok(compileFilter({ q: 'done$', regex: true })(...rec('default job done')));
  assert.ok(compileFilter({ q: '^default ', regex: true })(...rec('default job')));
  const slow = compileFilter({ q: '(a+)+$', regex: true });
  const t = Date.now();
  assert.ok(!slow(...rec(`default ${'a'.repeat(5000)}b`)));
  assert.ok(Date.now() - t < 2000);
  assert.throws(() => compileFilter({ q: '(a', regex: true }), {
    code: 'OKLOG_ERR_INVALID_ARGUMENT',
    message: /compiling regex/,
  });
  assert.throws(() => compileFilter({ q: '(a)\\1', regex: true }), /compiling regex/);
});

test('topic filter selects exactly one topic', () => {
  const m = compileFilter({ q: '', regex: false, topic: 'web' });
  assert.ok(m(...rec('web GET /')));
  assert.ok(!m(...rec('webx GET /')));
  assert.ok(!m(...rec('db web')));
  assert.throws(() => compileFilter({ q: '', regex: false, topic: 'bad topic' }), {
    code: 'OKLOG_ERR_INVALID_ARGUMENT',
  });
});

test('regex=false means false', () => {
  assert.equal(parseRegexParam(undefined), false);
  assert.equal(parseRegexParam(''), true);
  assert.equal(parseRegexParam('true'), true);
  assert.equal(parseRegexParam('false'), false);
  assert.equal(parseRegexParam('0'), false);
});
