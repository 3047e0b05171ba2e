#!/usr/bin/env node
// Runs the TypeScript entry point in-process through tsx (no build step, no child process).
import { register } from 'tsx/esm/api';

register();
await import('./oklogctl.ts');
