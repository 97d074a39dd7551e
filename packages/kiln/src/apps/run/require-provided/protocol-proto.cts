// What require("@kiln/protocol/proto") returns to a project's CommonJS module: kiln-run's own @kiln/protocol/proto (see module-loader.ts).
export = (globalThis as Record<symbol, unknown>)[Symbol.for("kiln-run:@kiln/protocol/proto")];
