import { create } from "@bufbuild/protobuf";
import { LazyAbort } from "@kiln/protocol/transport";
import { validateName } from "@kiln/protocol";
import { flame, kiln } from "@kiln/protocol/proto";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { BindError, errorMessage } from "./bind-error.js";
import { startServiceProcess, type ExitInfo, type ServiceProcess } from "./host-shim.js";
import { installApplication, type InstalledRelease, type PackageSettings } from "./installer.js";
import { InstanceClient } from "./instance-client.js";
import { TaskNotDelivered } from "./invoke-stream.js";

/** Where executors keep their files, and what they tell the agent. */
export interface ExecutorSetting {
  controlPlaneEndpoint: string;
  /** The CA file service processes are told to trust (KILN_TLS_CA). */
  tlsCaFile?: string;
  /** Holds `<short-id>.sock`. */
  socketDir: string;
  /** Holds each executor's temp dir, removed at unbind. */
  executorsDir: string;
  /** Holds `<executor-id>.stdout.log` / `.stderr.log`, kept after unbind. */
  logDir: string;
  socketTimeoutMs: number;
  /** Package delivery; without it an application with a URL fails to bind. */
  packages?: PackageSettings;
  log(line: string): void;
  completion(c: kiln.Completion): void;
  report(r: kiln.ExecutorReport): void;
  /** The executor reported UNBOUND or BIND_FAILED and holds nothing any more. */
  finished(e: Executor): void;
}

export const SESSION_ENTER_TIMEOUT_MS = 60_000;
export const SESSION_LEAVE_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;
const STREAM_PROBE_MS = 2_000;
const MAX_RESTARTS = 3;
const RESTART_WINDOW_MS = 60_000;
// An RPC failure usually means the process is dying; its exit (code, stderr) explains more.
const EXIT_EXPLAINS_WITHIN_MS = 250;

type State = "binding" | "bound" | "restarting" | "stopping" | "done";

interface Service {
  process: ServiceProcess;
  client: InstanceClient;
}

interface Run {
  task: kiln.TaskAssignment;
  /** Aborted once the task is cancelled: the service is told to stop it and its result is not reported. */
  abort: LazyAbort;
  /** The service has the task. Until then a process exit means the task never started. */
  accepted: boolean;
}

const taskKey = (taskId: string, attempt: number) => `${taskId}/${attempt}`;

/**
 * One executor: a binding of a session to a service process on this node.
 * Binds (install, start, OnSessionEnter), runs the tasks it is given with at
 * most `concurrency` at once, restarts a crashed process, and unbinds.
 */
export class Executor {
  readonly id: string;
  readonly sessionId: string;
  private readonly concurrency: number;
  private readonly application: flame.ApplicationSpec;
  private readonly socketPath: string;
  private readonly tempDir: string;
  private state: State = "binding";
  private service: Service | undefined;
  private readonly queue: kiln.TaskAssignment[] = [];
  private readonly running = new Map<string, Run>();
  private readonly stopping = new AbortController();
  private lifecycle: Promise<void> = Promise.resolve();
  private unbinding: Promise<void> | undefined;
  private restarts: number[] = [];
  /** The application's installed package, kept for restarts. */
  private release: InstalledRelease | undefined;

  constructor(
    private readonly bindRequest: kiln.Bind,
    private readonly setting: ExecutorSetting,
  ) {
    this.id = bindRequest.executorId;
    this.sessionId = bindRequest.sessionId;
    this.concurrency = Math.max(1, bindRequest.concurrency);
    this.application = bindRequest.application ?? create(flame.ApplicationSpecSchema);
    this.socketPath = path.join(setting.socketDir, `${randomBytes(4).toString("hex")}.sock`);
    this.tempDir = path.join(setting.executorsDir, this.id);
  }

  /** Starts binding; the outcome is reported as BOUND or BIND_FAILED. */
  bind(): void {
    this.lifecycle = this.bindOnce();
  }

  /** Bound, restarting or binding: the control plane should keep it after a reconnect. */
  get live(): boolean {
    return this.state !== "stopping" && this.state !== "done";
  }

