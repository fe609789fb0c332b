#!/usr/bin/env node
// The fleetgate command: runs cli/main.ts through tsx (TypeScript without a build step). It holds no
// logic of its own: everything, exit codes included, comes from main().
'use strict';

const { setTimeout } = require('node:timers');

// A reader that stops early (`fleetgate model list | head -1`) closes the pipe: end quietly then.
process.stdout.on('error', (err) => {
  if (err && err.code === 'EPIPE') process.exit(0);
  throw err;
});

require('tsx/cjs');
const { main } = require('../cli/main.ts');

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Output is flushed by now; a client handle left open must not keep the command alive.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (err) => {
    console.error(`fleetgate: ${err && err.message ? err.message : String(err)}`);
    process.exit(1);
  },
);
