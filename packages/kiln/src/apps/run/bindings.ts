import { ignoreNotFound } from "@kiln/protocol";
import { type ObjectCache } from "@kiln/sdk";
import type { ServiceSpec } from "@kiln/protocol/runner";

type Callable = (...args: unknown[]) => unknown;
type Constructor = new (...args: unknown[]) => object;

/** "class" for a class, "function" for any other function, undefined for anything else. */
export function kindOf(value: unknown): "function" | "class" | undefined {
  if (typeof value !== "function") return undefined;
  return /^class[\s{]/.test(Function.prototype.toString.call(value)) ? "class" : "function";
}

/**
 * What one session runs: the export (a function, or one instance of a
 * class), how calls reach it, and for a stateful instance, its state.
 */
export class Binding {
  private constructor(
    /** `<module>#<export>`, for messages. */
    readonly service: string,
    private readonly fn: Callable | undefined,
    private readonly instance: object | undefined,
    private readonly state: StatefulState | undefined,
  ) {}

  /**
   * Checks the export against the spec and builds the binding; a class is
   * instantiated here, once, with the (already resolved) constructor args.
   */
  static create(
    spec: ServiceSpec,
    exported: unknown,
    args: unknown[],
    state: { cache: ObjectCache; key: string },
  ): Binding {
    const service = `${spec.module}#${spec.export}`;
    const kind = kindOf(exported);
    if (!kind) throw new Error(`${service} is ${describe(exported)}, not a function or class`);
    if (spec.kind !== "auto" && spec.kind !== kind) throw new Error(`${service} is a ${kind}, not a ${spec.kind}`);
    if (kind === "function") {
      if (spec.args.length > 0) throw new Error(`${service} is a function: constructor arguments make no sense`);
      if (spec.stateful) throw new Error(`${service} is a function: only class instances can be stateful`);
      return new Binding(service, exported as Callable, undefined, undefined);
    }
    const instance = new (exported as Constructor)(...args);
    return new Binding(
      service,
      undefined,
      instance,
      spec.stateful ? new StatefulState(instance, state.cache, state.key) : undefined,
    );
  }

  /**
   * Runs one call: `method` null for a function, a method name for an
   * instance. `around` wraps the call itself (output capture, timing), inside
   * the state load/save of a stateful instance.
   */
  call<T>(method: string | null, args: unknown[], around: (run: () => unknown) => Promise<T>): Promise<T> {
    if (this.fn) {
      if (method !== null) throw new Error(`${this.service} is a function; it has no method "${method}"`);
      const fn = this.fn;
      return around(() => fn(...args));
    }
    const instance = this.instance!;
    if (method === null) throw new Error(`${this.service} is a class: call one of its methods`);
    const fn = findMethod(instance, method);
    if (!fn) throw new Error(`${this.service} has no method "${method}"`);
    const run = () => around(() => Reflect.apply(fn, instance, args));
    return this.state ? this.state.serialize(run) : run();
  }
}

/**
 * A method the class defines (on the instance or its prototypes below
 * Object.prototype), so a caller cannot reach `__defineGetter__` and the like.
 */
function findMethod(instance: object, name: string): Callable | undefined {
  if (name === "constructor") return undefined;
  for (let o: object | null = instance; o && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    const d = Object.getOwnPropertyDescriptor(o, name);
    if (d) return typeof d.value === "function" ? (d.value as Callable) : undefined;
  }
  return undefined;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  return typeof value === "object"
    ? `an object (${Object.getPrototypeOf(value)?.constructor?.name ?? "null prototype"})`
    : `a ${typeof value}`;
}

/**
 * The cached state of a stateful instance: its own enumerable properties,
 * saved after each call and loaded before the next whenever the cache holds
 * a newer version (written by an instance on another executor). Calls run one
 * at a time.
 */
class StatefulState {
  private version = 0;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly instance: object,
    private readonly cache: ObjectCache,
    private readonly key: string,
  ) {}

  serialize<T>(run: () => Promise<T>): Promise<T> {
    const next = this.tail.then(async () => {
      await this.load();
      try {
        return await run();
      } finally {
        // Saved after a throw too: the instance keeps what the call changed, as it would locally.
        await this.save();
      }
    });
    this.tail = next.catch(() => undefined);
    return next;
  }

  private async load(): Promise<void> {
    const stat = await this.cache.statObject(this.key).catch(ignoreNotFound);
    if (!stat || stat.version <= this.version) return;
    const state = await this.cache.getObject(this.key);
    if (typeof state !== "object" || state === null) throw new Error(`the saved state at ${this.key} is not an object`);
    Object.assign(this.instance, state);
    this.version = stat.version;
  }

  private async save(): Promise<void> {
    try {
      this.version = (await this.cache.putObject(this.key, { ...this.instance })).version;
    } catch (err) {
      throw new Error(`cannot save the instance's state: ${(err as Error).message}`, { cause: err });
    }
  }
}
