import { connect, InvalidArgumentError, type KilnClient } from "@kiln/sdk";
import { KilnServer } from "../net/healthz.js";
import { isUnreachable, UnreachableError, UsageError } from "./exit-codes.js";
import { explainWrongServer } from "./identify-server.js";
import type { GlobalOptions } from "./options.js";

/**
 * Connects with the global options, runs `fn`, and always closes the client.
 * Any "cannot reach" failure comes out as an UnreachableError naming the endpoint.
 *
 * @example
 * await withClient(cmd.optsWithGlobals(), (client) => client.listApplications());
 */
export async function withClient<T>(globals: GlobalOptions, fn: (client: KilnClient) => Promise<T>): Promise<T> {
  let client: KilnClient | undefined;
  try {
    client = await connect({
      endpoint: globals.endpoint,
      token: globals.token,
      context: globals.context,
      configPath: globals.config,
    }).catch((err: unknown) => {
      // connect() only reads options, env and the config file: its failures are the user's input.
      throw err instanceof InvalidArgumentError ? new UsageError(`${err.message} (${err.code})`) : err;
    });
    return await fn(client);
  } catch (err) {
    // An UnreachableError from inside (the object cache) already names what could not be reached.
    if (err instanceof UnreachableError || !client) throw err;
    const explanation = await explainWrongServer(client.endpoint, KilnServer.ControlPlane, err, globals.token);
    if (explanation !== undefined || isUnreachable(err))
      throw new UnreachableError(client.endpoint, { cause: err, ...(explanation ? { explanation } : {}) });
    throw err;
  } finally {
    client?.close();
  }
}
