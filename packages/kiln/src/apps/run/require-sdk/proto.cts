// What require("@kiln/sdk/proto") returns to a project's CommonJS module: kiln-run's own @kiln/sdk/proto (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/sdk/proto")];
