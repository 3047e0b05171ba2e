#!/usr/bin/env node
// The `oklog` command: runs cli/oklog.ts in this process (see launch.js: bundled once, cached).
import { launch } from './launch.js';

await launch(new URL('./oklog.ts', import.meta.url).pathname);
