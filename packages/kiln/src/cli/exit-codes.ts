import { ClientCertificateRefusedError, ErrorCode, KilnError, toKilnError } from "@kiln/protocol";

/**
 * The exit status of every `kiln` command. Scripts rely on these; they never change meaning.
 *
 * @example
 * process.exitCode = ExitCode.Usage;
 */
export const ExitCode = {
  /** The command did what was asked. */
  Ok: 0,
  /** The operation failed: the cluster refused it (API error) or tasks failed. */
  Failed: 1,
  /** Bad flags or arguments, or an invalid input file. Nothing was changed. */
  Usage: 2,
  /** The cluster (or the object cache) could not be reached (connection refused, UNAVAILABLE). */
  Unreachable: 3,
  /** `kiln deploy` could not upload the package to the object cache. */
  UploadFailed: 4,
  /** `kiln exec`: the job ran past its --timeout and was killed. */
  TimedOut: 124,
  /** Stopped by Ctrl-C (SIGINT/SIGTERM) before finishing; what it started was cleaned up. */
  Interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** A mistake in what the user typed or in a file they gave; exits with ExitCode.Usage. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * A command ran but its outcome is a failure: some tasks failed (ExitCode.Failed, the default), a
 * job timed out (ExitCode.TimedOut), a package could not be uploaded (ExitCode.UploadFailed).
 */
export class CommandFailed extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode = ExitCode.Failed,
  ) {
    super(message);
    this.name = "CommandFailed";
  }
}

/** The user stopped the command (Ctrl-C); `message` says what was cleaned up. */
export class InterruptedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InterruptedError";
  }
}

/**
 * The cluster at `endpoint` could not be reached; `cause` is what the
 * transport reported. `explanation`, when known, says what answered there
 * instead (another server, plain HTTP where TLS was asked for) and what to try.
 */
export class UnreachableError extends Error {
  /** The flag that points at another server. */
  readonly flag: string;
  readonly explanation: string | undefined;
  constructor(
    readonly endpoint: string | undefined,
    options: { cause: unknown; what?: string; flag?: string; explanation?: string },
  ) {
    super(`cannot reach ${options.what ?? "the Kiln cluster"}${endpoint ? ` at ${endpoint}` : ""}`, options);
    this.name = "UnreachableError";
    this.flag = options.flag ?? "--endpoint";
    this.explanation = options.explanation;
  }
}

/**
 * `what` ("the cluster", "the object cache") at `endpoint` refused the command's token, or its lack of one.
 * The message says where the CLI takes a token from.
 */
export class TokenRefusedError extends Error {
  constructor(what: string, endpoint: string, options: { cause: unknown }) {
    super(
      `${what} at ${endpoint} refused the token (missing or invalid): pass --token or set KILN_TOKEN ` +
        `(or the config context's token)`,
      options,
    );
    this.name = "TokenRefusedError";
  }
}

/** Whether a server refused the token (code UNAUTHENTICATED). */
export function isTokenRefused(err: unknown): boolean {
  return (
    err instanceof KilnError &&
    err.code === ErrorCode.Unauthenticated &&
    !(err instanceof ClientCertificateRefusedError)
  );
}

const CONNECTION_ERRNOS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

function hasConnectionErrno(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== undefined && CONNECTION_ERRNOS.has(code)) return true;
  }
  return false;
}

/** Whether `err` means the cluster could not be reached at all (as opposed to refusing a request). */
export function isUnreachable(err: unknown): boolean {
  if (hasConnectionErrno(err)) return true;
  return err instanceof KilnError && err.code === ErrorCode.Unavailable;
}

/**
 * Prints `err` to stderr the way every command reports failures and returns the exit code to use.
 *
 * @example
 * process.exitCode = reportError(err);
 */
export function reportError(err: unknown): ExitCode {
  if (err instanceof UsageError) {
    process.stderr.write(`error: ${err.message}\n`);
    return ExitCode.Usage;
  }
  if (err instanceof InterruptedError) {
    process.stderr.write(`interrupted: ${err.message}\n`);
    return ExitCode.Interrupted;
  }
  if (err instanceof TokenRefusedError) {
    process.stderr.write(`error: ${err.message} (${ErrorCode.Unauthenticated})\n`);
    return ExitCode.Failed;
  }
  if (err instanceof CommandFailed) {
    process.stderr.write(`error: ${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof UnreachableError && err.explanation) {
    process.stderr.write(`error: ${err.message}: ${err.explanation}. (${ErrorCode.Unavailable})\n`);
    return ExitCode.Unreachable;
  }
  if (err instanceof UnreachableError || isUnreachable(err)) {
    const cause = err instanceof UnreachableError ? err.cause : err;
    const headline = err instanceof UnreachableError ? err.message : "cannot reach the Kiln cluster";
    const flag = err instanceof UnreachableError ? err.flag : "--endpoint";
    const detail = cause instanceof Error && cause.message ? `: ${cause.message}` : "";
    process.stderr.write(
      `error: ${headline}${detail}. Is it running? Start one with \`kiln up\`, ` +
        `or point at another with ${flag}. (${ErrorCode.Unavailable})\n`,
    );
    return ExitCode.Unreachable;
  }
  const kilnError = toKilnError(err);
  process.stderr.write(`error: ${kilnError.message} (${kilnError.code})\n`);
  return ExitCode.Failed;
}
