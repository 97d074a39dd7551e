import type { InvalidArgumentError as SettingError } from "@kiln/protocol";
import { parseBytes, parseResreq } from "@kiln/protocol";
import { InvalidArgumentError, Option } from "commander";
import { UsageError } from "./exit-codes.js";

/** Largest priority or instance count the API carries (uint32). */
export const UINT32_MAX = 2 ** 32 - 1;

/** The options every command accepts; they pick the cluster `connect()` talks to. */
export interface GlobalOptions {
  endpoint?: string;
  cacheEndpoint?: string;
  token?: string;
  context?: string;
  config?: string;
  /** The CA a client verifies `https://` servers with (the SDK also reads KILN_TLS_CA). */
  tlsCa?: string;
  /** A client certificate and key for servers that require mutual TLS. */
  tlsClientCert?: string;
  tlsClientKey?: string;
}

/** The global options' TLS files, as the SDK's connect options name them. */
export function tlsFileOptions(globals: GlobalOptions): {
  tlsCa?: string;
  tlsClientCert?: string;
  tlsClientKey?: string;
} {
  return {
    ...(globals.tlsCa ? { tlsCa: globals.tlsCa } : {}),
    ...(globals.tlsClientCert ? { tlsClientCert: globals.tlsClientCert } : {}),
    ...(globals.tlsClientKey ? { tlsClientKey: globals.tlsClientKey } : {}),
  };
}

/** The SDK's names for the settings the global options carry, and the flag each is typed as. */
const SETTING_FLAGS: Record<string, string> = {
  configPath: "--config",
  endpoint: "--endpoint",
  cacheEndpoint: "--cache-endpoint",
  context: "--context",
  tlsCa: "--tls-ca",
  tlsClientCert: "--tls-client-cert",
  tlsClientKey: "--tls-client-key",
};

/**
 * A bad connection setting (from the flags, env or the config file) as the usage error it is,
 * naming the flag where the SDK names its option (`configPath: …` → `--config: …`).
 *
 * @example
 * connect(...).catch((e) => { throw e instanceof InvalidArgumentError ? settingUsageError(e) : e; });
 */
export function settingUsageError(err: SettingError): UsageError {
  const flag = SETTING_FLAGS[err.field];
  const message = flag ? `${flag}${err.message.slice(err.field.length)}` : err.message;
  return new UsageError(`${message} (${err.code})`);
}

/**
 * The value of something Kiln and Flame's flmctl spell differently (`kiln update -f FILE`, flmctl's
 * `update -a FILE`): exactly one of the two spellings must be given.
 *
 * @example
 * const file = eitherSpelling(["-f", options.file], ["-a", options.application]);
 */
export function eitherSpelling(kiln: [name: string, value?: string], flame: [name: string, value?: string]): string {
  const [kilnName, kilnValue] = kiln;
  const [flameName, flameValue] = flame;
  if (kilnValue !== undefined && flameValue !== undefined)
    throw new UsageError(
      `${kilnName} and ${flameName} say the same thing (${flameName} is flmctl's spelling): give one`,
    );
  const value = kilnValue ?? flameValue;
  if (value === undefined) throw new UsageError(`${kilnName} is required (or flmctl's spelling, ${flameName})`);
  return value;
}

/**
 * A commander parser for whole numbers in [min, max]; a bad value is a usage error.
 *
 * @example
 * new Option("-t, --tasks <n>").argParser(wholeNumber(1))
 */
export function wholeNumber(min = 0, max = Number.MAX_SAFE_INTEGER): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError(`"${value}" is not a whole number.`);
    const n = Number(value);
    if (n < min || n > max) throw new InvalidArgumentError(`must be from ${min} to ${max} (got ${n}).`);
    return n;
  };
}

/** Checks a resource request (`cpu=1,mem=2g,gpu=0`) while parsing flags; the API takes it as text. */
export function resreqText(value: string): string {
  try {
    parseResreq(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return value;
}

/** A byte size such as `16m`, `1Gi` or `1048576`. */
export function byteSize(value: string): number {
  try {
    return parseBytes("size", value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration such as `7d`, `12h`, `30m`, `90s`, `500ms` or `0`, in ms. A bare number other than 0 says no unit, so it is refused. */
export function duration(value: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(value.trim());
  const ms = m && (m[2] !== undefined || Number(m[1]) === 0) ? Number(m[1]) * DURATION_UNITS_MS[m[2] ?? "ms"]! : NaN;
  if (!Number.isSafeInteger(ms))
    throw new InvalidArgumentError(
      `"${value}" is not a duration (a whole number with a unit: ms, s, m, h or d, as in 7d or 30m; or 0).`,
    );
  return ms;
}

/** `-o, --output <format>`: `table` (default, for people) or `json` (for scripts). */
export function outputOption(): Option {
  return new Option("-o, --output <format>", "output format").choices(["table", "json"]).default("table");
}
