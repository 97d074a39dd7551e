// What require("@kiln/service") returns to a project's CommonJS module: kiln-run's own @kiln/service (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/service")];
