// What the gossip layer needs from the network: datagrams and byte streams on one port. The real
// implementation binds UDP (node:dgram) and TCP (node:net) to the same port, as memberlist does;
// tests substitute an in-memory network with simulated time. A wildcard bind (`''`, `0.0.0.0`,
// `::`) listens dual-stack on `::`, as Go memberlist does on 0.0.0.0: the advertise address is
// chosen among every interface's addresses, IPv6 ones included, and must be reachable whichever
// family it is. Peers' IPv4-mapped addresses are turned back into IPv4 here, once, so the protocol
// above never sees `::ffff:a.b.c.d`.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIPv4, isIPv6, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { GossipError } from './errors.ts';
import { type HostPort, hostPortString, isWildcard, unmapIp } from './ip.ts';
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

/** Which peers a transport can reach: `dual` both families, else only the one it is bound to. */
export type TransportFamily = 'dual' | 'ipv4' | 'ipv6';

export interface Transport {
  /** The bound port (the real one when asked for port 0). */
  readonly port: number;
  /** Address families it reaches (absent: any, as the simulated network). */
  readonly family?: TransportFamily;
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
    host: unmapIp(sock.remoteAddress ?? ''),
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
  /** IP literal to bind, or '' / 0.0.0.0 / :: for every interface (dual-stack). */
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
    readonly family: TransportFamily,
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
      this.packetHandler(msg, { host: unmapIp(rinfo.address), port: rinfo.port });
    });
    udp.on('error', () => {}); // send errors are per-datagram; the socket stays usable
  }

  /**
   * Binds UDP and TCP on one port. A wildcard host binds `::` dual-stack, falling back to
   * 0.0.0.0 (IPv4 only) where the kernel has no IPv6; a specific address binds only its family.
   */
  static async listen(o: NetTransportOptions): Promise<NetTransport> {
    if (!isWildcard(o.host)) {
      if (!isIPv4(o.host) && !isIPv6(o.host))
        throw new GossipError(`cannot bind gossip to ${JSON.stringify(o.host)}`);
      return NetTransport.listenOn(o, o.host, isIPv4(o.host) ? 'ipv4' : 'ipv6');
    }
    try {
      return await NetTransport.listenOn(o, '::', 'dual');
    } catch (err) {
      if (!noIpv6(err)) throw err;
      return NetTransport.listenOn(o, '0.0.0.0', 'ipv4');
    }
  }

  private static async listenOn(
    o: NetTransportOptions,
    host: string,
    family: TransportFamily,
  ): Promise<NetTransport> {
    let lastErr: unknown;
    for (let attempt = 0; attempt < (o.port === 0 ? 10 : 1); attempt++) {
      const server = createServer({ noDelay: true });
      server.maxConnections = o.maxConnections ?? 256;
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host, port: o.port, ipv6Only: family === 'ipv6' }, () => {
            server.off('error', reject);
            resolve();
          });
        });
      } catch (err) {
        lastErr = err;
        server.close();
        if (noIpv6(err)) break;
        continue;
      }
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : o.port;
      const udp = createSocket({
        type: family === 'ipv4' ? 'udp4' : 'udp6',
        ipv6Only: family === 'ipv6',
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
        if (noIpv6(err)) break;
        continue;
      }
      return new NetTransport(server, udp, port, family);
    }
    throw new GossipError(
      `binding gossip to ${host.includes(':') ? `[${host}]` : host}:${o.port}: ${(lastErr as Error)?.message ?? 'failed'}`,
      { host, port: o.port },
      { cause: lastErr },
    );
  }

  sendPacket(buf: Buffer, to: HostPort): void {
    if (this.closed || buf.length > MAX_PACKET_BYTES) return;
    const v4 = isIPv4(to.host);
    // A socket of one family cannot reach the other: the datagram is lost, as UDP may lose it.
    if ((this.family === 'ipv4' && !v4) || (this.family === 'ipv6' && v4)) return;
    const host = this.family === 'dual' && v4 ? `::ffff:${to.host}` : to.host;
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
        reject(new GossipError(`dial ${hostPortString(to)}: timeout after ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('error', (err) => {
        done();
        reject(new GossipError(`dial ${hostPortString(to)}: ${err.message}`, {}, { cause: err }));
      });
      sock.once('close', () => {
        done();
        reject(new GossipError(`dial ${hostPortString(to)}: closed`));
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

/** What a bind fails with where the kernel has no IPv6 (disabled, or built without it). */
function noIpv6(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EAFNOSUPPORT' || code === 'EADDRNOTAVAIL' || code === 'EPROTONOSUPPORT';
}