  // ---- the hot path: task in → invoke → completion out ----

  enqueue(task: kiln.TaskAssignment): void {
    if (!this.live) return;
    this.queue.push(task);
    this.pump();
  }

  private pump(): void {
    const service = this.service;
    // A process that has exited, or whose task stream broke, is going away: its restart takes the queue.
    if (this.state !== "bound" || !service || !service.process.running || !service.client.accepting) return;
    while (this.running.size < this.concurrency && this.queue.length > 0) {
      const task = this.queue.shift()!;
      const run: Run = { task, abort: new LazyAbort(), accepted: false };
      this.running.set(taskKey(task.taskId, task.attempt), run);
      void this.invoke(service, run);
    }
  }

  private async invoke(service: Service, run: Run): Promise<void> {
    const { task } = run;
    const ctx = create(flame.TaskContextSchema, { taskId: task.taskId, sessionId: task.sessionId });
    if (task.input !== undefined) ctx.input = task.input;
    let result: flame.TaskResult;
    try {
      result = await service.client.invoke(ctx, run.abort, () => (run.accepted = true));
    } catch (err) {
      await Promise.race([service.process.exited, sleep(EXIT_EXPLAINS_WITHIN_MS)]);
      if (err instanceof TaskNotDelivered) {
        // Still running with its stream broken: restart it, and the task goes to the new process.
        if (this.takeBack([run]) && service.process.running) void service.process.stop(STOP_GRACE_MS);
        return;
      }
      result = create(flame.TaskResultSchema, { returnCode: -1, message: errorMessage(err) });
    }
    this.complete(run, result);
    this.pump();
  }

  /**
   * Puts tasks that never reached a live process back at the head of the
   * queue, for the restarted process: they did not start, so they neither
   * fail nor count as a retry. True if any was taken back.
   */
  private takeBack(runs: readonly Run[]): boolean {
    const tasks: kiln.TaskAssignment[] = [];
    for (const run of runs) {
      const key = taskKey(run.task.taskId, run.task.attempt);
      // Already completed by a process exit, or dropped at unbind.
      if (this.running.get(key) !== run) continue;
      this.running.delete(key);
      if (!run.abort.aborted && this.live) tasks.push(run.task);
    }
    this.queue.unshift(...tasks);
    return tasks.length > 0;
  }

  private complete(run: Run, result: flame.TaskResult): void {
    const key = taskKey(run.task.taskId, run.task.attempt);
    // Already completed by a process exit, or dropped at unbind.
    if (this.running.get(key) !== run) return;
    this.running.delete(key);
    if (run.abort.aborted || !this.live) return;
    const c = create(kiln.CompletionSchema, {
      executorId: this.id,
      sessionId: run.task.sessionId,
      taskId: run.task.taskId,
      attempt: run.task.attempt,
      returnCode: result.returnCode,
    });
    if (result.output !== undefined) c.output = result.output;
    if (result.message !== undefined) c.message = result.message;
    this.setting.completion(c);
  }

  // ---- cancellation and reconnect bookkeeping ----

  /**
   * Drops queued tasks among `refs`; running ones are aborted in the service
   * (their slot stays taken until it has stopped them) and their results dropped.
   */
  cancel(refs: readonly kiln.TaskRef[]): void {
    const keys = new Set(refs.filter((r) => r.sessionId === this.sessionId).map((r) => taskKey(r.taskId, r.attempt)));
    if (keys.size === 0) return;
    for (const [key, run] of this.running) {
      if (keys.has(key)) run.abort.abort();
    }
    const kept = this.queue.filter((t) => !keys.has(taskKey(t.taskId, t.attempt)));
    this.queue.splice(0, this.queue.length, ...kept);
  }

  /** Tasks given to this executor and not completed: queued or running. */
  heldTasks(): kiln.TaskRef[] {
    const ref = (t: kiln.TaskAssignment) =>
      create(kiln.TaskRefSchema, { sessionId: t.sessionId, taskId: t.taskId, attempt: t.attempt });
    const running = [...this.running.values()].filter((r) => !r.abort.aborted).map((r) => ref(r.task));
    return [...running, ...this.queue.map(ref)];
  }

