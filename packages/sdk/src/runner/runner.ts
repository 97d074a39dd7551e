import { clone } from "@bufbuild/protobuf";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { openObjectCache } from "../client/cache-discovery.js";
import { connect, type KilnClient } from "../client/client.js";
import type { ConnectOptions } from "../client/config.js";
import type { Session } from "../client/session.js";
import { generateSessionId } from "../client/specs.js";
import {
  ErrorCode,
  FailedPreconditionError,
  InvalidArgumentError,
  KilnError,
  ignoreNotFound,
  isNotFound,
  validateName,
  withTimeout,
} from "@kiln/protocol";
import type { ObjectCache } from "../objects/cache-client.js";
import type { ObjectRef } from "@kiln/protocol";
import { packDirectory } from "../packaging/pack-directory.js";
import { packageLocation, publishPackage } from "../packaging/publish-package.js";
import { flame } from "@kiln/protocol/proto";
import { checkArgs, resolveArgs } from "./call-args.js";
import { ObjectFuture } from "./object-future.js";
import { checkProjectDir, findProjectRoot, resolveProjectModule, runsInsideExecutor } from "./project.js";
import {
  checkDependencySpec,
  encodeServiceSpec,
  RUNNER_FORMAT,
  RUNNER_PACKAGE_ENV,
  RUNNER_TEMPLATE,
  runnerKeys,
} from "@kiln/protocol/runner";
import { remoteProxy, type ServiceBinding } from "./remote-call.js";
import type { CommonServiceOptions, RemoteService, ServiceExport, ServiceOptionsArg } from "./types.js";

/** Marks an application registered by a Runner. */
const RUNNER_LABEL = "kiln.runner";
/** Never packaged: installed or built on the executor, or not code. */
const RUNNER_EXCLUDES: readonly string[] = ["node_modules", ".git", "dist"];

/** How to open a Runner: the project, and how to reach the cluster and its object cache. */
export interface RunnerOptions extends ConnectOptions {
  /** The project to package. Default: the nearest directory with a package.json at or above the working directory. */
  project?: string;
  /** More gitignore-style patterns to leave out, on top of node_modules, .git, dist and the project's .gitignore. */
  excludes?: string[];
  /**
   * The object cache (default: KILN_CACHE_ENDPOINT, the config context's cache, else the one the control
   * plane advertises, else http://127.0.0.1:7422).
   */
  cacheEndpoint?: string;
  cacheToken?: string;
}

/**
 * A module of the Runner's project, typed by the module itself.
 *
 * @example
 * const math = runner.module<typeof import("./math.js")>("src/math.ts");
 */
export class RunnerModule<M> {
  declare private readonly exports: M;
  /** @internal Made by `runner.module`. */
  constructor(
    /** The module's path in the project, POSIX separators, e.g. `src/math.ts`. */
    readonly path: string,
  ) {}
}

/** The values of a tuple of futures. */
export type FutureValues<F extends readonly ObjectFuture<unknown>[]> = {
  -readonly [I in keyof F]: F[I] extends ObjectFuture<infer T> ? T : never;
};

/** The options any service may get, whatever the export's type. */
type AnyServiceOptions = CommonServiceOptions & { args?: readonly unknown[]; stateful?: boolean };

/**
 * Runs the exported functions and classes of your own project on a Kiln
 * cluster. `Runner.open` packages the project (content-addressed: unchanged
 * code is not uploaded again, changed code always runs), uploads it to the
 * object cache and registers an application from the built-in `kiln-run`
 * template; `runner.service` turns an export into a typed remote proxy.
 *
 * @example
 * await using runner = await Runner.open("pi");
 * const estimate = await runner.service(runner.module<typeof import("./pi.js")>("src/pi.ts"), "estimate");
 * const parts = await runner.get(Array.from({ length: 8 }, () => estimate(1_000_000)));
 */
export class Runner implements AsyncDisposable {
  readonly #sessions: Session[] = [];
  /** Every session id this Runner put objects under, including one whose session could not be created. */
  readonly #sessionIds: string[] = [];
  readonly #shared = new Set<string>();
  #closing: Promise<void> | undefined;

