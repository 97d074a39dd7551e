import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  validateName,
} from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";
import AjvModule from "ajv";
import * as path from "node:path";
import type { GroupCommit } from "./store/group-commit.js";
import type { StoredApplication } from "./store/store.js";

/** Label that sets how many tasks one executor of the application runs at once: `kiln.concurrency=8`. */
export const CONCURRENCY_LABEL = "kiln.concurrency";
const MAX_CONCURRENCY = 10_000;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export interface ApplicationRecord {
  name: string;
  spec: flame.ApplicationSpec;
  /** Disabled while it drains: unregistered with open sessions, removed when the last one closes (see isDraining). */
  state: flame.ApplicationState;
  creationTime: number;
  /** From the kiln.concurrency label; 1 when absent (a Flame service handles one task at a time). */
  concurrency: number;
}

// ajv is CommonJS: under NodeNext its class is the default import's `default`.
const schemaValidator = new AjvModule.default({ strict: false });

/** Checks an application spec; throws InvalidArgumentError naming the field and the rule. */
export function validateApplicationSpec(spec: flame.ApplicationSpec): { concurrency: number } {
  if (spec.shim !== flame.Shim.Host)
    throw new InvalidArgumentError("application.shim", "only the Host shim is supported by Kiln agents");
  if (spec.workingDirectory !== undefined && spec.workingDirectory !== "" && !path.isAbsolute(spec.workingDirectory))
    throw new InvalidArgumentError(
      "application.working_directory",
      `must be an absolute path (got "${spec.workingDirectory}")`,
    );
  if (spec.delayRelease !== undefined && spec.delayRelease < 0n)
    throw new InvalidArgumentError("application.delay_release", "must be zero or more seconds");
  spec.environments.forEach((env, i) => {
    if (!ENV_NAME.test(env.name))
      throw new InvalidArgumentError(
        `application.environments[${i}].name`,
        `"${env.name}" must match [A-Za-z_][A-Za-z0-9_]*`,
      );
  });
  for (const [key, text] of Object.entries({
    input: spec.schema?.input,
    output: spec.schema?.output,
    common_data: spec.schema?.commonData,
  })) {
    if (text === undefined || text === "") continue;
    const field = `application.schema.${key}`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new InvalidArgumentError(field, `must be JSON: ${(e as Error).message}`);
    }
    if (typeof parsed !== "object" && typeof parsed !== "boolean")
      throw new InvalidArgumentError(field, "must be a JSON Schema object");
    if (!schemaValidator.validateSchema(parsed as object))
      throw new InvalidArgumentError(field, `is not a valid JSON Schema: ${schemaValidator.errorsText()}`);
  }
  let concurrency = 1;
  for (const label of spec.labels) {
    if (!label.startsWith(`${CONCURRENCY_LABEL}=`)) continue;
    const value = label.slice(CONCURRENCY_LABEL.length + 1);
    if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > MAX_CONCURRENCY)
      throw new InvalidArgumentError(
        "application.labels",
        `${CONCURRENCY_LABEL} must be a whole number from 1 to ${MAX_CONCURRENCY} (got "${value}")`,
      );
    concurrency = Number(value);
  }
  return { concurrency };
}

/**
 * True while an unregistered application waits for its open sessions to close. Kiln disables an
 * application for nothing else, so flame.v1's Disabled is the stored and shown form of draining.
 */
export function isDraining(app: ApplicationRecord): boolean {
  return app.state === flame.ApplicationState.Disabled;
}

/** What unregister did: removed the application, or left it draining until its open sessions close. */
export type Unregistered = "removed" | "draining";

/** Applications in memory, written through to the store. */
export class ApplicationRegistry {
  private readonly apps = new Map<string, ApplicationRecord>();
  /** Hears of every application removed (unregistered at once, or at the end of its drain). */
  onRemoved: ((name: string) => void) | undefined;

