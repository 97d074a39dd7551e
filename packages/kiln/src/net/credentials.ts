import { InvalidArgumentError } from "@kiln/protocol";
import { createHmac, timingSafeEqual } from "node:crypto";
import { bearerTokenCheck } from "./auth.js";

/**
 * Who a request comes from, decided from its `authorization` header alone
 * (so it can be decided before any body is read):
 * - admin: the cluster token (`--token`); may do everything;
 * - node: the node token (`--node-token`); may only speak kiln.v1.Agent and read objects;
 * - task: a task credential minted for one session's service process; scoped to
 *   that session's application (see docs/security.md "Credentials").
 */
export type Principal =
  | { readonly role: "admin" }
  | { readonly role: "node" }
  | {
      readonly role: "task";
      readonly application: string;
      readonly sessionId: string;
      /** Milliseconds since the epoch after which the credential is refused everywhere. */
      readonly expiresAt: number;
    };

export type TaskPrincipal = Extract<Principal, { role: "task" }>;

/** What {@link Credentials.authenticate} decides: a principal, or why the header was refused. */
export type Authentication = { principal: Principal } | { refusal: string };

export interface CredentialSettings {
  /** The cluster (admin/client) token. Without it the server is open (loopback only) and everyone is admin. */
  adminToken?: string;
  /** The node token agents use. Without it agents use the admin token. */
  nodeToken?: string;
}

/**
 * Environment variables that carry the cluster and node tokens: never passed
 * on to a service process (its own KILN_TOKEN is its task credential) or to
 * the children of `kiln up`.
 */
export const SECRET_ENV_VARS: readonly string[] = ["KILN_TOKEN", "KILN_NODE_TOKEN"];

/** Task credentials start with this, so a server can tell one from a token without trying the HMAC. */
export const TASK_CREDENTIAL_PREFIX = "kiln-task.v1.";
/** A task credential is good for this long unless its session closes first (the control plane checks that). */
export const DEFAULT_TASK_CREDENTIAL_TTL_MS = 7 * 24 * 3600 * 1000;
/** Bounds what is parsed from an unauthenticated header. */
const MAX_CREDENTIAL_LENGTH = 2048;
const BEARER = "Bearer ";

interface TaskClaims {
  /** application */
  a: string;
  /** session id */
  s: string;
  /** expiry, ms since the epoch */
  e: number;
}

/**
 * The key task credentials are signed with, derived from the admin token, so
 * the control plane and the object cache (both given the admin token) agree
 * on it without another secret to distribute; rotating the admin token
 * invalidates every task credential.
 */
function taskCredentialKey(adminToken: string): Buffer {
  return createHmac("sha256", adminToken).update("kiln task credential key v1").digest();
}

/**
 * The cluster's credentials: checks tokens and task credentials, and mints
 * task credentials. Pure: the same header always gives the same answer at
 * the same time; whether a task's session is still open is for the caller
 * (the control plane) to add.
 *
 * @example
 * const creds = new Credentials({ adminToken: "s3cret", nodeToken: "n0de" });
 * const token = creds.mintTaskCredential({ application: "pi", sessionId: "pi-1" });
 * creds.authenticate(`Bearer ${token}`) // { principal: { role: "task", application: "pi", sessionId: "pi-1", … } }
 */
export class Credentials {
  private readonly isAdminToken: ((authorization: string | undefined) => boolean) | undefined;
  private readonly isNode: ((authorization: string | undefined) => boolean) | undefined;
  private readonly key: Buffer | undefined;

  /** Throws InvalidArgumentError for a node token without a cluster token, or equal to it. */
  constructor(settings: CredentialSettings) {
    const { adminToken, nodeToken } = settings;
    if (nodeToken && !adminToken)
      throw new InvalidArgumentError(
        "nodeToken",
        "needs a cluster token (--token) too: the node token only admits agents",
      );
    if (nodeToken && nodeToken === adminToken)
      throw new InvalidArgumentError("nodeToken", "must differ from the cluster token, or it grants everything");
    if (adminToken) {
      this.isAdminToken = bearerTokenCheck(adminToken);
      this.key = taskCredentialKey(adminToken);
    }
    if (nodeToken) this.isNode = bearerTokenCheck(nodeToken);
  }

  /** False on an open cluster (no admin token): every request is admin and no credential is minted. */
  get required(): boolean {
    return this.isAdminToken !== undefined;
  }

  /** Whether the header carries the cluster token (everyone is admin on an open cluster). */
  isAdmin(authorization: string | undefined): boolean {
    return !this.isAdminToken || this.isAdminToken(authorization);
  }

  /** The principal behind an `authorization` header, or why it is refused. */
  authenticate(authorization: string | undefined, now = Date.now()): Authentication {
    if (!this.isAdminToken) return { principal: { role: "admin" } };
    if (this.isAdminToken(authorization)) return { principal: { role: "admin" } };
    if (this.isNode?.(authorization)) return { principal: { role: "node" } };
    if (authorization?.startsWith(BEARER + TASK_CREDENTIAL_PREFIX))
      return this.verifyTaskCredential(authorization.slice(BEARER.length), now);
    return { refusal: "missing or invalid token (send `authorization: Bearer <token>`)" };
  }

  /**
   * A credential for the service process of `sessionId`: `kiln-task.v1.<claims>.<hmac>`,
   * claims being base64url JSON of application, session and expiry.
   */
  mintTaskCredential(
    scope: { application: string; sessionId: string },
    ttlMs = DEFAULT_TASK_CREDENTIAL_TTL_MS,
    now = Date.now(),
  ): string {
    if (!this.key) throw new Error("task credentials need an admin token to sign with");
    const claims: TaskClaims = { a: scope.application, s: scope.sessionId, e: now + ttlMs };
    const body = TASK_CREDENTIAL_PREFIX + Buffer.from(JSON.stringify(claims)).toString("base64url");
    return `${body}.${this.sign(body).toString("base64url")}`;
  }

  private verifyTaskCredential(credential: string, now: number): Authentication {
    const invalid = { refusal: "invalid task credential" };
    if (credential.length > MAX_CREDENTIAL_LENGTH) return invalid;
    const dot = credential.lastIndexOf(".");
    const body = credential.slice(0, dot);
    const given = Buffer.from(credential.slice(dot + 1), "base64url");
    const expected = this.sign(body);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return invalid;
    const claims = parseClaims(body.slice(TASK_CREDENTIAL_PREFIX.length));
    if (!claims) return invalid;
    if (now >= claims.e)
      return { refusal: `the task credential of session "${claims.s}" expired at ${new Date(claims.e).toISOString()}` };
    return { principal: { role: "task", application: claims.a, sessionId: claims.s, expiresAt: claims.e } };
  }

  private sign(body: string): Buffer {
    return createHmac("sha256", this.key!).update(body).digest();
  }
}

/** Claims from a signed credential: still checked for shape, so a format change cannot be misread. */
function parseClaims(encoded: string): TaskClaims | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(encoded, "base64url").toString("utf8"));
    if (typeof value !== "object" || value === null) return undefined;
    const { a, s, e } = value as Record<string, unknown>;
    if (typeof a !== "string" || typeof s !== "string" || typeof e !== "number") return undefined;
    return { a, s, e };
  } catch {
    return undefined;
  }
}
