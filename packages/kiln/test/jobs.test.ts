import { create } from "@bufbuild/protobuf";
import {
  connect,
  fetchOutputs,
  getJobResult,
  JobFailedError,
  ObjectCache,
  runJob,
  type JobOptions,
  type KilnClient,
  type Session,
} from "@kiln/sdk";
import { DEFAULT_LEVELS, type OutputReport, JOB_FORMAT } from "@kiln/protocol/jobs";
import { encodeValue, ErrorCode, FailedPreconditionError, TaskFailedError } from "@kiln/protocol";
import { serve } from "@kiln/service";
import { LazyAbort } from "@kiln/protocol/transport";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { untilChanged, untilDirChanges } from "../../../test/support/until.js";
import { InstanceClient } from "../src/agent/instance-client.js";
import { runCli, startCli, type CliProcess } from "./cli-helpers.js";
import { waitFor } from "./support/processes.js";

/** No single test may hang: each one's waits are bounded by this too. */
const LIMIT = { timeout: 45_000 };

const sha256 = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex");

/** Gone, or a zombie nobody reaped yet: either way it no longer runs. */
function stopped(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/** The pid of the agent `kiln up` runs on `dataDir`, from its command line. */
function agentPid(dataDir: string): number | undefined {
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (args.includes("agent") && args.includes(path.join(dataDir, "agent"))) return Number(entry);
    } catch {
      // gone, or not ours to read
    }
  }
  return undefined;
}

async function jobFailure(work: Promise<unknown>): Promise<JobFailedError> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof JobFailedError, `expected JobFailedError, got ${String(err)}`);
  return err;
}

