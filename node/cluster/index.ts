// Public surface of node/cluster: flags, startCluster and the Cluster (a `Peers`), plus the
// building blocks tests and tools use.
import type { FlagSpec } from '../../shared/flags.ts';

export { type Advertise, calculateAdvertise } from './advertise.ts';
export {
  Cluster,
  type ClusterPeer,
  DEFAULT_CLUSTER_PORT,
  type GossipTuning,
  type StartClusterOptions,
  startCluster,
} from './cluster.ts';
export { Keyring } from './crypto.ts';
export { AdvertiseAddressError, GossipDecodeError, GossipError, KeyFileError } from './errors.ts';
export { GOSSIP_DEFAULTS, LAN_DEFAULTS, type MemberView } from './memberlist.ts';
export type { PeerEntry } from './peermap.ts';
export * from './peers.ts';
export { clusterRoutes, type PeerSource } from './routes.ts';

export function clusterFlagSpecs(): FlagSpec[] {
  return [
    { name: 'cluster', kind: 'string', default: 'tcp://0.0.0.0:7659', help: 'listen address for cluster' },
    {
      name: 'cluster.advertise-addr',
      kind: 'string',
      default: '',
      help: 'optional, explicit address to advertise',
    },
    {
      name: 'peer',
      kind: 'strings',
      default: [],
      help: 'cluster peer host[:port] (repeatable); retried until joined',
    },
    {
      name: 'cluster.key',
      kind: 'string',
      default: '',
      help: 'file of base64 AES keys (16/24/32 bytes), one per line or a JSON array, first is primary: encrypts gossip (read at start)',
    },
  ];
}
