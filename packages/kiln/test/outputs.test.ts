import { ErrorCode, ignoreNotFound, InvalidArgumentError } from "@kiln/protocol";
import { ObjectCache } from "@kiln/sdk";
import {
  DEFAULT_LEVELS,
  jobKeys,
  MAX_REPORTED_ENTRIES,
  matchesPattern,
  validateLevels,
  validateOutputSpec,
  validateRelativePath,
  type OutputLevel,
  type OutputSpec,
} from "@kiln/protocol/jobs";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { startCacheServer, type CacheServer } from "../src/cache/server.js";
import { matchOutputs } from "../src/outputs/match.js";
import { persistOutputs, type PersistTarget } from "../src/outputs/persist.js";
import { newEntries, takeListing } from "../src/outputs/snapshot.js";

const tempDirs: string[] = [];
after(() => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(prefix = "kiln-outputs-"): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}

/** Writes files (relative path → content) under `dir`, creating directories. */
function writeFiles(dir: string, files: Record<string, string | Buffer>): void {
  for (const [rel, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), content);
  }
}

const sha256 = (data: string | Buffer) => createHash("sha256").update(data).digest("hex");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("output spec rules", () => {
  // One rejected pattern per rule: [rule, level, pattern, text the message must contain].
  const rejected: [string, string, string, string][] = [
    ["unknown level", "secret", "out/a.csv", 'unknown level "secret"'],
    ["absolute POSIX path", "highly_sensitive", "/tmp/a.csv", "absolute path"],
    ["absolute Windows path", "highly_sensitive", "C:\\out\\a.csv", "absolute path"],
    ["absolute Windows path, forward slashes", "highly_sensitive", "C:/out/a.csv", "absolute path"],
    ["UNC path", "highly_sensitive", "\\\\server\\share\\a.csv", "absolute path"],
    ["..", "highly_sensitive", "out/../a.csv", 'contains ".."'],
    ["backslash", "highly_sensitive", "out\\a.csv", "backslash"],
    ["empty component", "highly_sensitive", "out//a.csv", "empty component"],
    ["trailing slash", "highly_sensitive", "out/", "empty component"],
    ["not normalised", "highly_sensitive", "./out/a.csv", "not normalised"],
    ["not normalised inside", "highly_sensitive", "out/./a.csv", "not normalised"],
    ["reserved directory", "highly_sensitive", ".kiln/a.csv", "reserved for the executor"],
    ["control character", "highly_sensitive", "out/a\n.csv", "control character"],
    ["no file name part", "highly_sensitive", "out/*", "no file extension"],
    ["no extension", "highly_sensitive", "out/data", "no file extension"],
    ["wildcard extension", "highly_sensitive", "out/a.*", "wildcard in its extension"],
    ["**", "highly_sensitive", "out/**/a.csv", 'uses "**"'],
    ["?", "highly_sensitive", "out/a?.csv", 'uses "?"'],
    ["[", "highly_sensitive", "out/[ab].csv", 'uses "[" or "]"'],
    ["{", "highly_sensitive", "out/{a,b}.csv", 'uses "{" or "}"'],
    ["extension the level does not allow", "moderately_sensitive", "out/model.bin", "does not allow"],
  ];
  for (const [rule, level, pattern, text] of rejected) {
    it(`rejects ${rule}: ${JSON.stringify(pattern)}`, () => {
      assert.throws(
        () => validateOutputSpec({ [level]: { result: pattern } }),
        (err: unknown) => {
          assert.ok(err instanceof InvalidArgumentError, String(err));
          assert.equal(err.code, ErrorCode.InvalidArgument);
          assert.equal(err.field, `outputs.${level}.result`);
          assert.ok(err.message.includes(`pattern ${JSON.stringify(pattern)}`), `names the pattern: ${err.message}`);
          assert.ok(err.message.includes(text), `names the rule (${text}): ${err.message}`);
          return true;
        },
      );
    });
  }

  it("rejects an output name that breaks the name rule, naming the pattern", () => {
    assert.throws(
      () => validateOutputSpec({ highly_sensitive: { "my rows": "out/rows.csv" } }),
      /outputs\.highly_sensitive\.my rows: pattern "out\/rows.csv": output name "my rows" may only contain/,
    );
  });

  it("rejects a pattern declared twice anywhere in the spec, also when only its case differs", () => {
    assert.throws(
      () => validateOutputSpec({ highly_sensitive: { a: "out/a.csv" }, moderately_sensitive: { b: "out/a.csv" } }),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        err.field === "outputs.moderately_sensitive.b" &&
        err.message.includes('pattern "out/a.csv" is declared twice (also outputs.highly_sensitive.a)'),
    );
    assert.throws(
      () => validateOutputSpec({ highly_sensitive: { a: "out/a.csv", b: "Out/A.csv" } }),
      /outputs\.highly_sensitive\.b: pattern "Out\/A.csv" differs only in case from "out\/a.csv"/,
    );
  });

  it("accepts an empty spec, overlapping patterns, spaces and any extension at the most restrictive level", () => {
    assert.deepEqual(validateOutputSpec({}), []);
    assert.deepEqual(validateOutputSpec({ moderately_sensitive: {} }), []);
    const declared = validateOutputSpec({
      moderately_sensitive: { summary: "out/summary.csv" },
      highly_sensitive: { rows: "out/*.csv", model: "out/my model.v2.BIN", dotted: "out/a..b.csv" },
    });
    assert.deepEqual(
      declared.map((d) => [d.levelRank, d.level, d.name]),
      [
        [0, "highly_sensitive", "rows"],
        [0, "highly_sensitive", "model"],
        [0, "highly_sensitive", "dotted"],
        [1, "moderately_sensitive", "summary"],
      ],
    );
  });

  it("checks the levels themselves, and custom levels replace the defaults", () => {
    assert.throws(() => validateLevels([]), /levels: must be a non-empty array/);
    const level = { name: "secret", maxFileBytes: 1024, extensions: [".csv"] };
    assert.throws(() => validateLevels([level, { ...level }]), /levels\[1\]\.name: level "secret" is listed twice/);
    assert.throws(() => validateLevels([{ ...level, maxFileBytes: 0 }]), /levels\[0\]\.maxFileBytes/);
    assert.throws(() => validateLevels([{ ...level, extensions: ["CSV"] }]), /levels\[0\]\.extensions: "CSV"/);
    assert.throws(
      () => validateOutputSpec({ highly_sensitive: { a: "a.csv" } }, [level]),
      /unknown level "highly_sensitive" \(levels: secret\)/,
    );
    assert.throws(
      () => validateOutputSpec({ public: {} }, [level]),
      /^InvalidArgumentError: outputs\.public: unknown level/,
    );
    assert.equal(validateOutputSpec({ secret: { a: "a.CSV" } }, [level]).length, 1);
    assert.throws(() => (DEFAULT_LEVELS as OutputLevel[]).push(level), TypeError, "the defaults cannot be changed");
  });

  it("applies the path rules to plain paths (inputs, fetched files)", () => {
    assert.equal(validateRelativePath("inputs[0].path", "data/in put.csv"), "data/in put.csv");
    for (const bad of ["../x", "/etc/passwd", "a//b", "./a", "a\\b", ".kiln/x", "C:/x", ""])
      assert.throws(
        () => validateRelativePath("inputs[0].path", bad),
        /^InvalidArgumentError: inputs\[0\]\.path: path/,
      );
  });

  it("matches `*` within one path component only", () => {
    assert.ok(matchesPattern("out/*.csv", "out/rows.csv"));
    assert.ok(matchesPattern("out/*.csv", "out/.csv"));
    assert.ok(!matchesPattern("out/*.csv", "out/sub/rows.csv"));
    assert.ok(!matchesPattern("*.csv", "out/rows.csv"));
    assert.ok(matchesPattern("*/*-*.csv", "out/a-b-c.csv"));
    assert.ok(!matchesPattern("out/a*b*c.csv", "out/acb.csv"));
    assert.ok(!matchesPattern("out/rows.csv", "out/rows.csv.bak"));
    assert.ok(!matchesPattern(`out/${"*a".repeat(20)}b.csv`, `out/${"a".repeat(200)}.csv`));
  });
});

