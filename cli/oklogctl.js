#!/usr/bin/env node
// The `oklogctl` command: runs cli/oklogctl.ts in this process (see launch.js: bundled once, cached).
import { launch } from './launch.js';

await launch(new URL('./oklogctl.ts', import.meta.url).pathname);
