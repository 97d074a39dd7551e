import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ApplicationFileError, parseApplicationFile } from "../src/cli/app-file.js";
import { UsageError } from "../src/cli/exit-codes.js";

const SPEC_FIELDS =
  "shim, description, labels, image, command, arguments, environments, working_directory, max_instances, " +
  "delay_release, schema, url, installer";

describe("application files", () => {
  it("maps every Flame spec field to ApplicationInit", () => {
    const apps = parseApplicationFile(`
metadata:
  name: echo
spec:
  shim: Host
  description: echoes input
  labels: [a, kiln.concurrency=4]
  image: busybox
  command: /bin/cat
  arguments: ["-u", 3]
  environments:
    LANG: C.UTF-8
    PORT: 8080
  working_directory: /tmp
  max_instances: 4
  delay_release: 60
  url: file:///pkgs/echo.tar.gz
  installer: node
  schema:
    input: { type: string }
    output: '{"type":"string"}'
`);
    assert.deepEqual(apps, [
      {
        name: "echo",
        init: {
          shim: "host",
          description: "echoes input",
          labels: ["a", "kiln.concurrency=4"],
          image: "busybox",
          command: "/bin/cat",
          arguments: ["-u", "3"],
          environments: { LANG: "C.UTF-8", PORT: "8080" },
          workingDirectory: "/tmp",
          maxInstances: 4,
          delayReleaseSeconds: 60,
          url: "file:///pkgs/echo.tar.gz",
          installer: "node",
          schema: { input: '{"type":"string"}', output: '{"type":"string"}' },
        },
      },
    ]);
  });

  it("reads several documents, environments as a list, and skips empty documents", () => {
    const apps = parseApplicationFile(`
metadata: { name: one }
spec:
  command: /bin/true
  environments:
    - { name: A, value: "1" }
    - name: B
---
metadata: { name: two }
---
`);
    assert.deepEqual(apps, [
      { name: "one", init: { command: "/bin/true", environments: { A: "1", B: "" } } },
      { name: "two", init: {} },
    ]);
  });

  const rejects = (text: string, message: RegExp): void =>
    assert.throws(
      () => parseApplicationFile(text),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
    );

  it("names the document and the field of a mistake", () => {
    rejects("metadata: { name: ok }\n---\nspec: { command: x }\n", /^document 2: metadata\.name: is required$/);
    rejects(
      "metadata: { name: ok }\n---\nmetadata: { name: b }\nspec: { max_instances: -1 }\n",
      /^document 2: spec\.max_instances: /,
    );
    rejects("metadata: { name: a }\nspec: { shim: docker }\n", /^document 1: spec\.shim: must be Host or Wasm/);
    rejects("metadata: { name: a }\nspec: { max_instance: 2 }\n", /^document 1: spec\.max_instance: unknown field/);
    rejects("metadata: { name: a }\nspec: { arguments: x }\n", /^document 1: spec\.arguments: must be a list/);
    rejects("metadata: { name: ../x }\n", /^document 1: metadata\.name: /);
    rejects("metadata: { name: a }\n---\nmetadata: { name: a }\n", /^document 2: metadata\.name: "a" appears twice/);
  });

  it("reports every problem of every document, document by document, not only the first", () => {
    const text = [
      "metadata: { name: one }",
      "spec: { working_directory: relative/dir, max_instances: many }",
      "---",
      "spec: { shim: docker, arguments: [a, [b]] }",
      "---",
      "metadata: { name: three }",
      "spec:",
      "  environments: [{ value: x }, 5]",
      "  schema: { input: 3, outputs: {} }",
      "  delay_releas: 1",
      "---",
      "metadata: { name: [broken",
    ].join("\n");
    assert.throws(
      () => parseApplicationFile(text),
      (e: unknown) => {
        assert.ok(e instanceof ApplicationFileError, String(e));
        assert.deepEqual(e.problems, [
          'document 1: spec.working_directory: must be an absolute path (got "relative/dir")',
          'document 1: spec.max_instances: must be a whole number, 0 or more (got string "many")',
          "document 2: metadata.name: is required",
          'document 2: spec.shim: must be Host or Wasm (got "docker")',
          "document 2: spec.arguments[1]: must be a string (got a list)",
          `document 3: spec.delay_releas: unknown field (known: ${SPEC_FIELDS})`,
          "document 3: spec.environments[0].name: is required",
          "document 3: spec.environments[1]: must be {name, value} (got number 5)",
          "document 3: spec.schema.outputs: unknown field (known: input, output, common_data)",
          "document 3: spec.schema.input: must be a JSON Schema object or a JSON string (got number 3)",
          e.problems[10]!,
        ]);
        assert.match(e.problems[10]!, /^document 4: invalid YAML: /);
        return true;
      },
    );
  });

  it("takes an absolute working_directory and refuses a relative one", () => {
    assert.equal(
      parseApplicationFile("metadata: { name: a }\nspec: { working_directory: /srv/a }\n")[0]!.init.workingDirectory,
      "/srv/a",
    );
    rejects(
      "metadata: { name: a }\nspec: { working_directory: ./a }\n",
      /^document 1: spec\.working_directory: must be an absolute path \(got "\.\/a"\)$/,
    );
  });

  it("reports broken YAML with its document number", () => {
    rejects("metadata: { name: a }\n---\nmetadata: { name: [unclosed\n", /^document 2: invalid YAML: /);
  });

  it("refuses a file with no applications", () => {
    rejects("", /defines no applications/);
    rejects("---\n---\n", /defines no applications/);
  });
});