  private constructor(
    /** The application's name. */
    readonly name: string,
    /** The project's root directory. */
    readonly project: string,
    /** True when this Runner registered the application, and so unregisters it on close. */
    readonly registered: boolean,
    readonly client: KilnClient,
    readonly cache: ObjectCache,
    /** Files in the package this Runner uploaded (project-relative); undefined when it uploaded none. */
    private readonly packaged: ReadonlySet<string> | undefined,
  ) {}

  /**
   * Opens a Runner for application `name`. When the application exists it
   * is reused as it is (and left in place on close), so a Runner can be
   * opened from inside a remote call; otherwise the project is packaged,
   * uploaded and registered.
   *
   * @example
   * const runner = await Runner.open("pi", { project: "./examples/pi", excludes: ["*.log"] });
   */
  static async open(name: string, options: RunnerOptions = {}): Promise<Runner> {
    validateName("name", name);
    const project = options.project !== undefined ? checkProjectDir(options.project) : findProjectRoot(process.cwd());
    const client = await connect(options);
    let cache: ObjectCache;
    try {
      cache = await openObjectCache(options, client);
    } catch (err) {
      client.close();
      throw err;
    }
    try {
      const { registered, packaged } = await provideApplication(name, project, options.excludes ?? [], client, cache);
      return new Runner(name, project, registered, client, cache, packaged);
    } catch (err) {
      client.close();
      cache.close();
      throw err;
    }
  }

  /**
   * A typed handle to a module of the project: a path relative to the
   * project root (`src/pi.ts`, or `src/pi.js` for it), an absolute path or a
   * file URL. Throws InvalidArgumentError naming `module` when it is outside
   * the project, does not exist, or is left out of the package.
   *
   * @example
   * const pi = runner.module<typeof import("./pi.js")>(new URL("./pi.ts", import.meta.url));
   */
  module<M>(spec: string | URL): RunnerModule<M> {
    const modulePath = resolveProjectModule(this.project, spec);
    if (this.packaged && !this.packaged.has(modulePath))
      throw new InvalidArgumentError(
        "module",
        `"${modulePath}" is not in the package (left out by the excludes or .gitignore), so executors cannot load it`,
      );
    return new RunnerModule<M>(modulePath);
  }

  /**
   * Turns an export of a module into a remote service, in a session of its
   * own. A function becomes a function returning ObjectFutures; a class
   * becomes an object whose methods do, backed by one instance per executor
   * (built with `options.args`). The module loads once per executor.
   *
   * @example
   * const square = await runner.service(math, "square");
   * const counter = await runner.service(math, "Counter", { args: [10], stateful: true });
   * console.log(await square(4), await counter.add(1)); // 16 11
   */
  async service<M, K extends ServiceExport<M>>(
    mod: RunnerModule<M>,
    exportName: K,
    ...options: ServiceOptionsArg<M[K]>
  ): Promise<RemoteService<M[K]>> {
    this.ensureOpen();
    if (!(mod instanceof RunnerModule)) throw new InvalidArgumentError("module", "must come from runner.module(path)");
    if (typeof exportName !== "string" || exportName === "")
      throw new InvalidArgumentError("export", "must be the name of an exported function or class");
    const o = checkServiceOptions((options[0] ?? {}) as AnyServiceOptions);
    const sessionId = generateSessionId(this.name);
    this.#sessionIds.push(sessionId);
    const putToSession = (encoded: Uint8Array) =>
      this.cache.putEncoded(runnerKeys.session(this.name, sessionId), encoded);
    const args = await resolveArgs(checkArgs(o.args ?? [], "options.args"), putToSession);
    const commonData = encodeServiceSpec({
      format: RUNNER_FORMAT,
      module: mod.path,
      export: exportName,
      kind: "auto",
      args,
      stateful: o.stateful ?? false,
      dependencies: o.dependencies ?? [],
    });
    const warmup = o.warmup ?? 0;
    const session = await this.client.createSession({
      application: this.name,
      id: sessionId,
      commonData,
      minInstances: warmup,
      ...((o.autoscale ?? !o.stateful) ? {} : { maxInstances: Math.max(warmup, 1) }),
      ...(o.priority !== undefined ? { priority: o.priority } : {}),
      ...(o.resreq !== undefined ? { resreq: o.resreq } : {}),
    });
    this.#sessions.push(session);
    const binding: ServiceBinding = {
      session,
      sessionId,
      application: this.name,
      cache: this.cache,
      service: `${mod.path}#${exportName}`,
    };
    return remoteProxy(binding) as RemoteService<M[K]>;
  }

