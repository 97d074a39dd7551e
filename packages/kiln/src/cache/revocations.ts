import { DEFAULT_TASK_CREDENTIAL_TTL_MS } from "../net/credentials.js";

/**
 * Sessions whose task credentials the control plane has revoked (it tells
 * the cache when a session closes), so the cache refuses them at once instead
 * of at their expiry. Kept in memory for as long as a credential minted for
 * the session could still be unexpired, then forgotten; a restarted cache
 * has forgotten them all and falls back to expiry.
 *
 * @example
 * const revoked = new RevokedSessions();
 * revoked.revoke("pi-1");
 * revoked.has("pi-1") // true
 */
export class RevokedSessions {
  /** Session id → when it may be forgotten; in insertion order, so the oldest come first. */
  private readonly forgetAt = new Map<string, number>();

  revoke(sessionId: string, now = Date.now()): void {
    this.forget(now);
    this.forgetAt.delete(sessionId);
    this.forgetAt.set(sessionId, now + DEFAULT_TASK_CREDENTIAL_TTL_MS);
  }

  has(sessionId: string): boolean {
    return this.forgetAt.has(sessionId);
  }

  private forget(now: number): void {
    for (const [id, at] of this.forgetAt) {
      if (at > now) break;
      this.forgetAt.delete(id);
    }
  }
}
