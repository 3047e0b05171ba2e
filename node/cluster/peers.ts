// What the rest of the node needs from membership: who is alive, of which type, at which API
// address. The gossip implementation (Cluster) and StaticPeers (tests, a lone node) both provide it.

export type PeerType = 'ingest' | 'store' | 'ingeststore';
/** A role asked for: `ingest` matches ingest|ingeststore, `store` matches store|ingeststore. */
export type PeerRole = 'ingest' | 'store' | 'ingeststore';

export interface PeerInfo {
  /** Member name (a UUID per process start, as OK Log). */
  name: string;
  type: PeerType;
  /** `host:port` where the peer's HTTP API is reached. */
  apiAddr: string;
  /** `host:port` of its gossip endpoint, '' when not gossiping. */
  gossipAddr: string;
  state: 'alive' | 'suspect' | 'dead' | 'left';
}

export interface Peers {
  /** API addresses (`host:port`) of live peers serving `role`, this node included. */
  current(role: PeerRole): string[];
  /** Every known member with its state. */
  members(): PeerInfo[];
  /** This node's own API address as listed by `current` (null when unknown or not a member). */
  selfApiAddr?(): string | null;
}

export function typeServes(type: PeerType, role: PeerRole): boolean {
  if (role === 'ingeststore') return type === 'ingeststore';
  return type === role || type === 'ingeststore';
}

/** A fixed member list: a node without gossip, or tests. */
export class StaticPeers implements Peers {
  constructor(private readonly list: PeerInfo[]) {}
  current(role: PeerRole): string[] {
    return this.list.filter((p) => p.state === 'alive' && typeServes(p.type, role)).map((p) => p.apiAddr);
  }
  members(): PeerInfo[] {
    return [...this.list];
  }
}