  /**
   * The values of several futures, in order; rejects with the first error.
   *
   * @example
   * const [a, b] = await runner.get([square(2), square(3)]); // [4, 9]
   */
  get<const F extends readonly ObjectFuture<unknown>[]>(futures: F): Promise<FutureValues<F>> {
    return Promise.all(futures.map((f) => f.get())) as Promise<FutureValues<F>>;
  }

  /**
   * Resolves once every call has ended (succeeded or failed), fetching no
   * results; rejects with TimeoutError when `timeoutMs` passes first.
   *
   * @example
   * await runner.wait(futures, { timeoutMs: 60_000 });
   */
  async wait(futures: Iterable<ObjectFuture<unknown>>, options: { timeoutMs?: number } = {}): Promise<void> {
    const all = Promise.all([...futures].map((f) => f.wait()));
    await (options.timeoutMs === undefined ? all : withTimeout(all, options.timeoutMs, "waiting for the calls"));
  }

  /**
   * The futures in the order their calls end (succeeded or failed).
   *
   * @example
   * for await (const done of runner.select(futures)) bar.increment(), total += await done;
   */
  select<T>(futures: Iterable<ObjectFuture<T>>): AsyncIterable<ObjectFuture<T>> {
    const list = [...futures];
    return {
      [Symbol.asyncIterator]() {
        // Written out rather than as an async generator: `yield` would await each future and hand out its value.
        const finished: ObjectFuture<T>[] = [];
        let wake: (() => void) | undefined;
        for (const f of list)
          void f.wait().then(() => {
            finished.push(f);
            wake?.();
          });
        let handedOut = 0;
        return {
          async next(): Promise<IteratorResult<ObjectFuture<T>, undefined>> {
            if (handedOut === list.length) return { done: true, value: undefined };
            while (finished.length === 0) await new Promise<void>((resolve) => (wake = resolve));
            handedOut++;
            return { done: false, value: finished.shift()! };
          },
        };
      },
    };
  }

  /**
   * Puts a value in the cache for many calls to share (pass the ref as an
   * argument and the executor fetches it); removed when the Runner closes.
   *
   * @example
   * const table = await runner.putObject(bigLookupTable);
   * const results = await runner.get(keys.map((k) => lookup(table, k)));
   */
  async putObject(value: unknown): Promise<ObjectRef> {
    this.ensureOpen();
    const ref = await this.cache.putObject(runnerKeys.shared(this.name), value);
    this.#shared.add(ref.key);
    return ref;
  }

