#!/usr/bin/env node
// The `kiln` command. npm links a package's bin while it installs, before `prepare` builds dist/, so the
// bin is this file, which is in git from the start: `npx kiln` works after the first `npm install`.
const entry = new URL("../dist/cli/main.js", import.meta.url);
try {
  await import(entry.href);
} catch (err) {
  if (err?.code !== "ERR_MODULE_NOT_FOUND" || !String(err.message).includes(entry.pathname)) throw err;
  process.stderr.write(
    "error: kiln is not built yet (no dist/cli/main.js): run `npm run build`, or `npm install` in a checkout\n",
  );
  process.exit(1);
}
