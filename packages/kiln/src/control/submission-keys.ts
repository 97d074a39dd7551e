import type { StoredSubmission } from "./store/store.js";

/** How long a CreateTasks idempotency key is remembered: far longer than any client's patience. */
export const SUBMISSION_KEY_RETENTION_MS = 10 * 60_000;

/**
 * The idempotency keys of recent CreateTasks requests, per session, with the
 * tasks each created: a resend of a batch whose answer was lost finds its
 * key here and gets the same ids instead of new tasks. Keys are kept in the
 * order they were first used, so forgetting the expired ones takes only
 * those. The store holds the same keys (written in the tasks' commit) so
 * they survive a restart; see SessionRegistry.
 */
export class SubmissionKeys {
  /** `${sessionId}\n${key}` → submission, oldest first (Map keeps insertion order). */
  private readonly byKey = new Map<string, StoredSubmission>();

  constructor(private readonly retentionMs = SUBMISSION_KEY_RETENTION_MS) {}

  /** The submission that used `key` in `sessionId` within the retention, if any. */
  find(sessionId: string, key: string, now: number): StoredSubmission | undefined {
    this.expire(now);
    return this.byKey.get(entryKey(sessionId, key));
  }

  remember(s: StoredSubmission): void {
    this.byKey.set(entryKey(s.sessionId, s.key), s);
  }

  /** Drops every key of a deleted session. */
  forgetSession(sessionId: string): void {
    for (const [k, s] of this.byKey) if (s.sessionId === sessionId) this.byKey.delete(k);
  }

  get size(): number {
    return this.byKey.size;
  }

  /** Forgets keys older than the retention; returns the cut-off time (for the store's copy). */
  expire(now: number): number {
    const cutoff = now - this.retentionMs;
    for (const [k, s] of this.byKey) {
      if (s.time >= cutoff) break;
      this.byKey.delete(k);
    }
    return cutoff;
  }
}

function entryKey(sessionId: string, key: string): string {
  return `${sessionId}\n${key}`;
}
