import type { SessionRecord } from "./sessions.js";

/** How long telling the cache may take before the control plane gives up (the credential then ends at its expiry). */
const REVOKE_TIMEOUT_MS = 10_000;

/**
 * Tells the object cache that `session`'s task credentials ended with it
 * (`PUT /v1/revocations/<session>`, with the cluster token), so the cache
 * refuses them at once instead of at their expiry. Never throws: a cache that
 * cannot be told is logged, and falls back to the expiry.
 *
 * @example
 * sessions.observer = { sessionEnded: (s) => void revokeAtCache(cacheEndpoint, token, s, log), … };
 */
export async function revokeAtCache(
  cacheEndpoint: string,
  token: string,
  session: SessionRecord,
  log: (line: string) => void,
): Promise<void> {
  const url = `${cacheEndpoint}/v1/revocations/${encodeURIComponent(session.id)}`;
  try {
    const res = await fetch(url, {
      method: "PUT",
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(REVOKE_TIMEOUT_MS),
    });
    await res.arrayBuffer();
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
  } catch (err) {
    log(
      `could not tell the object cache at ${cacheEndpoint} that session ${session.id} closed ` +
        `(${(err as Error).message}): it accepts that session's task credentials until they expire`,
    );
  }
}
