// What require("@kiln/sdk/service") returns to a project's CommonJS module: kiln-run's own @kiln/sdk/service (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/sdk/service")];