// One `kiln up` for the whole file: starting a cluster is the slow part.
describe("jobs: kiln-exec, runJob, kiln exec and kiln outputs", () => {
  let dir: string;
  let dataDir: string;
  let up: CliProcess | undefined;
  let endpoint: string;
  let cacheEndpoint: string;
  let client: KilnClient;
  let cache: ObjectCache;
  let session: Session;
  const job = (o: JobOptions) => runJob(session, { cache, ...o });
  const keysOf = async (sessionId: string) =>
    (await cache.listObjects(`kiln-exec/${sessionId}`)).map((o) => o.key.split("/")[2]!);

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "kiln-jobs-"));
    dataDir = path.join(dir, "data");
    up = startCli(["up", "--data-dir", dataDir, "--port", "0", "--executors", "2"]);
    endpoint = (await up.waitFor(/Kiln is up at (http:\/\/\S+)/, 40_000))[1]!;
    cacheEndpoint = (await up.waitFor(/object cache: (http:\/\/\S+)/))[1]!;
    client = await connect({ endpoint });
    cache = new ObjectCache({ endpoint: cacheEndpoint });
    session = await client.createSession({ application: "kiln-exec" });
  });

  after(async () => {
    try {
      await session?.close().catch(() => undefined);
      client?.close();
      cache?.close();
      if (up) assert.equal(await up.stop(), 0, `kiln up should close cleanly; output:\n${up.output()}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a command that writes nothing succeeds with its logs and an empty, complete report", LIMIT, async () => {
    const r = await job({ command: ["sh", "-c", "echo out; echo err >&2; pwd"] });
    assert.equal(r.exitCode, 0);
    assert.equal(r.timedOut, false);
    const [first, pwd] = r.stdout.split("\n");
    assert.equal(first, "out");
    assert.match(pwd!, /\/job-\d+-/, "it ran in a fresh working directory of its own");
    assert.equal(r.stderr, "err\n");
    assert.deepEqual(
      [r.report.outputs, r.report.unmatchedPatterns, r.report.unmatchedOutputs, r.report.refused],
      [[], [], [], []],
    );
    assert.ok(r.report.manifest, "an empty report is still complete");
    assert.ok(!fs.existsSync(pwd!), "the working directory is removed afterwards");
  });

  it("inputs reach the command: small ones inline, large ones through the cache, with their modes", LIMIT, async () => {
    const big = randomBytes(1 << 20);
    const bigData = randomBytes(1 << 20);
    const local = path.join(dir, "big.bin");
    await writeFile(local, big);
    const r = await job({
      command: ["./check.sh"],
      inputs: [
        { path: "check.sh", data: "#!/bin/sh\nsha256sum data/big.bin data/big-data.bin notes.txt\n", mode: 0o755 },
        { path: "data/big.bin", file: local },
        { path: "data/big-data.bin", data: bigData },
        { path: "notes.txt", data: "hello" },
      ],
    });
    assert.match(r.stdout, new RegExp(`^${sha256(big)}  data/big.bin$`, "m"));
    assert.match(r.stdout, new RegExp(`^${sha256(bigData)}  data/big-data.bin$`, "m"));
    assert.match(r.stdout, new RegExp(`^${sha256("hello")}  notes.txt$`, "m"));
    const stored = await cache.listObjects(`kiln-exec/${session.id}`);
    for (const [what, bytes] of [
      ["file", big],
      ["data", bigData],
    ] as const)
      assert.ok(
        stored.some((o) => o.size === bytes.length && o.sha256 === sha256(bytes)),
        `the large ${what} input went through the cache`,
      );
  });

  it("a script runs with its interpreter; a bad pattern is refused before anything is sent", LIMIT, async () => {
    const r = await job({ script: { interpreter: "node", source: "console.log(6 * 7)" } });
    assert.equal(r.stdout, "42\n");
    const before = (await session.info()).status!;
    await assert.rejects(
      job({ command: ["true"], outputs: { highly_sensitive: { rows: "../rows.csv" } } }),
      (e: Error & { field?: string }) =>
        e.field === "outputs.highly_sensitive.rows" && /"\.\.\/rows\.csv"/.test(e.message) && /"\.\."/.test(e.message),
    );
    const after = (await session.info()).status!;
    assert.equal(after.succeed + after.failed + after.pending, before.succeed + before.failed + before.pending);
  });

  it(
    "a command that writes only undeclared files fails, naming the pattern and hinting at the files",
    LIMIT,
    async () => {
      const err = await jobFailure(
        job({
          command: ["sh", "-c", "mkdir out && echo a > out/rows.txt && echo b > notes.md"],
          outputs: { highly_sensitive: { rows: "out/*.csv" } },
        }),
      );
      const report = err.result.report;
      assert.equal(err.result.exitCode, 0);
      assert.deepEqual(report.unmatchedPatterns, [{ name: "rows", level: "highly_sensitive", pattern: "out/*.csv" }]);
      assert.deepEqual(
        report.unmatchedOutputs.map((u) => u.path),
        ["notes.md", "out/rows.txt"],
      );
      for (const u of report.unmatchedOutputs) assert.match(u.hint ?? "", /out\/\*\.csv/);
      assert.deepEqual(report.outputs, []);
      assert.match(err.message, /no file matched pattern "out\/\*\.csv" \(highly_sensitive\.rows\)/);
      assert.match(err.message, /out\/rows\.txt \(nearest pattern: "out\/\*\.csv"/);
    },
  );

  it("kiln-exec itself refuses a job record that skipped the SDK's checks, naming the field", LIMIT, async () => {
    const valid = {
      format: JOB_FORMAT,
      command: ["true"],
      inputs: [],
      env: {},
      timeoutMs: 10_000,
      outputs: {},
      levels: DEFAULT_LEVELS,
    };
    for (const [record, message] of [
      [{ ...valid, command: undefined }, /job: needs exactly one of command and script/],
      [{ ...valid, command: [] }, /job\.command: must be a non-empty array/],
      [{ ...valid, inputs: "a.txt" }, /job\.inputs: must be an array/],
      [{ ...valid, timeoutMs: -1 }, /job\.timeoutMs: must be more than 0/],
      [{ ...valid, format: "other" }, /job\.format: must be/],
      [[1, 2], /job: is not a job record/],
    ] as const) {
      const err = await session.run(encodeValue(record)).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(
        err instanceof TaskFailedError,
        `expected TaskFailedError for ${JSON.stringify(record)}, got ${String(err)}`,
      );
      assert.match(err.message, message);
    }
  });

  it("a file matched at two levels is kept at the most restrictive one, and the report says so", LIMIT, async () => {
    const r = await job({
      command: ["sh", "-c", "mkdir out && echo 1,2 > out/rows.csv && echo total > out/summary.csv"],
      outputs: { highly_sensitive: { tables: "out/*.csv" }, moderately_sensitive: { summary: "out/summary.csv" } },
    });
    const byPath = new Map(r.report.outputs.map((o) => [o.path, o]));
    assert.deepEqual([...byPath.keys()], ["out/rows.csv", "out/summary.csv"]);
    const summary = byPath.get("out/summary.csv")!;
    assert.equal(summary.level, "highly_sensitive");
    assert.equal(summary.name, "tables");
    assert.deepEqual(summary.alsoMatched, [
      { name: "summary", level: "moderately_sensitive", pattern: "out/summary.csv" },
    ]);
    assert.equal(summary.sha256, sha256("total\n"));
    const reviewer = path.join(dir, "reviewer");
    assert.deepEqual(await fetchOutputs(r.report, reviewer, { level: "moderately_sensitive", cache }), []);
    assert.ok(!fs.existsSync(path.join(reviewer, "out")), "nothing at or below moderately_sensitive");
    const all = path.join(dir, "all");
    assert.equal((await fetchOutputs(r.report, all, { cache })).length, 2);
    assert.equal(await readFile(path.join(all, "out/summary.csv"), "utf8"), "total\n");
    assert.equal(await readFile(path.join(all, "out/rows.csv"), "utf8"), "1,2\n");
    // An output replaced in the cache since its manifest was written is refused, not fetched.
    const rows = byPath.get("out/rows.csv")!;
    await cache.putObject(rows.ref.key, "tampered");
    const later = path.join(dir, "later");
    await assert.rejects(fetchOutputs(r.report, later, { cache }), (e: unknown) => {
      assert.ok(e instanceof FailedPreconditionError, String(e));
      assert.match(e.message, new RegExp(`object ${rows.ref.key} has changed`));
      return true;
    });
    assert.ok(!fs.existsSync(path.join(later, "out/rows.csv")));
  });

  it("a symbolic link pointing outside is refused, not followed, and fails the declared output", LIMIT, async () => {
    const err = await jobFailure(
      job({
        command: ["sh", "-c", "mkdir out && ln -s /etc/passwd out/secret.csv"],
        outputs: { highly_sensitive: { secret: "out/secret.csv" } },
      }),
    );
    const { report } = err.result;
    assert.deepEqual(report.outputs, []);
    assert.equal(report.refused.length, 1);
    assert.equal(report.refused[0]!.path, "out/secret.csv");
    assert.match(report.refused[0]!.reason, /symbolic link to "\/etc\/passwd", outside/);
    assert.match(err.message, /declared outputs refused: out\/secret\.csv/);
    const keys = await keysOf(session.id);
    assert.ok(!keys.some((k) => k.startsWith(`task-${err.taskId}-out-`)), "no object was written for it");
  });

  it("a FIFO is refused without hanging the job; the regular files beside it are kept", LIMIT, async () => {
    const err = await jobFailure(
      job({
        command: ["sh", "-c", "mkdir out && mkfifo out/pipe.csv && echo ok > out/ok.csv"],
        outputs: { highly_sensitive: { tables: "out/*.csv" } },
        timeoutMs: 30_000,
      }),
    );
    const { report } = err.result;
    assert.deepEqual(
      report.outputs.map((o) => o.path),
      ["out/ok.csv"],
    );
    assert.deepEqual(
      report.refused.map((r) => r.path),
      ["out/pipe.csv"],
    );
    assert.match(report.refused[0]!.reason, /FIFO/);
    assert.ok(report.manifest);
  });

  it("a file over its level's size limit is refused and fails the job; the others are kept", LIMIT, async () => {
    const err = await jobFailure(
      job({
        command: ["sh", "-c", "head -c 2000 /dev/zero > big.bin && echo fine > note.txt"],
        levels: [
          { name: "secret", maxFileBytes: 1024, extensions: [] },
          { name: "public", maxFileBytes: 100, extensions: [".txt"] },
        ],
        outputs: { secret: { big: "big.bin" }, public: { note: "note.txt" } },
      }),
    );
    const { report } = err.result;
    assert.deepEqual(
      report.outputs.map((o) => [o.path, o.level]),
      [["note.txt", "public"]],
    );
    assert.deepEqual(
      report.refused.map((r) => r.path),
      ["big.bin"],
    );
    assert.match(report.refused[0]!.reason, /2000 bytes is over the secret limit/);
    assert.match(err.message, /declared outputs refused: big\.bin/);
  });

  it("a command past its timeout is killed with its whole process group and reported as timed out", LIMIT, async () => {
    const err = await jobFailure(
      job({ command: ["sh", "-c", "sleep 300 & echo $!; sleep 300"], timeoutMs: 1500, outputs: {} }),
    );
    assert.equal(err.result.timedOut, true);
    assert.equal(err.result.exitCode, null);
    assert.match(err.message, /timed out after [\d.]+ s; its process group was killed/);
    const grandchild = Number(err.result.stdout.trim());
    assert.ok(grandchild > 0, `the grandchild's pid: ${err.result.stdout}`);
    await waitFor(`grandchild ${grandchild} to be gone`, () => stopped(grandchild) || undefined, 5_000);
  });

  it("a job cancelled mid-run: its command is killed, nothing is persisted, its logs are kept", LIMIT, async () => {
    const marker = path.join(dir, "started.pid");
    const abort = new AbortController();
    let taskId: string | undefined;
    const running = job({
      command: [
        "sh",
        "-c",
        `mkdir out && echo partial > out/x.csv && echo started && echo $$ > ${marker} && exec sleep 300`,
      ],
      outputs: { highly_sensitive: { x: "out/x.csv" } },
      signal: abort.signal,
      onTaskId: (id) => (taskId = id),
    });
    const pid = await untilDirChanges(
      dir,
      () => {
        const text = fs.existsSync(marker) ? fs.readFileSync(marker, "utf8") : "";
        return text.endsWith("\n") ? Number(text) : undefined;
      },
      30_000,
      "the command to start",
    );
    abort.abort();
    await assert.rejects(running, (e: unknown) => e instanceof TaskFailedError && e.code === ErrorCode.TaskCancelled);
    await waitFor(`the command (pid ${pid}) to be killed`, () => stopped(pid) || undefined, 10_000);
    const kept = await waitFor("the cancelled job's logs", async () => {
      const found = await getJobResult(session, taskId!, { cache });
      return found.result ? found : undefined;
    });
    assert.equal(kept.state, flame.TaskState.Cancelled);
    assert.equal(kept.result!.stdout, "started\n");
    assert.deepEqual(kept.result!.report.outputs, []);
    assert.equal(kept.result!.report.manifest, undefined);
    const keys = await keysOf(session.id);
    assert.ok(keys.includes(`task-${taskId}-log`));
    assert.ok(
      !keys.some((k) => k.startsWith(`task-${taskId}-out-`) || k === `task-${taskId}-manifest`),
      `nothing persisted for the cancelled job: ${keys.join(" ")}`,
    );
  });

  it("kiln exec runs one job and exits with its status; kiln outputs lists and fetches its files", LIMIT, async () => {
    const cli = (...args: string[]) =>
      runCli(["--endpoint", endpoint, "--cache-endpoint", cacheEndpoint, ...args], 60_000);
    const data = path.join(dir, "data.csv");
    await writeFile(data, "a,b\n1,2\n3,4\n");
    const ok = await cli(
      "exec",
      "--input",
      `${data}=in/data.csv`,
      "--output",
      "moderately_sensitive:count=out/count.txt",
      "--output",
      "highly_sensitive:rows=out/rows.csv",
      "--",
      "sh",
      "-c",
      "mkdir out && wc -l < in/data.csv > out/count.txt && cp in/data.csv out/rows.csv && echo counted",
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, "counted\n", "the job's stdout, and nothing else, on stdout");
    const [, sessionId, taskId] = /Job (\S+)\/(\d+): exit code 0/.exec(ok.stderr) ?? [];
    assert.ok(sessionId && taskId, ok.stderr);
    assert.match(ok.stderr, /out\/count\.txt\s+moderately_sensitive\s+count/);

    const to = path.join(dir, "fetched");
    const listed = await cli("outputs", sessionId, taskId, "--level", "moderately_sensitive", "--to", to);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /Succeed, exit code 0/);
    assert.match(listed.stdout, /Fetched 1 files/);
    assert.equal((await readFile(path.join(to, "out/count.txt"), "utf8")).trim(), "3");
    assert.ok(!fs.existsSync(path.join(to, "out/rows.csv")), "a highly_sensitive file is not fetched at a lower level");

    const failed = await cli("exec", "--", "sh", "-c", "echo oops >&2; exit 3");
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /^oops$/m);
    assert.match(failed.stderr, /error: .*exit code 3: oops/);
    const slow = await cli("exec", "--timeout", "1", "--", "sleep", "30");
    assert.equal(slow.code, 124, slow.stderr);
    const bad = await cli("exec", "--output", "highly_sensitive:rows=/tmp/rows.csv", "--", "true");
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /outputs\.highly_sensitive\.rows: pattern "\/tmp\/rows\.csv" is an absolute path/);
  });

  it(
    "an agent killed while persisting: the task is retried, its outputs end consistent, no partial manifest shows",
    LIMIT,
    async () => {
      const victim = agentPid(dataDir);
      assert.ok(victim, "the agent of kiln up is found");
      const s = await client.createSession({ application: "kiln-exec" });
      const files = 300;
      const prefix = `kiln-exec/${s.id}`;
      let violation: string | undefined;
      let polls = 0;
      let polling = true;
      // Whenever a manifest is visible, every file it names must be there, at that very version and content:
      // sampled every 25 ms while the job runs (the cache tells no one about writes), which is the check itself.
      const watcher = (async () => {
        while (polling) {
          const manifest = (await cache.getObject(`${prefix}/task-1-manifest`).catch(() => undefined)) as
            OutputReport | undefined;
          if (manifest) {
            const stored = new Map((await cache.listObjects(prefix)).map((o) => [o.key, o]));
            for (const o of manifest.outputs) {
              const st = stored.get(o.ref.key);
              if (st?.version !== o.ref.version || st.sha256 !== o.sha256)
                violation ??= `manifest names ${o.path} but not its bytes`;
            }
          }
          polls++;
          await sleep(25);
        }
      })();
      try {
        const result = runJob(s, {
          cache,
          command: [
            "sh",
            "-c",
            `mkdir out; i=0; while [ $i -lt ${files} ]; do i=$((i+1)); echo "row $i" > out/f$i.csv; done`,
          ],
          outputs: { highly_sensitive: { rows: "out/*.csv" } },
        });
        await waitFor(
          "the first outputs to be persisted, without a manifest yet",
          async () => {
            const keys = await keysOf(s.id);
            return keys.some((k) => k.startsWith("task-1-out-")) && !keys.includes("task-1-manifest")
              ? true
              : undefined;
          },
          30_000,
        );
        process.kill(victim, "SIGKILL");
        const r = await result;
        assert.equal(r.report.outputs.length, files);
        const task = await s.getTask("1");
        assert.ok(
          task.status!.events.some((e) => /requeued/.test(e.message ?? "")),
          `the task was retried: ${task.status!.events.map((e) => e.message).join(" | ")}`,
        );
        const to = path.join(dir, "after-retry");
        await fetchOutputs(r.report, to, { cache });
        for (const n of [1, files / 2, files])
          assert.equal(await readFile(path.join(to, `out/f${n}.csv`), "utf8"), `row ${n}\n`);
      } finally {
        polling = false;
        await watcher;
        await s.close().catch(() => undefined);
      }
      assert.ok(polls > 0);
      assert.equal(violation, undefined);
    },
  );
});