  /**
   * Closes the Runner's sessions (calls still pending are cancelled). If it
   * registered the application, unregisters it and deletes everything under
   * `<name>/` in the cache, package included; otherwise deletes only its own
   * sessions' objects and the objects it put. Idempotent; rejects with the
   * first failure after trying every step.
   *
   * @example
   * try { ... } finally { await runner.close(); }
   */
  close(): Promise<void> {
    return (this.#closing ??= this.closeOnce());
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  private async closeOnce(): Promise<void> {
    const failures: unknown[] = [];
    const attempt = (step: () => Promise<unknown>) =>
      step().catch((err: unknown) => {
        if (!isNotFound(err)) failures.push(err);
      });
    await Promise.all(this.#sessions.map((s) => attempt(() => s.close())));
    if (this.registered) {
      await attempt(() => this.client.unregisterApplication(this.name));
      await attempt(() => this.cache.deleteObjects(`${this.name}/*`));
    } else {
      await Promise.all([
        ...this.#sessionIds.map((id) => attempt(() => this.cache.deleteObjects(runnerKeys.session(this.name, id)))),
        ...[...this.#shared].map((key) => attempt(() => this.cache.deleteObjects(key))),
      ]);
    }
    this.client.close();
    this.cache.close();
    if (failures.length > 0) throw failures[0];
  }

  private ensureOpen(): void {
    if (this.#closing) throw new FailedPreconditionError(`Runner "${this.name}" is closed`);
  }
}

/**
 * Makes sure application `name` exists: reused when it does, else registered
 * from the kiln-run template with the project's package (packed and uploaded
 * unless already in the cache, or taken from the executor when the project is
 * the package an executor is running).
 */
async function provideApplication(
  name: string,
  project: string,
  excludes: readonly string[],
  client: KilnClient,
  cache: ObjectCache,
): Promise<{ registered: boolean; packaged?: ReadonlySet<string> }> {
  const existing = await client.getApplication(name).catch(ignoreNotFound);
  if (existing) {
    if (!existing.spec?.labels.includes(RUNNER_LABEL))
      throw new FailedPreconditionError(
        `application "${name}" exists and is not a Runner application (no ${RUNNER_LABEL} label); choose another name`,
      );
    return { registered: false };
  }
  const template = (await client.getApplication(RUNNER_TEMPLATE).catch(ignoreNotFound))?.spec;
  if (!template)
    throw new FailedPreconditionError(
      `the cluster has no "${RUNNER_TEMPLATE}" application to copy (is it a Kiln cluster of this version?)`,
    );
  const inherited = process.env[RUNNER_PACKAGE_ENV];
  const pkg =
    runsInsideExecutor(project) && inherited ? { url: inherited } : await uploadProject(name, project, excludes, cache);
  const spec = clone(flame.ApplicationSpecSchema, template);
  spec.url = pkg.url;
  spec.installer = undefined;
  spec.labels = [...template.labels.filter((l) => l !== "builtin"), RUNNER_LABEL];
  spec.description = `Runner application for ${project}`;
  try {
    await client.registerApplication(name, spec);
  } catch (err) {
    // Another Runner registered it meanwhile: use theirs, as if it had existed.
    if (err instanceof KilnError && err.code === ErrorCode.AlreadyExists) return { registered: false };
    throw err;
  }
  return { registered: true, ...("files" in pkg ? { packaged: pkg.files } : {}) };
}

/** Packs the project and uploads it at a content-addressed key; returns its `cache://` URL and files. */
async function uploadProject(
  name: string,
  project: string,
  excludes: readonly string[],
  cache: ObjectCache,
): Promise<{ url: string; files: ReadonlySet<string> }> {
  const workDir = await fsp.mkdtemp(path.join(os.tmpdir(), "kiln-runner-"));
  try {
    const archive = await packDirectory(project, path.join(workDir, "package.tar.gz"), {
      excludes: [...RUNNER_EXCLUDES, ...excludes],
    });
    const { key, url } = packageLocation(name, archive);
    await publishPackage(cache, key, archive);
    return { url, files: new Set(archive.files) };
  } finally {
    await fsp.rm(workDir, { recursive: true, force: true });
  }
}

function checkServiceOptions(o: AnyServiceOptions): AnyServiceOptions {
  if (o.warmup !== undefined && (!Number.isInteger(o.warmup) || o.warmup < 0))
    throw new InvalidArgumentError("warmup", `must be a whole number of executors (got ${String(o.warmup)})`);
  if (o.args !== undefined && !Array.isArray(o.args))
    throw new InvalidArgumentError("args", "must be an array of constructor arguments");
  if (o.dependencies !== undefined) {
    if (!Array.isArray(o.dependencies)) throw new InvalidArgumentError("dependencies", "must be an array of npm specs");
    o.dependencies.forEach((d, i) => checkDependencySpec(d, `dependencies[${i}]`));
  }
  return o;
}
