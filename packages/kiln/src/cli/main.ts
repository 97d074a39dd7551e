#!/usr/bin/env node
import { runCli } from "./program.js";

const code = await runCli(process.argv);
// Exit explicitly: a transport or timer left open by a failed call must not keep the CLI alive,
// and stdout is flushed first so piped output is complete.
process.stdout.write("", () => process.exit(code));