describe("new entries, by comparing listings", () => {
  it("reports new files and files rewritten in place, not untouched inputs or reserved directories", async () => {
    const work = tempDir();
    writeFiles(work, { "input.csv": "a,b\n1,2\n", "untouched.csv": "x\n", "data/keep.txt": "keep" });
    const mtime = new Date("2024-01-01T00:00:00Z"); // whole seconds, so utimes can set it back exactly
    fs.utimesSync(path.join(work, "input.csv"), mtime, mtime);
    const before = await takeListing(work);
    await sleep(30); // past the file system's timestamp granularity
    // Same size, same inode, mtime put back: only a listing that compares more than mtime sees the change.
    fs.writeFileSync(path.join(work, "input.csv"), "a,b\n3,4\n");
    fs.utimesSync(path.join(work, "input.csv"), mtime, mtime);
    writeFiles(work, { "out/rows.csv": "r", ".kiln/result.bin": "executor's own", "out/deep/er/x.json": "{}" });
    fs.mkdirSync(path.join(work, "empty"));
    const after = await takeListing(work);
    assert.ok(!after.files.has(".kiln") && !after.files.has(".kiln/result.bin"), "reserved directory not listed");
    assert.equal(after.files.get("out")?.kind, "directory");
    assert.deepEqual(newEntries(before, after), {
      files: ["input.csv", "out/deep/er/x.json", "out/rows.csv"],
      refused: [],
    });
  });

  it("refuses links (saying where they point), FIFOs, sockets and hard links to outside files, never following them", async () => {
    const work = tempDir();
    const outside = tempDir("kiln-outside-");
    writeFiles(outside, { "secret.csv": "secret", "dir/inner.csv": "inner" });
    writeFiles(work, { "input.csv": "in" });
    const before = await takeListing(work);
    fs.mkdirSync(path.join(work, "out"));
    fs.symlinkSync(path.join(outside, "secret.csv"), path.join(work, "out/secret.csv"));
    fs.symlinkSync("../input.csv", path.join(work, "out/alias.csv"));
    fs.symlinkSync(path.join(outside, "dir"), path.join(work, "out/linked-dir"));
    execFileSync("mkfifo", [path.join(work, "out/pipe.csv")]);
    fs.linkSync(path.join(outside, "secret.csv"), path.join(work, "out/hard.csv"));
    fs.linkSync(path.join(work, "input.csv"), path.join(work, "out/copy.csv"));
    fs.writeFileSync(Buffer.concat([Buffer.from(`${work}/out/`), Buffer.from([0xff]), Buffer.from(".csv")]), "x");
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(path.join(work, "out/sock.csv"), resolve));
    try {
      const { files, refused } = newEntries(before, await takeListing(work));
      // A hard link whose every name is inside the directory is the job's own file.
      assert.deepEqual(files, ["out/copy.csv"]);
      const reasons = new Map(refused.map((r) => [r.path, r.reason]));
      assert.deepEqual(
        [...reasons.keys()],
        [
          "out/alias.csv",
          "out/hard.csv",
          "out/linked-dir",
          "out/pipe.csv",
          "out/secret.csv",
          "out/sock.csv",
          "out/\ufffd.csv",
        ],
      );
      assert.match(
        reasons.get("out/secret.csv")!,
        /^a symbolic link to ".*secret\.csv", outside the working directory$/,
      );
      assert.match(reasons.get("out/linked-dir")!, /outside the working directory/);
      assert.match(
        reasons.get("out/alias.csv")!,
        /^a symbolic link to "\.\.\/input\.csv" \(inside the working directory/,
      );
      assert.match(reasons.get("out/pipe.csv")!, /FIFO/);
      assert.match(reasons.get("out/sock.csv")!, /socket/);
      assert.match(reasons.get("out/\ufffd.csv")!, /not valid UTF-8/);
      assert.match(
        reasons.get("out/hard.csv")!,
        /hard link to a file outside the working directory \(2 links, 1 inside\)/,
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it(
    "refuses a new directory it cannot read",
    { skip: process.getuid?.() === 0 && "root reads any directory" },
    async () => {
      const work = tempDir();
      const before = await takeListing(work);
      writeFiles(work, { "locked/a.csv": "a" });
      fs.chmodSync(path.join(work, "locked"), 0o000);
      try {
        assert.deepEqual(newEntries(before, await takeListing(work)).refused, [
          { path: "locked", reason: "a directory that could not be read (EACCES): nothing in it was collected" },
        ]);
      } finally {
        fs.chmodSync(path.join(work, "locked"), 0o755);
      }
    },
  );
});

describe("matching files to declared outputs", () => {
  it("keeps a file matched by several levels at the most restrictive one, and says what else matched", () => {
    const declared = validateOutputSpec({
      minimally_sensitive: { all: "out/*r*.csv" },
      moderately_sensitive: { summary: "out/summary.csv" },
      highly_sensitive: { rows: "out/rows.csv", tables: "out/*.csv" },
    });
    const result = matchOutputs(["out/summary.csv", "out/rows.csv"], declared);
    assert.deepEqual(
      result.matched.map((m) => [m.path, m.output.name, m.alsoMatched.map((a) => `${a.level}.${a.name}`)]),
      [
        ["out/rows.csv", "rows", ["highly_sensitive.tables", "minimally_sensitive.all"]],
        ["out/summary.csv", "tables", ["moderately_sensitive.summary", "minimally_sensitive.all"]],
      ],
    );
    assert.deepEqual(result.unmatchedPatterns, []);
    assert.deepEqual(result.unmatchedOutputs, []);
  });

  it("reports unmatched patterns and unmatched outputs with the nearest pattern as a hint", () => {
    const declared = validateOutputSpec({
      highly_sensitive: { rows: "output/rows_*.csv" },
      moderately_sensitive: { summary: "output/summary.txt", chart: "output/plots/*.png" },
    });
    const result = matchOutputs(["output/sumary.txt", "output/rows_1.csv", "scratch/plot.png"], declared);
    assert.deepEqual(
      result.unmatchedPatterns.map((d) => d.name),
      ["summary", "chart"],
    );
    assert.deepEqual(result.unmatchedOutputs, [
      { path: "output/sumary.txt", hint: 'nearest pattern: "output/summary.txt" (moderately_sensitive.summary)' },
      { path: "scratch/plot.png", hint: 'nearest pattern: "output/plots/*.png" (moderately_sensitive.chart)' },
    ]);
    assert.deepEqual(matchOutputs(["notes.txt"], []).unmatchedOutputs, [{ path: "notes.txt" }]);
  });
});

/** A cache server on a fixed directory and port, so a test can restart it with other limits. */
class TestCache {
  server: CacheServer | undefined;
  client: ObjectCache | undefined;
  port = 0;
  readonly dir = tempDir("kiln-outputs-cache-");

  async start(maxObjectBytes?: number): Promise<ObjectCache> {
    await this.stop();
    this.server = await startCacheServer({
      port: this.port,
      storage: { kind: "fs", dir: this.dir },
      ...(maxObjectBytes !== undefined ? { maxObjectBytes } : {}),
    });
    this.port = this.server.port;
    this.client = new ObjectCache({ endpoint: this.server.endpoint, localCacheBytes: 0 });
    return this.client;
  }

  async stop(): Promise<void> {
    this.client?.close();
    await this.server?.close();
    this.client = this.server = undefined;
  }
}

describe("persisting outputs to the object cache", { timeout: 30_000 }, () => {
  const cache = new TestCache();
  let task = 0;
  before(() => cache.start());
  after(() => cache.stop());
  afterEach(() => cache.start()); // a test may leave it running with a size limit

  // Small limits so "over the limit" needs no large files.
  const levels: OutputLevel[] = [
    { name: "highly_sensitive", maxFileBytes: 64 * 1024, extensions: [] },
    { name: "moderately_sensitive", maxFileBytes: 1024, extensions: [".csv", ".txt"] },
  ];

  /** A job's working directory after its command ran: the files it wrote, listed, matched against `outputs`. */
  async function finishedJob(
    files: Record<string, string | Buffer>,
    outputs: OutputSpec,
    setup?: (work: string) => void,
  ) {
    const work = tempDir();
    const before = await takeListing(work);
    writeFiles(work, files);
    setup?.(work);
    const found = newEntries(before, await takeListing(work));
    const taskId = String(++task);
    return {
      work,
      found,
      match: matchOutputs(found.files, validateOutputSpec(outputs, levels)),
      /** With the cache client of the moment: a test may restart the cache server. */
      get target(): PersistTarget {
        return { cache: cache.client!, application: "kiln-exec", sessionId: "s1", taskId, workDir: work, levels };
      },
    };
  }

  const manifestKey = (t: PersistTarget) => jobKeys.manifest(t.application, t.sessionId, t.taskId);
  const outputKey = (t: PersistTarget, file: string) =>
    jobKeys.output(t.application, t.sessionId, t.taskId, sha256(file));

  async function manifestExists(t: PersistTarget): Promise<boolean> {
    return (await cache.client!.statObject(manifestKey(t)).catch(ignoreNotFound)) !== undefined;
  }

  it("writes each matched file with its level, size and sha256, refuses what breaks its level's rules, manifest last", async () => {
    const big = "x".repeat(2048);
    const job = await finishedJob(
      { "out/rows.csv": "id\n1\n", "out/summary.csv": "n\n1\n", "out/big.txt": big, "notes.md": "undeclared" },
      {
        highly_sensitive: { rows: "out/rows.csv", tables: "out/*.csv", missing: "out/model.bin" },
        moderately_sensitive: { summary: "out/summary.csv", big: "out/big.txt" },
      },
      (work) => fs.symlinkSync("/etc/hostname", path.join(work, "out/link.csv")),
    );
    const report = await persistOutputs(job.target, job.match, job.found.refused);

    assert.deepEqual(
      report.outputs.map((o) => [o.path, o.level, o.name, o.size, o.sha256, o.alsoMatched.map((a) => a.name)]),
      [
        ["out/rows.csv", "highly_sensitive", "rows", 5, sha256("id\n1\n"), ["tables"]],
        ["out/summary.csv", "highly_sensitive", "tables", 4, sha256("n\n1\n"), ["summary"]],
      ],
    );
    for (const o of report.outputs) {
      assert.equal(o.ref.key, outputKey(job.target, o.path));
      const copy = path.join(tempDir(), "copy");
      await cache.client!.downloadObject(o.ref, copy);
      assert.equal(fs.readFileSync(copy, "utf8"), fs.readFileSync(path.join(job.work, o.path), "utf8"));
    }
    assert.deepEqual(report.refused, [
      { path: "out/big.txt", reason: "2048 bytes is over the moderately_sensitive limit of 1Ki (1024 bytes)" },
      { path: "out/link.csv", reason: 'a symbolic link to "/etc/hostname", outside the working directory' },
    ]);
    assert.deepEqual(report.unmatchedPatterns, [
      { name: "missing", level: "highly_sensitive", pattern: "out/model.bin" },
    ]);
    assert.deepEqual(report.unmatchedOutputs, [
      { path: "notes.md", hint: 'nearest pattern: "out/*.csv" (highly_sensitive.tables)' },
    ]);
    assert.equal(report.manifest?.key, manifestKey(job.target));
    const { manifest, ...content } = report;
    assert.deepEqual(await cache.client!.getObject(manifest!), content);
    // Nothing else was written: refused and unmatched files are not in the cache.
    const keys = (await cache.client!.listObjects("kiln-exec/s1")).map((o) => o.key);
    assert.deepEqual(
      keys.filter((k) => k.startsWith(`kiln-exec/s1/task-${job.target.taskId}-`)).sort(),
      [...report.outputs.map((o) => o.ref.key), manifest!.key].sort(),
    );
  });

  it("lists at most MAX_REPORTED_ENTRIES unmatched files and counts the rest", async () => {
    const stray = Object.fromEntries(
      Array.from({ length: MAX_REPORTED_ENTRIES + 5 }, (_, i) => [`stray/f${String(i).padStart(5, "0")}.log`, "x"]),
    );
    const job = await finishedJob({ ...stray, "out/rows.csv": "id\n" }, { highly_sensitive: { rows: "out/rows.csv" } });
    const report = await persistOutputs(job.target, job.match, job.found.refused);
    assert.equal(report.outputs.length, 1);
    assert.equal(report.unmatchedOutputs.length, MAX_REPORTED_ENTRIES);
    assert.equal(report.unmatchedOutputsOmitted, 5);
    assert.equal(report.unmatchedOutputs[0]!.path, "stray/f00000.log");
  });

  it("lists at most MAX_REPORTED_ENTRIES refused entries and counts the rest", async () => {
    const job = await finishedJob(
      { "out/rows.csv": "id\n" },
      { highly_sensitive: { rows: "out/rows.csv" } },
      (work) => {
        fs.mkdirSync(path.join(work, "links"));
        for (let i = 0; i < MAX_REPORTED_ENTRIES + 3; i++)
          fs.symlinkSync("/etc/hostname", path.join(work, "links", `l${String(i).padStart(5, "0")}`));
      },
    );
    const report = await persistOutputs(job.target, job.match, job.found.refused);
    assert.equal(report.outputs.length, 1);
    assert.equal(report.refused.length, MAX_REPORTED_ENTRIES);
    assert.equal(report.refusedOmitted, 3);
    assert.equal(report.refused[0]!.path, "links/l00000");
  });

  it("persisting twice gives the same report and rewrites nothing", async () => {
    const job = await finishedJob(
      { "out/a.csv": "a", "out/b.txt": "b" },
      { moderately_sensitive: { a: "out/a.csv", b: "out/b.txt" } },
    );
    const first = await persistOutputs(job.target, job.match, job.found.refused);
    const second = await persistOutputs(job.target, job.match, job.found.refused);
    assert.deepEqual(second, first);
    for (const o of second.outputs) assert.equal((await cache.client!.statObject(o.ref.key)).version, 1);
    assert.equal((await cache.client!.statObject(manifestKey(job.target))).version, 1);
    const empty = await finishedJob({}, {});
    assert.deepEqual(
      await persistOutputs(empty.target, empty.match, []),
      await persistOutputs(empty.target, empty.match, []),
    );
  });

  it("leaves no manifest when a persist fails mid-way, and a new persist completes it", async () => {
    const big = Buffer.alloc(3000, 7);
    const job = await finishedJob(
      { "out/a.csv": "a", "out/b.bin": big, "out/c.csv": "c" },
      { highly_sensitive: { a: "out/a.csv", b: "out/b.bin", c: "out/c.csv" } },
    );
    // The cache refuses b (over its object limit) after a was written: a real failure half-way through.
    await cache.start(2000);
    await assert.rejects(persistOutputs(job.target, job.match, []), /maxObjectBytes/);
    assert.equal((await cache.client!.statObject(outputKey(job.target, "out/a.csv"))).size, 1, "a was written");
    assert.equal(await manifestExists(job.target), false);

    await cache.start();
    const report = await persistOutputs(job.target, job.match, []);
    assert.deepEqual(
      report.outputs.map((o) => o.path),
      ["out/a.csv", "out/b.bin", "out/c.csv"],
    );
    assert.equal(await manifestExists(job.target), true);

    // A later persist that replaces a file drops the old manifest first: it never names versions that are gone.
    fs.writeFileSync(path.join(job.work, "out/b.bin"), Buffer.alloc(3000, 8));
    await cache.start(2000);
    await assert.rejects(persistOutputs(job.target, job.match, []));
    assert.equal(await manifestExists(job.target), false);
    await cache.start();
    const again = await persistOutputs(job.target, job.match, []);
    assert.equal(again.outputs[1]!.sha256, sha256(Buffer.alloc(3000, 8)));
    const { manifest, ...content } = again;
    assert.deepEqual(await cache.client!.getObject(manifest!), content);
  });

  it("re-checks every file: one swapped for a link after listing is refused, a bad match writes nothing", async () => {
    const job = await finishedJob({ "out/a.csv": "a", "out/b.csv": "b" }, { highly_sensitive: { all: "out/*.csv" } });
    fs.rmSync(path.join(job.work, "out/b.csv"));
    fs.symlinkSync("/etc/hostname", path.join(job.work, "out/b.csv"));
    const report = await persistOutputs(job.target, job.match, []);
    assert.deepEqual(
      report.outputs.map((o) => o.path),
      ["out/a.csv"],
    );
    assert.deepEqual(report.refused, [
      { path: "out/b.csv", reason: "it became a symbolic link before it could be persisted" },
    ]);

    const bad = await finishedJob({ "out/a.csv": "a" }, { highly_sensitive: { all: "out/*.csv" } });
    const [m] = bad.match.matched;
    const twice = {
      ...bad.match,
      matched: [m!, { ...m!, output: { ...m!.output, level: "moderately_sensitive", levelRank: 1 } }],
    };
    await assert.rejects(persistOutputs(bad.target, twice, []), /"out\/a.csv" is matched twice; nothing was written/);
    const escaping = { ...bad.match, matched: [{ ...m!, path: "../a.csv" }] };
    await assert.rejects(persistOutputs(bad.target, escaping, []), /contains "\.\."/);
    const unknownLevel = { ...bad.match, matched: [{ ...m!, output: { ...m!.output, level: "public" } }] };
    await assert.rejects(persistOutputs(bad.target, unknownLevel, []), /level "public" is not level 0/);
    const keys = (await cache.client!.listObjects("kiln-exec/s1")).map((o) => o.key);
    assert.ok(!keys.some((k) => k.startsWith(`kiln-exec/s1/task-${bad.target.taskId}-`)), "nothing written");
  });

  it("checks the default levels' limits: a file over 16 MiB is refused at moderately_sensitive", async () => {
    const job = await finishedJob({}, {});
    const file = path.join(job.work, "out/large.csv");
    fs.mkdirSync(path.dirname(file));
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 16 * 2 ** 20 + 1);
    const match = matchOutputs(
      ["out/large.csv"],
      validateOutputSpec({ moderately_sensitive: { large: "out/large.csv" } }),
    );
    const report = await persistOutputs({ ...job.target, levels: DEFAULT_LEVELS }, match, []);
    assert.deepEqual(report.outputs, []);
    assert.deepEqual(report.refused, [
      {
        path: "out/large.csv",
        reason: "16777217 bytes is over the moderately_sensitive limit of 16Mi (16777216 bytes)",
      },
    ]);
  });
});
