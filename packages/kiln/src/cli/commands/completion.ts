import { Argument, type Command } from "commander";
import { bashCompletion, COMPLETION_SHELLS, zshCompletion, type CompletionShell } from "../completion.js";

/** Adds `kiln completion bash|zsh`: a completion script made from the command tree it is part of. */
export function registerCompletion(program: Command): void {
  program
    .command("completion")
    .description("print a shell completion script (bash or zsh)")
    .addArgument(new Argument("<shell>", "the shell to complete in").choices(COMPLETION_SHELLS))
    .addHelpText(
      "after",
      "\nInstall:\n" +
        "  bash  source <(kiln completion bash)        # in ~/.bashrc; or save it as\n" +
        "                                              # ~/.local/share/bash-completion/completions/kiln\n" +
        '  zsh   kiln completion zsh > "${fpath[1]}/_kiln"   # then start a new shell\n',
    )
    .action((shell: CompletionShell) => {
      process.stdout.write(shell === "bash" ? bashCompletion(program) : zshCompletion(program));
    });
}
