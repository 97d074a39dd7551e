import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { dependencySpecs } from "../src/apps/run/dependencies.js";

describe("kiln-run dependency specs", () => {
  let dir: string;
  let n = 0;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-run-deps-"));
  });

  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function project(manifest: unknown, lock?: unknown): Promise<string> {
    const root = path.join(dir, `p${n++}`);
    await fs.mkdir(root);
    await fs.writeFile(path.join(root, "package.json"), JSON.stringify(manifest));
    if (lock !== undefined) await fs.writeFile(path.join(root, "package-lock.json"), JSON.stringify(lock));
    return root;
  }

  it("takes the project's dependencies at the lockfile's versions, never the SDK, plus the service's", async () => {
    const root = await project(
      {
        dependencies: {
          "@kiln/sdk": "^0.1.0",
          lodash: "^4.17.0",
          "left-pad": "^1.0.0",
          local: "file:vendor/local",
          alias: "npm:other@^2.0.0",
        },
      },
      {
        packages: {
          "node_modules/lodash": { version: "4.17.21" },
          "node_modules/@kiln/sdk": { version: "0.1.0" },
          "node_modules/local": { resolved: "vendor/local", link: true },
          "node_modules/alias": { name: "other", version: "2.3.4" },
        },
      },
    );
    assert.deepEqual(await dependencySpecs(root, ["zod@3.23.8", "lodash@4.17.21"]), [
      "alias@npm:other@^2.0.0",
      "left-pad@^1.0.0",
      `local@file:${path.join(root, "vendor/local")}`,
      "lodash@4.17.21",
      "zod@3.23.8",
    ]);
  });

  it("is empty for a project without dependencies and no service dependencies", async () => {
    assert.deepEqual(await dependencySpecs(await project({ name: "bare" }), []), []);
    assert.deepEqual(await dependencySpecs(await project({ dependencies: { "@kiln/sdk": "*" } }), []), []);
  });

  it("refuses a spec that npm would read as an option, naming where it came from", async () => {
    const root = await project({ name: "x" });
    await assert.rejects(dependencySpecs(root, ["ok@1.0.0", "--registry=http://evil.example"]), {
      name: "InvalidArgumentError",
      field: "dependencies[1]",
    });
    await assert.rejects(dependencySpecs(await project({ dependencies: { "-x": "1.0.0" } }), []), {
      field: "-x",
    });
  });

  it("names the file when package.json or the lockfile is not JSON", async () => {
    const root = await project({ name: "x" });
    await fs.writeFile(path.join(root, "package-lock.json"), "{ not json");
    await assert.rejects(dependencySpecs(root, []), /package-lock\.json is not valid JSON/);
  });
});
