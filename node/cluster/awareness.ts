// Lifeguard's local health awareness: a score 0…max−1 that stretches probe intervals and
// timeouts (× (score+1)) while this node itself seems unhealthy (missed nacks, refuting
// accusations), so a stalled node does not accuse healthy peers.

export class Awareness {
  private score = 0;

  constructor(private readonly max: number) {}

  applyDelta(delta: number): void {
    this.score = Math.min(this.max - 1, Math.max(0, this.score + delta));
  }

  get healthScore(): number {
    return this.score;
  }

  scaleTimeout(ms: number): number {
    return ms * (this.score + 1);
  }
}
