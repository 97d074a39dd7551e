const VAR = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g;

/**
 * Expands `${NAME}` and `$NAME` from `env`, as a shell would: an unset name
 * expands to "". A `$` not followed by a name stays as it is.
 *
 * @example
 * expandVars("${HOME}/bin:$PATH", { HOME: "/h", PATH: "/usr/bin" }) // "/h/bin:/usr/bin"
 */
export function expandVars(text: string, env: NodeJS.ProcessEnv): string {
  return text.replace(
    VAR,
    (_, braced: string | undefined, bare: string | undefined) => env[braced ?? bare ?? ""] ?? "",
  );
}
