import type { SessionOptions } from "../client/specs.js";
import type { ObjectRef } from "@kiln/protocol";
import type { ObjectFuture } from "./object-future.js";

/**
 * The types that turn a module's exports into remote proxies. Everything is
 * derived from the module's own types (`typeof import("./math.js")`), so a
 * remote call with the wrong arguments is a compile error, as a local one is.
 */

/** Any function (parameters are checked where the function is used). */
export type AnyFunction = (...args: never[]) => unknown;
/** Any class. */
export type AnyClass = abstract new (...args: never[]) => unknown;

/** An argument of type T: the value, a future of it, or an ObjectRef the executor fetches. */
export type RemoteArg<T> = T | ObjectFuture<T> | ObjectRef;

/** Each parameter also accepts a future or an ObjectRef. */
export type RemoteArgs<P extends readonly unknown[]> = { [I in keyof P]: RemoteArg<P[I]> };

/**
 * A remote function: same parameters (or futures/refs of them), and an
 * ObjectFuture of the awaited return type.
 *
 * @example
 * const add: RemoteFunction<(a: number, b: number) => number> = await runner.service(math, "add");
 * const sum: number = await add(1, add(2, 3));
 */
export type RemoteFunction<F extends AnyFunction> = (
  ...args: RemoteArgs<Parameters<F>>
) => ObjectFuture<Awaited<ReturnType<F>>>;

/**
 * Names a remote instance cannot offer: `then` would make it look like a
 * promise; the rest belong to the callable proxy itself (Function's and Object's own).
 */
type ReservedName =
  | "then"
  | "call"
  | "apply"
  | "bind"
  | "name"
  | "length"
  | "prototype"
  | "arguments"
  | "caller"
  | "constructor"
  | "toString"
  | "toLocaleString"
  | "valueOf"
  | "hasOwnProperty"
  | "isPrototypeOf"
  | "propertyIsEnumerable";

type MethodNames<I> = {
  [K in keyof I]: K extends ReservedName ? never : I[K] extends AnyFunction ? K : never;
}[keyof I];

/**
 * A remote class instance: each public method becomes a remote call
 * returning an ObjectFuture. (Methods named `then`, or like a property of
 * every function — `call`, `apply`, `bind`, `toString`, `valueOf`, `name`,
 * `length`… — are not reachable remotely.)
 *
 * @example
 * const counter: RemoteInstance<Counter> = await runner.service(mod, "Counter", { args: [10] });
 * await counter.add(5); // 15
 */
export type RemoteInstance<I> = {
  [K in MethodNames<I> & string]: I[K] extends (...args: infer A) => infer R
    ? (...args: RemoteArgs<A>) => ObjectFuture<Awaited<R>>
    : never;
};

/** What `runner.service` returns for an export: a remote instance for a class, a remote function for a function. */
export type RemoteService<T> = T extends AnyClass
  ? RemoteInstance<InstanceType<T>>
  : T extends AnyFunction
    ? RemoteFunction<T>
    : never;

/** The exports of M that can become services: its functions and classes. */
export type ServiceExport<M> = {
  [K in keyof M]: M[K] extends AnyFunction | AnyClass ? K : never;
}[keyof M] &
  string;

/** Options every service takes. */
export interface CommonServiceOptions {
  /** Keep at least this many executors bound (and so the module loaded) from the start. Default 0. */
  warmup?: number;
  /**
   * Let the cluster add executors as calls queue up (default true, false for
   * stateful classes). False: at most max(warmup, 1) executors.
   */
  autoscale?: boolean;
  /** Resources per executor: `cpu=1,mem=2g`, or cores and bytes. Default: the cluster's. */
  resreq?: SessionOptions["resreq"];
  /** npm package specs installed on the executors for this service, e.g. `lodash@4.17.21`. */
  dependencies?: string[];
  /** Higher first, against other sessions. */
  priority?: number;
}

/** Options of a class service. */
export interface ClassServiceOptions<C extends AnyClass> extends CommonServiceOptions {
  /** Constructor arguments (futures and ObjectRefs are resolved on the executor, like call arguments). */
  args?: RemoteArgs<ConstructorParameters<C>>;
  /**
   * Save the instance's own enumerable properties to the object cache after
   * each call and restore them before the next, on whichever executor runs
   * it; calls on one instance then run one at a time.
   */
  stateful?: boolean;
}

/** `runner.service` options for an export T. */
export type ServiceOptions<T> = T extends AnyClass ? ClassServiceOptions<T> : CommonServiceOptions;

/** The options parameter: required when T is a class whose constructor needs arguments. */
export type ServiceOptionsArg<T> = T extends AnyClass
  ? [] extends ConstructorParameters<T>
    ? [options?: ServiceOptions<T>]
    : [options: ServiceOptions<T> & { args: RemoteArgs<ConstructorParameters<T>> }]
  : [options?: ServiceOptions<T>];