  // ---- lifecycle ----

  private report(event: kiln.ExecutorEvent, code = 0, message = ""): void {
    this.setting.report(create(kiln.ExecutorReportSchema, { executorId: this.id, event, code, message }));
  }

  private async bindOnce(): Promise<void> {
    try {
      validateName("executor_id", this.id);
      this.release = await this.install();
      await fs.mkdir(this.tempDir, { recursive: true });
      this.adopt(await this.launch());
    } catch (err) {
      if (this.state !== "binding") return;
      this.state = "done";
      await this.removeFiles();
      const code = err instanceof BindError ? err.code : kiln.BindFailure.PROCESS_START;
      this.setting.log(`executor ${this.id}: bind failed: ${errorMessage(err)}`);
      this.report(kiln.ExecutorEvent.BIND_FAILED, code, errorMessage(err));
      this.setting.finished(this);
    }
  }

  private async install(): Promise<InstalledRelease | undefined> {
    const packages = this.setting.packages;
    if (!packages && this.application.url)
      throw new BindError(
        kiln.BindFailure.INSTALL,
        `this agent has no package delivery set up (url: ${this.application.url})`,
      );
    if (!packages) return undefined;
    return installApplication(this.application, {
      ...packages,
      log: (line) => this.setting.log(`executor ${this.id}: ${line}`),
      signal: this.stopping.signal,
    });
  }

  /** Starts the service process and enters the session; on failure nothing is left running. */
  private async launch(): Promise<Service> {
    const signal = this.stopping.signal;
    const serviceProcess = await startServiceProcess({
      executorId: this.id,
      sessionId: this.sessionId,
      application: this.application,
      release: this.release,
      controlPlaneEndpoint: this.setting.controlPlaneEndpoint,
      cacheEndpoint: this.setting.packages?.cacheEndpoint,
      taskCredential: this.bindRequest.taskCredential,
      ...(this.setting.tlsCaFile ? { tlsCaFile: this.setting.tlsCaFile } : {}),
      socketPath: this.socketPath,
      tempDir: this.tempDir,
      logDir: this.setting.logDir,
      socketTimeoutMs: this.setting.socketTimeoutMs,
      signal,
    });
    const client = new InstanceClient(this.socketPath);
    try {
      await this.enterSession(serviceProcess, client);
      const unsupported = await client.useInvokeStream(STREAM_PROBE_MS);
      if (unsupported) this.setting.log(`executor ${this.id}: one call per task (batched stream: ${unsupported})`);
      if (signal.aborted) throw new BindError(kiln.BindFailure.SESSION_ENTER, "the executor was unbound while binding");
      return { process: serviceProcess, client };
    } catch (err) {
      client.close();
      await serviceProcess.stop(0);
      throw err;
    }
  }

  private async enterSession(serviceProcess: ServiceProcess, client: InstanceClient): Promise<void> {
    const app = this.application;
    const fail = (message: string) => new BindError(kiln.BindFailure.SESSION_ENTER, message);
    const ctx = create(flame.SessionContextSchema, {
      sessionId: this.sessionId,
      application: {
        name: this.bindRequest.applicationName,
        shim: app.shim,
        command: app.command,
        workingDirectory: app.workingDirectory,
        url: app.url,
        installer: app.installer,
      },
    });
    if (this.bindRequest.commonData !== undefined) ctx.commonData = this.bindRequest.commonData;
    const outcome = await Promise.race([
      client.enterSession(ctx, SESSION_ENTER_TIMEOUT_MS, this.stopping.signal).then(
        (result) => ({ result }),
        (err: unknown) => ({ error: errorMessage(err) }),
      ),
      serviceProcess.exited.then((exit) => ({ exit })),
    ]);
    if ("exit" in outcome)
      throw fail(`service process ${serviceProcess.explainExit(outcome.exit)} during OnSessionEnter`);
    if ("error" in outcome) {
      const exit = await Promise.race([serviceProcess.exited, sleep(EXIT_EXPLAINS_WITHIN_MS)]);
      if (exit) throw fail(`service process ${serviceProcess.explainExit(exit)} during OnSessionEnter`);
      throw fail(`OnSessionEnter failed: ${outcome.error}`);
    }
    if (outcome.result.returnCode !== 0)
      throw fail(`OnSessionEnter returned ${outcome.result.returnCode}: ${outcome.result.message ?? "(no message)"}`);
  }

