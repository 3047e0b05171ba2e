// memberlist's TransmitLimitedQueue: broadcasts waiting to be piggybacked on outgoing packets,
// ordered by fewest transmits first, then largest message, then newest. A broadcast about a node
// replaces an older one about the same node. Each is sent RetransmitMult × ceil(log10(n+1)) times.

export interface Broadcast {
  /** The node the message is about; a newer broadcast about it replaces this one. */
  name: string;
  msg: Buffer;
  /** Called once when the broadcast has been sent its last time or was replaced. */
  finished?: () => void;
}

interface Item {
  b: Broadcast;
  transmits: number;
  id: number;
}

export function retransmitLimit(retransmitMult: number, n: number): number {
  return retransmitMult * Math.ceil(Math.log10(n + 1));
}

export class TransmitLimitedQueue {
  private items: Item[] = [];
  private idGen = 0;

  constructor(
    private readonly retransmitMult: number,
    private readonly numNodes: () => number,
    /** Most queued broadcasts; beyond it the most-transmitted are dropped. */
    private readonly maxQueued = 4096,
  ) {}

  get length(): number {
    return this.items.length;
  }

  queue(b: Broadcast): void {
    const old = this.items.findIndex((it) => it.b.name === b.name);
    if (old >= 0) {
      const [prev] = this.items.splice(old, 1);
      prev.b.finished?.();
    }
    this.items.push({ b, transmits: 0, id: ++this.idGen });
    if (this.items.length > this.maxQueued) this.prune(this.maxQueued);
  }

  /** Drops the most-transmitted broadcasts until at most `max` remain. */
  prune(max: number): void {
    if (this.items.length <= max) return;
    this.items.sort(compare);
    for (const it of this.items.splice(max)) it.b.finished?.();
  }

  /** Messages that fit in `limit` bytes, counting `overhead` bytes per message. */
  getBroadcasts(overhead: number, limit: number): Buffer[] {
    if (this.items.length === 0) return [];
    const transmitLimit = retransmitLimit(this.retransmitMult, this.numNodes());
    this.items.sort(compare);
    const out: Buffer[] = [];
    let used = 0;
    const keep: Item[] = [];
    for (const it of this.items) {
      const free = limit - used - overhead;
      if (free <= 0) {
        keep.push(it);
        continue;
      }
      if (it.b.msg.length > free) {
        keep.push(it);
        continue;
      }
      used += overhead + it.b.msg.length;
      out.push(it.b.msg);
      if (it.transmits + 1 >= transmitLimit) it.b.finished?.();
      else {
        it.transmits++;
        keep.push(it);
      }
    }
    this.items = keep;
    return out;
  }

  reset(): void {
    const items = this.items;
    this.items = [];
    for (const it of items) it.b.finished?.();
  }
}

function compare(a: Item, b: Item): number {
  if (a.transmits !== b.transmits) return a.transmits - b.transmits;
  if (a.b.msg.length !== b.b.msg.length) return b.b.msg.length - a.b.msg.length;
  return b.id - a.id;
}
