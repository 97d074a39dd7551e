// The packages are what users install: each one must declare what it imports, export only files
// that exist, reach other packages only through their public entries, and load without cycles.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

interface Manifest {
  name: string;
  dependencies?: Record<string, string>;
  exports?: Record<string, { types: string; default: string }>;
  bin?: Record<string, string>;
}

interface Workspace {
  dir: string;
  manifest: Manifest;
}

const workspaces: Workspace[] = (
  JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { workspaces: string[] }
).workspaces.map((dir) => ({
  dir: path.join(root, dir),
  manifest: JSON.parse(fs.readFileSync(path.join(root, dir, "package.json"), "utf8")) as Manifest,
}));
const byName = new Map(workspaces.map((w) => [w.manifest.name, w]));

function filesUnder(dir: string, suffixes: string[]): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(p, suffixes));
    else if (suffixes.some((s) => entry.name.endsWith(s)) && !entry.name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

/** Every module specifier in `from "…"`, `import "…"` and `import("…")` (comments stripped first). */
function specifiers(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const found: string[] = [];
  for (const m of code.matchAll(/\bfrom\s+"([^"]+)"|\bimport\s+"([^"]+)"|\bimport\(\s*"([^"]+)"\s*\)/g))
    found.push((m[1] ?? m[2] ?? m[3])!);
  return found;
}

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
function packageName(specifier: string): string {
  const parts = specifier.split("/");
  return specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

/** `@kiln/protocol/transport` → `./transport`, the key it needs in that package's `exports`. */
function exportKey(specifier: string): string {
  const rest = specifier.slice(packageName(specifier).length);
  return rest === "" ? "." : `.${rest}`;
}

describe("package manifests", () => {
  for (const { dir, manifest } of workspaces) {
    const sources = filesUnder(path.join(dir, "src"), [".ts", ".cts", ".mts"]);

    test(`${manifest.name} declares every package its source imports`, () => {
      const declared = new Set(Object.keys(manifest.dependencies ?? {}));
      const missing = new Set<string>();
      for (const file of sources)
        for (const spec of specifiers(fs.readFileSync(file, "utf8"))) {
          if (spec.startsWith(".") || spec.startsWith("node:")) continue;
          const name = packageName(spec);
          if (name !== manifest.name && !declared.has(name)) missing.add(`${name} (${path.relative(root, file)})`);
        }
      assert.deepEqual([...missing], []);
    });

    test(`${manifest.name} reaches other packages only through their exports, and stays inside its own folder`, () => {
      const problems: string[] = [];
      for (const file of sources)
        for (const spec of specifiers(fs.readFileSync(file, "utf8"))) {
          const where = path.relative(root, file);
          if (spec.startsWith(".")) {
            const target = path.resolve(path.dirname(file), spec);
            if (!target.startsWith(path.join(dir, "src") + path.sep)) problems.push(`${where}: ${spec} leaves src/`);
            continue;
          }
          const other = byName.get(packageName(spec));
          if (other && !(exportKey(spec) in (other.manifest.exports ?? {})))
            problems.push(`${where}: ${spec} is not an entry of ${other.manifest.name}`);
        }
      assert.deepEqual(problems, []);
    });

    test(`${manifest.name}'s exports and bin point at files that exist`, () => {
      const targets = [
        ...Object.values(manifest.exports ?? {}).flatMap((e) => [e.types, e.default]),
        ...Object.values(manifest.bin ?? {}),
      ];
      assert.ok(targets.length > 0, "exports something");
      for (const target of targets) assert.ok(fs.existsSync(path.join(dir, target)), `${manifest.name}: ${target}`);
    });
  }

  test("Connect is pinned to one exact version wherever it is used (its protocol-grpc exports are private)", () => {
    const versions = new Map<string, string>();
    for (const { manifest } of workspaces)
      for (const [name, range] of Object.entries(manifest.dependencies ?? {})) {
        if (!name.startsWith("@connectrpc/")) continue;
        assert.match(range, /^\d+\.\d+\.\d+$/, `${manifest.name}: ${name}@${range} is not an exact version`);
        versions.set(`${manifest.name} ${name}`, range);
      }
    assert.ok(versions.size >= 2);
    assert.equal(new Set(versions.values()).size, 1, `one version: ${JSON.stringify(Object.fromEntries(versions))}`);
  });

  test("no package has a runtime import cycle (type-only imports are erased in dist/)", () => {
    const graph = new Map<string, string[]>();
    for (const { dir } of workspaces)
      for (const file of filesUnder(path.join(dir, "dist"), [".js", ".cjs"]))
        graph.set(
          file,
          specifiers(fs.readFileSync(file, "utf8"))
            .filter((s) => s.startsWith("."))
            .map((s) => path.resolve(path.dirname(file), s)),
        );
    assert.ok(graph.size > 100, "the packages are built");
    const state = new Map<string, "open" | "done">();
    const cycles: string[] = [];
    const stack: string[] = [];
    const visit = (file: string): void => {
      state.set(file, "open");
      stack.push(file);
      for (const dep of graph.get(file) ?? []) {
        if (state.get(dep) === "open")
          cycles.push([...stack.slice(stack.indexOf(dep)), dep].map((f) => path.relative(root, f)).join(" -> "));
        else if (!state.has(dep) && graph.has(dep)) visit(dep);
      }
      stack.pop();
      state.set(file, "done");
    };
    for (const file of graph.keys()) if (!state.has(file)) visit(file);
    assert.deepEqual(cycles, []);
  });
});
