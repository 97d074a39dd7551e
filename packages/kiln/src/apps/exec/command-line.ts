import type { JobSpec, ScriptInterpreter } from "@kiln/protocol/jobs";
import { constants } from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import type { WorkDir } from "./work-dir.js";

/** Variables a job inherits from the executor; everything else it gets is set here or by the job. */
const INHERITED_ENV = ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/** Programs tried, in order, for each interpreter; `node` is the executor's own Node.js. */
const INTERPRETER_PROGRAMS: Record<ScriptInterpreter, string[]> = {
  sh: ["sh"],
  bash: ["bash"],
  node: [process.execPath],
  python: ["python3", "python"],
};

/**
 * The environment a job's command runs with: a few inherited variables
 * (PATH, HOME, locale…), TMPDIR inside the working directory, the job's ids,
 * then the job's own variables, which win. The executor's other variables
 * (tokens, endpoints) are not passed on.
 *
 * @example
 * jobEnvironment(spec, dir, { sessionId: "s1", taskId: "3" }) // { PATH: "…", TMPDIR: "…/.kiln/tmp", KILN_TASK_ID: "3", … }
 */
export function jobEnvironment(
  spec: JobSpec,
  dir: WorkDir,
  ids: { sessionId: string; taskId: string },
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const name of INHERITED_ENV) if (process.env[name] !== undefined) env[name] = process.env[name];
  Object.assign(env, { TMPDIR: dir.tmp, KILN_SESSION_ID: ids.sessionId, KILN_TASK_ID: ids.taskId });
  return Object.assign(env, spec.env);
}

async function findOnPath(program: string, searchPath: string | undefined): Promise<string | undefined> {
  if (program.includes("/")) return program;
  for (const dir of (searchPath ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, program);
    if (
      await fsp.access(candidate, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return candidate;
  }
  return undefined;
}

/**
 * The argv that runs a job: its command as given, or its interpreter on the
 * script, written to `.kiln/script` first. An interpreter that is not
 * installed keeps its first name, so running it fails as "command not found".
 *
 * @example
 * await jobArgv({ …spec, script: { interpreter: "python", source: "print(1)" } }, dir, env)
 * // ["/usr/bin/python3", "<root>/.kiln/script"]
 */
export async function jobArgv(spec: JobSpec, dir: WorkDir, env: NodeJS.ProcessEnv): Promise<string[]> {
  if (spec.command) return spec.command;
  const script = spec.script!;
  const file = path.join(dir.own, "script");
  await fsp.writeFile(file, script.source, { flag: "wx", mode: 0o600 });
  const programs = INTERPRETER_PROGRAMS[script.interpreter];
  for (const program of programs) {
    const found = await findOnPath(program, env.PATH);
    if (found) return [found, file];
  }
  return [programs[0]!, file];
}
