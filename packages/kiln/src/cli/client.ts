import { InvalidArgumentError } from "@kiln/protocol";
import { connect, type KilnClient } from "@kiln/sdk";
import { KilnServer } from "../net/healthz.js";
import { isTokenRefused, isUnreachable, TokenRefusedError, UnreachableError } from "./exit-codes.js";
import { explainWrongServer } from "./identify-server.js";
import { settingUsageError, tlsFileOptions, type GlobalOptions } from "./options.js";

/**
 * A client of the cluster the global options name. connect() only reads
 * options, env and the config file, so its failures are the user's input: usage errors.
 *
 * @example
 * const client = await connectWith(cmd.optsWithGlobals());
 */
export function connectWith(globals: GlobalOptions): Promise<KilnClient> {
  return connect({
    endpoint: globals.endpoint,
    token: globals.token,
    context: globals.context,
    configPath: globals.config,
    ...tlsFileOptions(globals),
  }).catch((err: unknown) => {
    throw err instanceof InvalidArgumentError ? settingUsageError(err) : err;
  });
}

/**
 * How the CLI reports a failed call to `client`: an UnreachableError when
 * the control plane could not be reached (saying what answered instead, when
 * something did), a TokenRefusedError saying where the token comes from when
 * it refused the token, else the error itself.
 *
 * @example
 * catch (err) { throw await explainCallFailure(client, err, globals.token); }
 */
export async function explainCallFailure(
  client: KilnClient,
  err: unknown,
  token: string | undefined,
): Promise<unknown> {
  // An UnreachableError or TokenRefusedError from inside (the object cache) already names its server.
  if (err instanceof UnreachableError || err instanceof TokenRefusedError) return err;
  if (isTokenRefused(err)) return new TokenRefusedError("the cluster", client.endpoint, { cause: err });
  const explanation = await explainWrongServer(client.endpoint, KilnServer.ControlPlane, err, token);
  if (explanation === undefined && !isUnreachable(err)) return err;
  return new UnreachableError(client.endpoint, { cause: err, ...(explanation ? { explanation } : {}) });
}

/**
 * Connects with the global options, runs `fn`, and always closes the client.
 * Any "cannot reach" failure comes out as an UnreachableError naming the endpoint, a refused
 * token as a TokenRefusedError saying where the token comes from.
 *
 * @example
 * await withClient(cmd.optsWithGlobals(), (client) => client.listApplications());
 */
export async function withClient<T>(globals: GlobalOptions, fn: (client: KilnClient) => Promise<T>): Promise<T> {
  const client = await connectWith(globals);
  try {
    return await fn(client);
  } catch (err) {
    throw await explainCallFailure(client, err, globals.token);
  } finally {
    client.close();
  }
}
