#!/usr/bin/env node
// Runs the TypeScript entry point in-process through tsx (no build step, no child process,
// so signals sent to this pid reach the node itself).
import { register } from 'tsx/esm/api';

register();
await import('./oklog.ts');