  constructor(
    private readonly commit: GroupCommit,
    private readonly hasOpenSessions: (app: string) => boolean,
  ) {}

  load(rows: StoredApplication[]): void {
    for (const row of rows) {
      const spec = fromBinary(flame.ApplicationSpecSchema, row.spec);
      this.apps.set(row.name, {
        name: row.name,
        spec,
        state: row.state,
        creationTime: row.creationTime,
        concurrency: safeConcurrency(spec),
      });
    }
  }

  register(
    name: string,
    spec: flame.ApplicationSpec | undefined,
    options: { upsert?: boolean } = {},
  ): ApplicationRecord {
    validateName("name", name);
    if (!spec) throw new InvalidArgumentError("application", "is required");
    const { concurrency } = validateApplicationSpec(spec);
    const existing = this.apps.get(name);
    // Registering a draining application again means it is wanted after all: that ends the drain.
    if (existing && !isDraining(existing) && !options.upsert) throw new AlreadyExistsError("application", name);
    const record: ApplicationRecord = {
      name,
      spec,
      state: flame.ApplicationState.Enabled,
      creationTime: existing?.creationTime ?? Date.now(),
      concurrency,
    };
    this.apps.set(name, record);
    this.persist(record);
    return record;
  }

  update(name: string, spec: flame.ApplicationSpec | undefined): ApplicationRecord {
    this.require(name);
    return this.register(name, spec, { upsert: true });
  }

  /**
   * Removes an application at once when none of its sessions is open; else marks it draining (it
   * takes no new sessions) and removes it when the last one closes (see settle).
   */
  unregister(name: string): Unregistered {
    const app = this.require(name);
    if (!this.hasOpenSessions(name)) {
      this.remove(name);
      return "removed";
    }
    if (!isDraining(app)) {
      app.state = flame.ApplicationState.Disabled;
      this.persist(app);
    }
    return "draining";
  }

  /** Removes `name` if it is draining and none of its sessions is open: when one of them closed, and at start. */
  settle(name: string): void {
    const app = this.apps.get(name);
    if (app && isDraining(app) && !this.hasOpenSessions(name)) this.remove(name);
  }

  /** settle() for every application (after loading the store: a drain may have ended while it was down). */
  settleAll(): void {
    for (const name of [...this.apps.keys()]) this.settle(name);
  }

  /** Refuses a new session of an application that is being unregistered. */
  requireAcceptingSessions(name: string): ApplicationRecord {
    const app = this.require(name);
    if (isDraining(app))
      throw new FailedPreconditionError(
        `application "${name}" is being unregistered: it takes no new sessions and is removed when its open sessions close`,
      );
    return app;
  }

  get(name: string): ApplicationRecord | undefined {
    return this.apps.get(name);
  }

  require(name: string): ApplicationRecord {
    const app = this.apps.get(name);
    if (!app) throw new NotFoundError("application", name);
    return app;
  }

  list(): ApplicationRecord[] {
    return [...this.apps.values()];
  }

  private remove(name: string): void {
    this.apps.delete(name);
    this.commit.write((s) => s.deleteApplication(name));
    this.onRemoved?.(name);
  }

  private persist(r: ApplicationRecord): void {
    const row: StoredApplication = {
      name: r.name,
      spec: toBinary(flame.ApplicationSpecSchema, r.spec),
      state: r.state,
      creationTime: r.creationTime,
    };
    this.commit.write((s) => s.putApplication(row));
  }
}

function safeConcurrency(spec: flame.ApplicationSpec): number {
  try {
    return validateApplicationSpec(spec).concurrency;
  } catch {
    return 1;
  }
}

export function toApplicationMessage(r: ApplicationRecord): flame.Application {
  return create(flame.ApplicationSchema$, {
    metadata: { id: r.name, name: r.name },
    spec: r.spec,
    status: { state: r.state, creationTime: BigInt(r.creationTime) },
  });
}
