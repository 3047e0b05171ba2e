import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseAddr, peerAddress } from '../../shared/addr.ts';

test('every form OK Log accepts', () => {
  assert.deepEqual(parseAddr('localhost', 7650), {
    network: 'tcp',
    host: 'localhost',
    port: 7650,
    address: 'localhost:7650',
  });
  assert.deepEqual(parseAddr('MyHost:1234', 7650), {
    network: 'tcp',
    host: 'myhost',
    port: 1234,
    address: 'myhost:1234',
  });
  assert.deepEqual(parseAddr('tcp://0.0.0.0:7651', 1), {
    network: 'tcp',
    host: '0.0.0.0',
    port: 7651,
    address: '0.0.0.0:7651',
  });
  assert.deepEqual(parseAddr('udp://host', 7659), {
    network: 'udp',
    host: 'host',
    port: 7659,
    address: 'host:7659',
  });
  assert.deepEqual(parseAddr('tcp+dnssrv://logs.example', 7651).network, 'tcp+dnssrv');
  assert.deepEqual(parseAddr('tcp://[::1]:7650', 1), {
    network: 'tcp',
    host: '::1',
    port: 7650,
    address: '[::1]:7650',
  });
  assert.equal(parseAddr('127.0.0.1', 7650).address, '127.0.0.1:7650');
});

test('the bare forms OK Log wrongly rejects', () => {
  assert.equal(parseAddr('127.0.0.1:7650', 1).address, '127.0.0.1:7650');
  assert.deepEqual(parseAddr('[::1]:7650', 1), {
    network: 'tcp',
    host: '::1',
    port: 7650,
    address: '[::1]:7650',
  });
  assert.deepEqual(parseAddr(':7650', 1), { network: 'tcp', host: '', port: 7650, address: ':7650' });
  assert.equal(parseAddr('tcp://[::1]', 7650).address, '[::1]:7650');
  assert.equal(parseAddr('my_host:80', 1).address, 'my_host:80');
  assert.equal(parseAddr('::1', 7650).address, '[::1]:7650');
});

test('malformed addresses are rejected with a clear error', () => {
  for (const bad of [
    '',
    'tcp://host/path',
    'host:port',
    'host:99999',
    'tcp://',
    '[::1',
    'a b',
    'http://u@h:1',
  ]) {
    assert.throws(() => parseAddr(bad, 7650), { code: 'OKLOG_ERR_INVALID_ADDRESS' }, bad);
  }
});

test('peerAddress: an IPv4 client of a dual-stack listener is shown as IPv4, IPv6 bracketed', () => {
  assert.equal(peerAddress({ remoteAddress: '::ffff:10.0.0.5', remotePort: 4000 }), '10.0.0.5:4000');
  assert.equal(peerAddress({ remoteAddress: '127.0.0.1', remotePort: 1 }), '127.0.0.1:1');
  assert.equal(peerAddress({ remoteAddress: '::1', remotePort: 2 }), '[::1]:2');
  assert.equal(peerAddress({ remoteAddress: 'fd00::ffff:1', remotePort: 3 }), '[fd00::ffff:1]:3');
  assert.equal(peerAddress({}), '?:?');
});
