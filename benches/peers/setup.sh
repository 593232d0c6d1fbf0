#!/bin/sh
# Install the TypeScript SDK peer (benches/peers/ts_echo.mjs) into
# benches/peers/node_modules, at the version pinned in package.json.
# Needs node >= 18 and npm. The `ts` benchmark target is skipped until this ran.
set -e
cd "$(dirname "$0")"
npm install --no-audit --no-fund --loglevel=error
node --version
node -e 'console.log("@modelcontextprotocol/sdk", require("./node_modules/@modelcontextprotocol/sdk/package.json").version)'
