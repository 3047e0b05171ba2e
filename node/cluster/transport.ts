// What the gossip layer needs from the network: datagrams and byte streams on one port. The real
// implementation binds UDP (node:dgram) and TCP (node:net) to the same port, as memberlist does;
// tests substitute an in-memory network with simulated time.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIPv4, isIPv6, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { GossipError } from './errors.ts';
import type { HostPort } from './ip.ts';
import { MAX_PACKET_BYTES } from './packet.ts';

export interface StreamConn {
  readonly remote: HostPort;
  write(buf: Buffer): void;
  /** Chunks as they arrive (registering starts the flow). */
  onData(fn: (chunk: Buffer) => void): void;
  /** Called once when no more data will come: peer closed, error or destroy. */
  onClose(fn: (err?: Error) => void): void;
  /** Flushes pending writes, then closes. */
  end(): void;
  destroy(): void;
}

export interface Transport {
  /** The bound port (the real one when asked for port 0). */
  readonly port: number;
  sendPacket(buf: Buffer, to: HostPort): void;
  setPacketHandler(fn: (buf: Buffer, from: HostPort) => void): void;
  setStreamHandler(fn: (conn: StreamConn) => void): void;
  dial(to: HostPort, timeoutMs: number): Promise<StreamConn>;
  close(): Promise<void>;
}

/** Wraps a connected net.Socket. */
export function socketConn(sock: Socket): StreamConn {
  let closed = false;
  const closers: Array<(err?: Error) => void> = [];
  let lastErr: Error | undefined;
  const fire = () => {
    if (closed) return;
    closed = true;
    for (const fn of closers) fn(lastErr);
  };
  sock.on('error', (err) => {
    lastErr = err;
    fire();
  });
  sock.on('end', fire);
  sock.on('close', fire);
  const remote: HostPort = {
    host: (sock.remoteAddress ?? '').replace(/^::ffff:/, ''),
    port: sock.remotePort ?? 0,
  };
  return {
    remote,
    write: (buf) => {
      if (!sock.destroyed) sock.write(buf);
    },
    onData: (fn) => {
      sock.on('data', fn);
    },
    onClose: (fn) => {
      if (closed) fn(lastErr);
      else closers.push(fn);
    },
    end: () => {
      sock.end();
    },
    destroy: () => {
      sock.destroy();
      fire();
    },
  };
}

export interface NetTransportOptions {
  /** IP literal to bind, or '' / 0.0.0.0 / :: for every interface. */
  host: string;
  port: number;
  /** Most concurrent inbound TCP connections (memberlist allows 128 push/pulls). */
  maxConnections?: number;
  /** SO_RCVBUF asked for (memberlist asks for 2 MiB). */
  recvBufferSize?: number;
}

/** UDP and TCP on the same port. */
export class NetTransport implements Transport {
  private packetHandler: (buf: Buffer, from: HostPort) => void = () => {};
  private streamHandler: (conn: StreamConn) => void = (c) => c.destroy();
  private readonly accepted = new Set<Socket>();
  private readonly dialing = new Set<Socket>();
  private closed = false;

  private constructor(
    private readonly server: Server,
    private readonly udp: UdpSocket,
    readonly port: number,
    private readonly udp6: boolean,
  ) {
    server.on('connection', (sock) => {
      if (this.closed) {
        sock.destroy();
        return;
      }
      this.accepted.add(sock);
      sock.on('close', () => this.accepted.delete(sock));
      sock.setNoDelay(true);
      this.streamHandler(socketConn(sock));
    });
    udp.on('message', (msg, rinfo) => {
      this.packetHandler(msg, { host: rinfo.address.replace(/^::ffff:/, ''), port: rinfo.port });
    });
    udp.on('error', () => {}); // send errors are per-datagram; the socket stays usable
  }

  static async listen(o: NetTransportOptions): Promise<NetTransport> {
    const wildcard6 = o.host === '::';
    const host = o.host === '' ? '0.0.0.0' : o.host;
    const udp6 = isIPv6(host);
    if (!isIPv4(host) && !udp6) throw new GossipError(`cannot bind gossip to ${JSON.stringify(o.host)}`);
    let lastErr: unknown;
    for (let attempt = 0; attempt < (o.port === 0 ? 10 : 1); attempt++) {
      const server = createServer({ noDelay: true });
      server.maxConnections = o.maxConnections ?? 256;
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host, port: o.port, ipv6Only: false }, () => {
            server.off('error', reject);
            resolve();
          });
        });
      } catch (err) {
        lastErr = err;
        server.close();
        continue;
      }
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : o.port;
      const udp = createSocket({
        type: udp6 ? 'udp6' : 'udp4',
        ipv6Only: !wildcard6 && udp6,
        recvBufferSize: o.recvBufferSize ?? 2 * 1024 * 1024,
      });
      try {
        await new Promise<void>((resolve, reject) => {
          udp.once('error', reject);
          udp.bind({ address: host, port, exclusive: true }, () => {
            udp.off('error', reject);
            resolve();
          });
        });
      } catch (err) {
        lastErr = err;
        udp.close();
        await new Promise<void>((r) => server.close(() => r()));
        continue;
      }
      return new NetTransport(server, udp, port, udp6);
    }
    throw new GossipError(`binding gossip to ${host}:${o.port}: ${(lastErr as Error)?.message ?? 'failed'}`, {
      host,
      port: o.port,
    });
  }

  sendPacket(buf: Buffer, to: HostPort): void {
    if (this.closed || buf.length > MAX_PACKET_BYTES) return;
    const host = this.udp6 && isIPv4(to.host) ? `::ffff:${to.host}` : to.host;
    if (!this.udp6 && !isIPv4(to.host)) return; // an IPv4 socket cannot reach an IPv6 peer
    try {
      this.udp.send(buf, to.port, host, () => {});
    } catch {
      // closed socket or invalid address: the datagram is lost, as UDP may lose it anyway
    }
  }

  setPacketHandler(fn: (buf: Buffer, from: HostPort) => void): void {
    this.packetHandler = fn;
  }

  setStreamHandler(fn: (conn: StreamConn) => void): void {
    this.streamHandler = fn;
  }

  dial(to: HostPort, timeoutMs: number): Promise<StreamConn> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new GossipError('transport closed'));
        return;
      }
      const sock = tcpConnect({ host: to.host, port: to.port, noDelay: true });
      this.dialing.add(sock);
      const done = () => {
        clearTimeout(timer);
        this.dialing.delete(sock);
      };
      const timer = setTimeout(() => {
        done();
        sock.destroy();
        reject(new GossipError(`dial ${to.host}:${to.port}: timeout after ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('error', (err) => {
        done();
        reject(new GossipError(`dial ${to.host}:${to.port}: ${err.message}`, {}, { cause: err }));
      });
      sock.once('close', () => {
        done();
        reject(new GossipError(`dial ${to.host}:${to.port}: closed`));
      });
      sock.once('connect', () => {
        done();
        sock.removeAllListeners('error');
        sock.removeAllListeners('close');
        if (this.closed) {
          sock.destroy();
          reject(new GossipError('transport closed'));
          return;
        }
        resolve(socketConn(sock));
      });
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.accepted) s.destroy();
    for (const s of this.dialing) s.destroy();
    await Promise.all([
      new Promise<void>((r) => this.server.close(() => r())),
      new Promise<void>((r) => {
        try {
          this.udp.close(() => r());
        } catch {
          r();
        }
      }),
    ]);
  }
}
