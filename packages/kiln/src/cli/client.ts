import { connect, type KilnClient } from "@kiln/sdk";
import { InvalidArgumentError } from "@kiln/protocol";
import { isTokenRefused, isUnreachable, TokenRefusedError, UnreachableError } from "./exit-codes.js";
import { settingUsageError, type GlobalOptions } from "./options.js";

/**
 * Connects with the global options, runs `fn`, and always closes the client.
 * Any "cannot reach" failure comes out as an UnreachableError naming the endpoint, a refused
 * token as a TokenRefusedError saying where the token comes from.
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
      throw err instanceof InvalidArgumentError ? settingUsageError(err) : err;
    });
    return await fn(client);
  } catch (err) {
    // An UnreachableError or TokenRefusedError from inside (the object cache) already names its server.
    const endpoint = client?.endpoint ?? globals.endpoint;
    if (isUnreachable(err) && !(err instanceof UnreachableError)) throw new UnreachableError(endpoint, { cause: err });
    if (isTokenRefused(err) && endpoint) throw new TokenRefusedError("the cluster", endpoint, { cause: err });
    throw err;
  } finally {
    client?.close();
  }
}
