// What require("@kiln/sdk/internal") returns to a project's CommonJS module: kiln-run's own @kiln/sdk/internal (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/sdk/internal")];
