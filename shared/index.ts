export * from './addr.ts';
export * from './errors.ts';
export * from './flags.ts';
export * from './record.ts';
export * from './time.ts';
export * from './ulid.ts';
