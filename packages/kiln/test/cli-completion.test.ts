import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { createProgram } from "../src/cli/program.js";
import { CLI_ENV, runCli } from "./cli-helpers.js";

const HAS_ZSH = spawnSync("zsh", ["--version"]).status === 0;

describe("kiln completion", () => {
  let dir: string;
  let bashScript: string;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-completion-"));
    const r = await runCli(["completion", "bash"]);
    assert.equal(r.code, 0, r.stderr);
    bashScript = path.join(dir, "kiln.bash");
    writeFileSync(bashScript, r.stdout);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** What bash offers for the last of `words` (as TAB would), with the script sourced in a real bash. */
  function bashComplete(...words: string[]): string[] {
    const line = words.map((w) => `'${w}'`).join(" ");
    const r = spawnSync(
      "bash",
      [
        "-c",
        `source "$1" && COMP_WORDS=(${line}) && COMP_CWORD=${words.length - 1} && _kiln && printf '%s\\n' "\${COMPREPLY[@]}"`,
        "bash",
        bashScript,
      ],
      { encoding: "utf8", env: CLI_ENV, timeout: 30_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split("\n").filter(Boolean);
  }

  it("bash: kiln li<TAB> completes to list", () => {
    assert.deepEqual(bashComplete("kiln", "li"), ["list"]);
  });

  it("bash: kiln list -<TAB> offers list's flags and the global ones", () => {
    const flags = bashComplete("kiln", "list", "-");
    for (const flag of ["-a", "--application", "-s", "-e", "-n", "-o", "--output", "--endpoint", "--token", "--config"])
      assert.ok(flags.includes(flag), `${flag} in ${flags.join(" ")}`);
    assert.ok(!flags.includes("--file"), "only list's own flags");
  });

  it("bash: subcommands, flag values and argument choices", () => {
    assert.deepEqual(bashComplete("kiln", "cache", "p"), ["put"]);
    assert.deepEqual(bashComplete("kiln", "list", "-o", ""), ["table", "json"]);
    // A flag's value is skipped when finding the command: --endpoint's URL is not a command.
    assert.deepEqual(bashComplete("kiln", "--endpoint", "http://h:1", "view", "--o"), ["--output"]);
    assert.deepEqual(bashComplete("kiln", "completion", ""), ["bash", "zsh"]);
  });

  it("bash: every command of the program is offered, so new commands need nothing more", () => {
    const offered = bashComplete("kiln", "");
    const commands = createProgram().commands.map((c) => c.name());
    assert.ok(commands.length >= 20, commands.join(" "));
    for (const name of commands) assert.ok(offered.includes(name), `${name} in ${offered.join(" ")}`);
  });

  it(
    `zsh: the script parses (zsh -n) and completes flags and values${HAS_ZSH ? "" : " (skipped: zsh is not installed)"}`,
    { skip: !HAS_ZSH },
    async () => {
      const r = await runCli(["completion", "zsh"]);
      assert.equal(r.code, 0, r.stderr);
      const file = path.join(dir, "_kiln");
      writeFileSync(file, r.stdout);
      const check = spawnSync("zsh", ["-n", file], { encoding: "utf8", timeout: 30_000 });
      assert.equal(check.status, 0, check.stderr);
      // Outside a completion widget, words/CURRENT are plain variables and the completion system's
      // functions can be stand-ins that print the candidates they get (zsh itself filters by prefix).
      const script = [
        "compdef() { :; }",
        '_describe() { shift 3; print -r -- "${(P)1}"; }',
        'compadd() { shift; print -r -- "${(P)1}"; }',
        "_files() { print -r -- files; }",
        'source "$1"',
        'words=(kiln list -o ""); CURRENT=4; _kiln',
        "words=(kiln list -); CURRENT=3; _kiln",
        'words=(kiln completion ""); CURRENT=3; _kiln',
      ].join("\n");
      const run = spawnSync("zsh", ["-f", "-c", script, "zsh", file], { encoding: "utf8", timeout: 30_000 });
      assert.equal(run.status, 0, run.stderr);
      const [values, flags, shells] = run.stdout.split("\n");
      assert.equal(values, "table json");
      assert.match(flags!, /^-a:list applications --application:list applications .*--output:output format/);
      assert.equal(shells, "bash zsh");
    },
  );

  it("zsh: the script is a #compdef file listing the commands with what they do", async () => {
    const r = await runCli(["completion", "zsh"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^#compdef kiln\n/);
    assert.match(r.stdout, /'list:list applications, sessions, tasks, executors or nodes'/);
    assert.match(r.stdout, /'--output:output format'/);
  });

  it("an unknown or missing shell is a usage error (exit 2)", async () => {
    const fish = await runCli(["completion", "fish"]);
    assert.equal(fish.code, 2, fish.stderr);
    assert.match(fish.stderr, /Allowed choices are bash, zsh/);
    assert.equal(fish.stdout, "");
    const none = await runCli(["completion"]);
    assert.equal(none.code, 2, none.stderr);
    assert.match(none.stderr, /missing required argument 'shell'/);
  });

  it("bash: sourcing the script registers the completion for the `kiln` command", () => {
    const r = spawnSync("bash", ["-c", 'source "$1" && complete -p kiln', "bash", bashScript], {
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /complete -o default -F _kiln kiln/);
  });
});
