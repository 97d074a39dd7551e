import type { SessionRecord } from "./sessions.js";

/** How long telling the cache may take before the control plane gives up. */
const NOTICE_TIMEOUT_MS = 10_000;

/**
 * What the control plane tells the object cache it knows (`--cache-endpoint`), with the cluster token
 * when there is one: that a session's task credentials ended with it, and that objects lost their
 * owner. Never throws: a cache that cannot be told is logged and the control plane goes on; what the
 * notice would have done is then left to its fallback (the credential's expiry, the cache's retention).
 *
 * @example
 * const notices = new ObjectCacheNotices("http://127.0.0.1:7430", token, console.error);
 * sessions.observer = { sessionDeleted: (s) => void notices.sessionDeleted(s), … };
 */
export class ObjectCacheNotices {
  constructor(
    private readonly endpoint: string,
    private readonly token: string | undefined,
    private readonly log: (line: string) => void,
  ) {}

  /** `PUT /v1/revocations/<session>`: the cache refuses the session's task credentials at once instead of at their expiry. */
  sessionClosed(session: SessionRecord): Promise<void> {
    return this.send(
      "PUT",
      `/v1/revocations/${encodeURIComponent(session.id)}`,
      `that session ${session.id} closed`,
      "it accepts that session's task credentials until they expire",
    );
  }

  /** `DELETE /v1/objects/<app>/<session>`: a deleted session's objects go with it. */
  sessionDeleted(session: SessionRecord): Promise<void> {
    return this.send(
      "DELETE",
      `/v1/objects/${encodeURIComponent(session.application)}/${encodeURIComponent(session.id)}`,
      `to delete the objects of deleted session ${session.id}`,
      `${session.application}/${session.id}/* is left in the cache`,
    );
  }

  /** `DELETE /v1/objects/<app>/*`: an unregistered application's objects go with it. */
  applicationRemoved(app: string): Promise<void> {
    return this.send(
      "DELETE",
      `/v1/objects/${encodeURIComponent(app)}/*`,
      `to delete the objects of unregistered application ${app}`,
      `${app}/* is left in the cache`,
    );
  }

  private async send(method: string, path: string, what: string, otherwise: string): Promise<void> {
    try {
      const res = await fetch(`${this.endpoint}${path}`, {
        method,
        headers: this.token ? { authorization: `Bearer ${this.token}` } : {},
        signal: AbortSignal.timeout(NOTICE_TIMEOUT_MS),
      });
      await res.arrayBuffer();
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
    } catch (err) {
      this.log(`could not tell the object cache at ${this.endpoint} ${what} (${(err as Error).message}): ${otherwise}`);
    }
  }
}
