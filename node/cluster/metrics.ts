// Prometheus metrics of the gossip layer, registered on the node's registry (never the global one).
import { Counter, Gauge, type Registry } from 'prom-client';
import type { MemberlistStats, MemberView } from './memberlist.ts';

export interface ClusterMetrics {
  stats: MemberlistStats;
  joinAttempt(ok: boolean): void;
  stalePeerEntries(n: number): void;
}

export interface MetricSources {
  size: () => number;
  allMembers: () => MemberView[];
  healthScore: () => number;
}

export function clusterMetrics(registry: Registry, src: MetricSources): ClusterMetrics {
  const registers = [registry];
  new Gauge({
    name: 'oklog_cluster_size',
    help: 'Number of live members (alive or suspect), this node included.',
    registers,
    collect() {
      this.set(src.size());
    },
  });
  new Gauge({
    name: 'oklog_cluster_members',
    help: 'Known members by gossip state.',
    labelNames: ['state'],
    registers,
    collect() {
      const counts: Record<string, number> = { alive: 0, suspect: 0, dead: 0, left: 0 };
      for (const m of src.allMembers()) counts[m.state]++;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  new Gauge({
    name: 'oklog_cluster_health_score',
    help: 'Lifeguard local health score (0 is healthy); probe intervals are multiplied by score+1.',
    registers,
    collect() {
      this.set(src.healthScore());
    },
  });
  const dropped = new Counter({
    name: 'oklog_cluster_dropped_packets_total',
    help: 'Gossip packets, messages or streams dropped because they could not be decoded or were not acceptable.',
    labelNames: ['reason'],
    registers,
  });
  const packets = new Counter({
    name: 'oklog_cluster_packets_total',
    help: 'Gossip UDP packets by direction.',
    labelNames: ['direction'],
    registers,
  });
  const bytes = new Counter({
    name: 'oklog_cluster_packet_bytes_total',
    help: 'Gossip UDP bytes by direction.',
    labelNames: ['direction'],
    registers,
  });
  const probes = new Counter({
    name: 'oklog_cluster_probes_total',
    help: 'Failure-detector probes by outcome (ack, indirect, tcp, failed).',
    labelNames: ['result'],
    registers,
  });
  const pushPulls = new Counter({
    name: 'oklog_cluster_push_pulls_total',
    help: 'Push/pull state exchanges by direction and result.',
    labelNames: ['direction', 'result'],
    registers,
  });
  const rejected = new Counter({
    name: 'oklog_cluster_streams_rejected_total',
    help: 'Inbound gossip streams refused because too many were already open.',
    registers,
  });
  const joins = new Counter({
    name: 'oklog_cluster_join_attempts_total',
    help: 'Attempts to join through the -peer seeds, by result.',
    labelNames: ['result'],
    registers,
  });
  const stale = new Counter({
    name: 'oklog_cluster_stale_peer_entries_total',
    help: 'Peer-map entries received for members that are not live (ignored, never resurrected).',
    registers,
  });
  const staleAlives = new Counter({
    name: 'oklog_cluster_stale_alives_total',
    help: 'Alive messages ignored because they are about a member that died or left, at an incarnation not above its death.',
    registers,
  });
  return {
    stats: {
      drop: (reason) => dropped.inc({ reason }),
      probe: (result) => probes.inc({ result }),
      pushPull: (direction, ok) => pushPulls.inc({ direction, result: ok ? 'ok' : 'error' }),
      packet: (direction, n) => {
        packets.inc({ direction });
        bytes.inc({ direction }, n);
      },
      streamRejected: () => rejected.inc(),
      staleAlive: () => staleAlives.inc(),
    },
    joinAttempt: (ok) => joins.inc({ result: ok ? 'ok' : 'error' }),
    stalePeerEntries: (n) => {
      if (n > 0) stale.inc(n);
    },
  };
}
