import type { KilnClient } from "@kiln/sdk";

/**
 * Registers a copy of the built-in kiln-ping service under `name` with its
 * own concurrency, so a test can make tasks last long enough to interrupt.
 */
export async function registerPingCopy(client: KilnClient, name: string, concurrency: number): Promise<void> {
  const ping = await client.getApplication("kiln-ping");
  await client.registerApplication(name, {
    command: ping.spec!.command!,
    arguments: ping.spec!.arguments,
    labels: [`kiln.concurrency=${concurrency}`],
    delayReleaseSeconds: 2,
  });
}

export interface PingOutput {
  host: string;
  pid: number;
  elapsedMs: number;
}

export function parsePing(output: Uint8Array): PingOutput {
  return JSON.parse(new TextDecoder().decode(output)) as PingOutput;
}

export const pingInput = (durationMs: number) => JSON.stringify({ durationMs });