describe("cancelling a running task reaches the service (TaskContextInfo.signal)", () => {
  it(
    "on the batched stream and on a unary call; the aborted task is still answered; a closed stream aborts the rest",
    LIMIT,
    async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), "kiln-abort-"));
      const started = new Set<string>();
      const aborted: string[] = [];
      const changes = new EventEmitter();
      const until = (check: () => boolean, what: string) => untilChanged(changes, check, 5_000, what);
      const service = await serve(
        {
          onTaskInvoke: ({ taskId, signal }) =>
            new Promise<string>((resolve) => {
              started.add(taskId);
              changes.emit("change");
              signal.addEventListener("abort", () => {
                aborted.push(taskId);
                changes.emit("change");
                resolve(`stopped ${taskId}`);
              });
            }),
        },
        { socketPath: path.join(dir, "svc.sock") },
      );
      const streamed = new InstanceClient(service.socketPath);
      const unary = new InstanceClient(service.socketPath);
      try {
        assert.equal(await streamed.useInvokeStream(5_000), undefined, "the SDK serves the batched stream");
        const task = (taskId: string) => create(flame.TaskContextSchema, { taskId, sessionId: "s1" });
        const cancelFirst = new LazyAbort();
        const first = streamed.invoke(task("1"), cancelFirst);
        const second = streamed.invoke(task("2"), new LazyAbort());
        await until(() => started.has("1") && started.has("2"), "both tasks to start");
        cancelFirst.abort();
        const answer = await first;
        assert.equal(new TextDecoder().decode(answer.output), "stopped 1", "the aborted task is answered");
        assert.deepEqual(aborted, ["1"], "only the cancelled task is aborted");

        const cancelCall = new LazyAbort();
        const call = unary.invoke(task("3"), cancelCall);
        await until(() => started.has("3"), "the unary task to start");
        cancelCall.abort();
        await assert.rejects(call);
        await until(() => aborted.includes("3"), "the unary task to be aborted");

        streamed.close();
        await assert.rejects(second);
        await until(() => aborted.includes("2"), "the closed stream's task to be aborted");
      } finally {
        streamed.close();
        unary.close();
        await service.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
