// What require("@kiln/protocol") returns to a project's CommonJS module: kiln-run's own @kiln/protocol (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/protocol")];
