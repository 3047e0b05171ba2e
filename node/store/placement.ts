// Replica placement (DESIGN.md §6): a consistent hash ring (`hashring`, ketama-compatible) over
// the live store nodes, keyed by a segment's first ULID. The walk order from that key is the
// preference list: the first `replication-factor` nodes get the copies, and when one of them
// fails the next distinct node along the ring stands in. Deterministic for a given node set, so
// every consumer in the cluster places a segment alike, and a joining node takes over only about
// 1/N of the key space.
import HashRing from 'hashring';

export class Placement {
  private ringKey = '';
  private ring: HashRing | null = null;
  private members: string[] = [];

  /**
   * Every store node in ring order starting at `key`'s point. Node lists are normalised (sorted,
   * deduplicated) so the order does not depend on how membership listed them.
   */
  order(key: string, stores: readonly string[]): string[] {
    const members = [...new Set(stores)].sort();
    if (members.length === 0) return [];
    const ringKey = members.join('\n');
    if (ringKey !== this.ringKey || this.ring === null) {
      // Rebuilt only when membership changes: building hashes 160 points per node.
      this.ring = new HashRing(members);
      this.ringKey = ringKey;
      this.members = members;
    }
    const walk = this.ring.range(key, members.length, true);
    // hashring parses `host:port` itself; should it ever return a form we did not give it, fall
    // back to the remaining members in sorted order so the walk still covers every node once.
    const known = new Set(this.members);
    const out = walk.filter((n) => known.has(n));
    if (out.length < members.length) {
      const seen = new Set(out);
      for (const m of members) if (!seen.has(m)) out.push(m);
    }
    return out;
  }
}
