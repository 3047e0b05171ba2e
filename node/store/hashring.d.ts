// Types for the parts of the `hashring` package (3.x, plain CommonJS, no bundled types) that
// placement.ts uses.
declare module 'hashring' {
  export default class HashRing {
    constructor(
      servers?: string[] | Record<string, unknown>,
      algorithm?: string,
      options?: Record<string, unknown>,
    );
    /** The server owning `key`. */
    get(key: string): string | undefined;
    /** Up to `size` servers walking the ring clockwise from `key`'s point (distinct when `unique`). */
    range(key: string, size?: number, unique?: boolean): string[];
  }
}