  /** Makes a launched service the executor's; unbind tears it down if one started meanwhile. */
  private adopt(service: Service): void {
    this.service = service;
    void service.process.exited.then((info) => this.processExited(service, info));
    if (this.state === "stopping") return;
    this.state = "bound";
    this.report(kiln.ExecutorEvent.BOUND);
    this.pump();
  }

  private processExited(service: Service, info: ExitInfo): void {
    if (this.service !== service || this.state !== "bound") return;
    this.service = undefined;
    service.client.close();
    const message = `service process ${service.process.explainExit(info)}`;
    this.setting.log(`executor ${this.id}: ${message}`);
    const failed = create(flame.TaskResultSchema, { returnCode: -1, message });
    const runs = [...this.running.values()];
    for (const run of runs) if (run.accepted) this.complete(run, failed);
    this.takeBack(runs.filter((run) => !run.accepted));
    this.report(kiln.ExecutorEvent.PROCESS_EXITED, info.code ?? -1, message);
    this.state = "restarting";
    this.lifecycle = this.restart(message);
  }

  /** Brings the service back (queued tasks wait for it), at most MAX_RESTARTS times a minute. */
  private async restart(lastError: string): Promise<void> {
    for (;;) {
      if (this.state !== "restarting") return;
      const now = Date.now();
      this.restarts = this.restarts.filter((t) => now - t < RESTART_WINDOW_MS);
      if (this.restarts.length >= MAX_RESTARTS) {
        this.state = "done";
        await this.removeFiles();
        const reason =
          `not restarting the service process again: it was restarted ${MAX_RESTARTS} times within ` +
          `${RESTART_WINDOW_MS / 1000} s; last failure: ${lastError}`;
        this.setting.log(`executor ${this.id}: ${reason}`);
        this.report(kiln.ExecutorEvent.UNBOUND, 0, reason);
        this.setting.finished(this);
        return;
      }
      this.restarts.push(now);
      try {
        this.adopt(await this.launch());
        return;
      } catch (err) {
        if (this.state !== "restarting") return;
        lastError = errorMessage(err);
      }
    }
  }

  /**
   * OnSessionLeave, stop the process group, remove the socket and temp dir,
   * then report UNBOUND. After that no completion of this executor is sent.
   */
  unbind(reason = "", leaveTimeoutMs = SESSION_LEAVE_TIMEOUT_MS): Promise<void> {
    return (this.unbinding ??= this.shutdown(reason, leaveTimeoutMs));
  }

  private async shutdown(reason: string, leaveTimeoutMs: number): Promise<void> {
    if (this.state === "done") return;
    this.state = "stopping";
    this.stopping.abort();
    await this.lifecycle;
    if (this.state !== "stopping") return;
    this.queue.length = 0;
    const service = this.service;
    this.service = undefined;
    if (service) {
      if (service.process.running) {
        const left = await service.client.leaveSession(leaveTimeoutMs).then(
          (r) => (r.returnCode === 0 ? undefined : `returned ${r.returnCode}: ${r.message ?? ""}`),
          (err: unknown) => errorMessage(err),
        );
        if (left) this.setting.log(`executor ${this.id}: OnSessionLeave ${left}`);
      }
      service.client.close();
      await service.process.stop(STOP_GRACE_MS);
    }
    this.running.clear();
    await this.removeFiles();
    this.state = "done";
    this.report(kiln.ExecutorEvent.UNBOUND, 0, reason);
    this.setting.finished(this);
  }

  private async removeFiles(): Promise<void> {
    await fs.rm(this.socketPath, { force: true });
    await fs.rm(this.tempDir, { recursive: true, force: true });
  }
}
