import { InvalidArgumentError } from "../errors.js";
import { validateOutputSpec, validateRelativePath, type DeclaredOutput } from "./output-spec.js";
import { SCRIPT_INTERPRETERS, type JobSpec } from "./records.js";

/** The longest a job may run: a week. Longer work should checkpoint and run as several jobs. */
export const MAX_JOB_TIMEOUT_MS = 7 * 24 * 3600 * 1000;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function checkArg(field: string, value: unknown): void {
  if (typeof value !== "string") throw new InvalidArgumentError(field, "must be a string");
  // The OS takes arguments and variables as C strings: a NUL would silently cut them.
  if (value.includes("\0")) throw new InvalidArgumentError(field, "must not contain a NUL character");
}

/**
 * Checks everything about a job except where its input bytes are: the
 * command or script, input paths (relative, inside, unique) and modes, env
 * names, the timeout, the levels and the declared outputs. The client runs
 * it before submitting and the executor again before running; it returns
 * the declared outputs, flattened and most restrictive first.
 *
 * @example
 * const declared = validateJobSpec(spec); // throws InvalidArgumentError("job.env.1X", …) for a bad name
 */
export function validateJobSpec(spec: JobSpec): DeclaredOutput[] {
  if ((spec.command === undefined) === (spec.script === undefined))
    throw new InvalidArgumentError("job", "needs exactly one of command and script");
  if (spec.command !== undefined) {
    if (!Array.isArray(spec.command) || spec.command.length === 0)
      throw new InvalidArgumentError("job.command", "must be a non-empty array: the program, then its arguments");
    spec.command.forEach((arg, i) => checkArg(`job.command[${i}]`, arg));
    if (spec.command[0] === "") throw new InvalidArgumentError("job.command[0]", "must name a program");
  }
  if (spec.script !== undefined) {
    const interpreter: unknown = spec.script.interpreter;
    if (!SCRIPT_INTERPRETERS.includes(interpreter as (typeof SCRIPT_INTERPRETERS)[number]))
      throw new InvalidArgumentError(
        "job.script.interpreter",
        `${JSON.stringify(interpreter)} is not one of ${SCRIPT_INTERPRETERS.join(", ")}`,
      );
    checkArg("job.script.source", spec.script.source);
  }
  if (!Array.isArray(spec.inputs)) throw new InvalidArgumentError("job.inputs", "must be an array of { path, … }");
  const paths = new Set<string>();
  spec.inputs.forEach((input, i) => {
    const field = `job.inputs[${i}].path`;
    validateRelativePath(field, input.path);
    // A file and a directory of the same name cannot both be placed; neither can one file twice.
    for (const other of paths)
      if (other === input.path || other.startsWith(`${input.path}/`) || input.path.startsWith(`${other}/`))
        throw new InvalidArgumentError(field, `"${input.path}" collides with another input, "${other}"`);
    paths.add(input.path);
    if (input.mode !== undefined && (!Number.isInteger(input.mode) || input.mode < 0 || input.mode > 0o777))
      throw new InvalidArgumentError(`job.inputs[${i}].mode`, "must be a Unix permission mode from 0 to 0o777");
  });
  if (typeof spec.env !== "object" || spec.env === null || Array.isArray(spec.env))
    throw new InvalidArgumentError("job.env", "must be an object of NAME: value");
  for (const [name, value] of Object.entries(spec.env)) {
    if (!ENV_NAME.test(name))
      throw new InvalidArgumentError(`job.env.${name}`, "a variable name is letters, digits and _, not first a digit");
    checkArg(`job.env.${name}`, value);
  }
  if (!Number.isFinite(spec.timeoutMs) || spec.timeoutMs <= 0 || spec.timeoutMs > MAX_JOB_TIMEOUT_MS)
    throw new InvalidArgumentError("job.timeoutMs", `must be more than 0 and at most ${MAX_JOB_TIMEOUT_MS} (a week)`);
  return validateOutputSpec(spec.outputs, spec.levels);
}
