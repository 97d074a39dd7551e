import { ErrorCode, InvalidArgumentError, KilnError } from "@kiln/protocol";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkObjectAccess } from "../src/cache/object-scope.js";
import { RevokedSessions } from "../src/cache/revocations.js";
import {
  Credentials,
  DEFAULT_TASK_CREDENTIAL_TTL_MS,
  TASK_CREDENTIAL_PREFIX,
  type Principal,
} from "../src/net/credentials.js";

const ADMIN = "admin-s3cret";
const NODE = "node-s3cret";
const creds = new Credentials({ adminToken: ADMIN, nodeToken: NODE });
const bearer = (token: string) => `Bearer ${token}`;
const NOW = Date.UTC(2026, 0, 1);

function principalOf(c: Credentials, authorization: string | undefined, now = NOW): Principal {
  const auth = c.authenticate(authorization, now);
  if ("refusal" in auth) assert.fail(`refused: ${auth.refusal}`);
  return auth.principal;
}

function refusalOf(c: Credentials, authorization: string | undefined, now = NOW): string {
  const auth = c.authenticate(authorization, now);
  if ("principal" in auth) assert.fail(`accepted as ${auth.principal.role}`);
  return auth.refusal;
}

describe("credentials: who a request comes from", () => {
  it("tells the cluster token, the node token and a task credential apart", () => {
    assert.deepEqual(principalOf(creds, bearer(ADMIN)), { role: "admin" });
    assert.deepEqual(principalOf(creds, bearer(NODE)), { role: "node" });
    const task = creds.mintTaskCredential({ application: "pi", sessionId: "pi-1" }, 60_000, NOW);
    assert.ok(task.startsWith(TASK_CREDENTIAL_PREFIX));
    assert.deepEqual(principalOf(creds, bearer(task)), {
      role: "task",
      application: "pi",
      sessionId: "pi-1",
      expiresAt: NOW + 60_000,
    });
  });

  it("refuses a missing, wrong or malformed token", () => {
    for (const header of [undefined, "", bearer("wrong"), ADMIN, `Basic ${ADMIN}`, bearer(TASK_CREDENTIAL_PREFIX)])
      assert.match(refusalOf(creds, header), /missing or invalid|invalid task credential/);
  });

  it("refuses a task credential whose claims or signature were changed", () => {
    const task = creds.mintTaskCredential({ application: "pi", sessionId: "pi-1" }, 60_000, NOW);
    const [body, sig] = [task.slice(0, task.lastIndexOf(".")), task.slice(task.lastIndexOf(".") + 1)];
    const otherClaims = Buffer.from(JSON.stringify({ a: "other", s: "pi-1", e: NOW + 60_000 })).toString("base64url");
    const forged = `${TASK_CREDENTIAL_PREFIX}${otherClaims}.${sig}`;
    const flipped = `${body}.${sig.slice(0, -2)}${sig.endsWith("AA") ? "BB" : "AA"}`;
    for (const bad of [forged, flipped, `${body}.`, body, `${task}x`])
      assert.equal(refusalOf(creds, bearer(bad)), "invalid task credential");
  });

  it("refuses a task credential signed for another cluster token", () => {
    const other = new Credentials({ adminToken: "another-cluster" });
    const task = other.mintTaskCredential({ application: "pi", sessionId: "pi-1" }, 60_000, NOW);
    assert.equal(refusalOf(creds, bearer(task)), "invalid task credential");
  });

  it("refuses a task credential past its expiry, naming its session", () => {
    const task = creds.mintTaskCredential({ application: "pi", sessionId: "pi-1" }, 60_000, NOW);
    assert.equal(principalOf(creds, bearer(task), NOW + 59_999).role, "task");
    assert.match(refusalOf(creds, bearer(task), NOW + 60_000), /task credential of session "pi-1" expired at 2026-/);
  });

  it("without a node token, agents use the cluster token; a node token is then just wrong", () => {
    const adminOnly = new Credentials({ adminToken: ADMIN });
    assert.deepEqual(principalOf(adminOnly, bearer(ADMIN)), { role: "admin" });
    refusalOf(adminOnly, bearer(NODE));
  });

  it("an open cluster (no cluster token) admits everyone as admin and mints nothing", () => {
    const open = new Credentials({});
    assert.equal(open.required, false);
    assert.deepEqual(principalOf(open, undefined), { role: "admin" });
    assert.throws(() => open.mintTaskCredential({ application: "pi", sessionId: "s" }));
  });

  it("refuses a node token without a cluster token, or equal to it", () => {
    assert.throws(
      () => new Credentials({ nodeToken: NODE }),
      (e: unknown) => e instanceof InvalidArgumentError && /nodeToken: needs a cluster token/.test(e.message),
    );
    assert.throws(
      () => new Credentials({ adminToken: ADMIN, nodeToken: ADMIN }),
      (e: unknown) => e instanceof InvalidArgumentError && /must differ from the cluster token/.test(e.message),
    );
  });
});

describe("object scopes: what each credential may do in the cache", () => {
  const task: Principal = { role: "task", application: "pi", sessionId: "pi-1", expiresAt: NOW + 1 };
  const denied = (principal: Principal, application: string | undefined, write: boolean) =>
    assert.throws(
      () => checkObjectAccess(principal, { application, write, what: "PUT x" }),
      (e: unknown) => e instanceof KilnError && e.code === ErrorCode.PermissionDenied && /PUT x/.test(e.message),
    );

  it("the cluster token may do everything", () => {
    checkObjectAccess({ role: "admin" }, { application: undefined, write: true, what: "list" });
  });

  it("the node token only reads keys", () => {
    checkObjectAccess({ role: "node" }, { application: "pi", write: false, what: "GET" });
    denied({ role: "node" }, "pi", true);
    denied({ role: "node" }, undefined, false);
  });

  it("a task credential reads and writes its own application's keys only", () => {
    checkObjectAccess(task, { application: "pi", write: true, what: "PUT" });
    checkObjectAccess(task, { application: "pi", write: false, what: "GET" });
    denied(task, "other", false);
    denied(task, "other", true);
    denied(task, undefined, false);
  });
});

describe("revoked sessions: the cache's memory of closed sessions", () => {
  it("refuses a revoked session until its credentials would have expired anyway, then forgets it", () => {
    const revoked = new RevokedSessions();
    revoked.revoke("old", NOW);
    revoked.revoke("new", NOW + 1000);
    assert.ok(revoked.has("old") && revoked.has("new"));
    assert.ok(!revoked.has("other"));
    // Revoking anything prunes what no unexpired credential can name any more.
    revoked.revoke("later", NOW + DEFAULT_TASK_CREDENTIAL_TTL_MS);
    assert.ok(!revoked.has("old"), "forgotten after the longest credential lifetime");
    assert.ok(revoked.has("new") && revoked.has("later"));
  });
});
