// What require("@kiln/sdk") returns to a project's CommonJS module: kiln-run's own @kiln/sdk (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/sdk")];
