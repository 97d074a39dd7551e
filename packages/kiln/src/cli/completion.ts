import type { Command, Option } from "commander";

/** The shells `kiln completion` writes a script for. */
export const COMPLETION_SHELLS = ["bash", "zsh"] as const;
export type CompletionShell = (typeof COMPLETION_SHELLS)[number];

/** One flag as completion sees it: its spellings, and what may follow it. */
interface CompletionFlag {
  names: string[];
  description: string;
  takesValue: boolean;
  choices: readonly string[];
}

/** One command (or the program itself, path ""): what may be typed after it. */
interface CompletionNode {
  /** Subcommand names from the program down, space-separated (`cache put`). */
  path: string;
  subcommands: { name: string; description: string }[];
  flags: CompletionFlag[];
  /** The allowed values of its first argument, when it has a fixed set (`kiln completion <shell>`). */
  argumentChoices: readonly string[];
}

function flagOf(option: Option): CompletionFlag {
  return {
    names: [option.short, option.long].filter((n): n is string => n !== undefined),
    description: option.description,
    takesValue: option.required || option.optional,
    choices: option.argChoices ?? [],
  };
}

/**
 * Every command of `program` with its subcommands, flags and argument choices, read from the
 * commander tree itself, so a completion script lists whatever commands exist when it is made.
 * The program's own options are accepted after any command, so every node has them.
 */
function completionTree(program: Command): CompletionNode[] {
  const help = program.createHelp();
  const globals = help
    .visibleOptions(program)
    .filter((o) => o.long !== "--version" && o.long !== "--help")
    .map(flagOf);
  const nodes: CompletionNode[] = [];
  const visit = (cmd: Command, path: string): void => {
    const commands = help.visibleCommands(cmd);
    const own = help.visibleOptions(cmd).map(flagOf);
    nodes.push({
      path,
      subcommands: commands.map((c) => ({ name: c.name(), description: c.description() })),
      flags: cmd === program ? own : [...own, ...globals],
      argumentChoices: cmd.registeredArguments[0]?.argChoices ?? [],
    });
    // The implicit `help` command has no command object of its own to descend into.
    for (const c of cmd.commands) if (commands.includes(c)) visit(c, path ? `${path} ${c.name()}` : c.name());
  };
  visit(program, "");
  return nodes;
}

/** A word in single quotes, safe in bash and zsh whatever it holds. */
const quote = (text: string): string => `'${text.replace(/'/g, `'\\''`)}'`;

/** One shell function that sets `reply` (zsh) or prints (bash) a list per command path, or per path and flag. */
function caseFunction(
  name: string,
  purpose: string,
  entries: [key: string, words: string[]][],
  emit: (words: string[]) => string,
): string {
  const arms = entries
    .filter(([, words]) => words.length > 0)
    .map(([key, words]) => `    ${quote(key)}) ${emit(words)} ;;`);
  return `# ${purpose}\n${name}() {\n  case "$1" in\n${arms.join("\n")}\n  esac\n}\n`;
}

/** `path flag` keys (and `path ` for the first argument) with the values each may take. */
function choiceEntries(nodes: CompletionNode[]): [string, string[]][] {
  return nodes.flatMap((n) => [
    ...n.flags.flatMap((f) => f.names.map((name): [string, string[]] => [`${n.path} ${name}`, [...f.choices]])),
    [`${n.path} `, [...n.argumentChoices]] as [string, string[]],
  ]);
}

const HEADER = (shell: CompletionShell, install: string): string =>
  `# kiln completion for ${shell}, made by \`kiln completion ${shell}\` from kiln's own commands:\n` +
  `# make it again after upgrading kiln. Install: ${install}\n`;

/**
 * The bash completion script for `program`: commands, subcommands, flags and flag values
 * (`-o <TAB>` offers the choices); anything else completes file names.
 *
 * @example
 * process.stdout.write(bashCompletion(createProgram())); // then: source <(kiln completion bash)
 */
export function bashCompletion(program: Command): string {
  const nodes = completionTree(program);
  const print = (words: string[]) => `echo ${words.map(quote).join(" ")}`;
  return (
    HEADER("bash", "source <(kiln completion bash), e.g. in ~/.bashrc (see docs/cli.md)") +
    caseFunction(
      "__kiln_subcommands",
      "The subcommands of a command path.",
      nodes.map((n) => [n.path, n.subcommands.map((s) => s.name)]),
      print,
    ) +
    caseFunction(
      "__kiln_flags",
      "The flags a command path accepts.",
      nodes.map((n) => [n.path, n.flags.flatMap((f) => f.names)]),
      print,
    ) +
    caseFunction(
      "__kiln_valued",
      "The flags of a command path that take a value.",
      nodes.map((n) => [n.path, n.flags.filter((f) => f.takesValue).flatMap((f) => f.names)]),
      print,
    ) +
    caseFunction(
      "__kiln_choices",
      'The values of "path flag", or of "path " (its first argument).',
      choiceEntries(nodes),
      print,
    ) +
    `
_kiln() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmdpath="" word i skip=0 args=0
  # Walk the words before the cursor: subcommands deepen the path, a flag that takes a value skips it.
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="\${COMP_WORDS[i]}"
    if ((skip)); then skip=0; continue; fi
    case "$word" in
      --*=*) ;;
      -*) [[ " $(__kiln_valued "$cmdpath") " == *" $word "* ]] && skip=1 ;;
      *)
        if [[ " $(__kiln_subcommands "$cmdpath") " == *" $word "* ]]; then
          cmdpath="\${cmdpath:+$cmdpath }$word"
        else
          ((args++))
        fi
        ;;
    esac
  done
  local words
  if ((skip)); then
    words="$(__kiln_choices "$cmdpath \${COMP_WORDS[COMP_CWORD - 1]}")"
  elif [[ "$cur" == -* ]]; then
    words="$(__kiln_flags "$cmdpath")"
  else
    words="$(__kiln_subcommands "$cmdpath")"
    ((args == 0)) && words="$words $(__kiln_choices "$cmdpath ")"
  fi
  # Nothing to offer: -o default completes file names.
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _kiln kiln
`
  );
}

/**
 * The zsh completion script for `program`, with descriptions: commands, subcommands, flags and
 * flag values; anything else completes file names.
 *
 * @example
 * process.stdout.write(zshCompletion(createProgram())); // then: kiln completion zsh > "${fpath[1]}/_kiln"
 */
export function zshCompletion(program: Command): string {
  const nodes = completionTree(program);
  const assign = (words: string[]) => `reply=(${words.map(quote).join(" ")})`;
  // _describe reads "name:description"; a colon in the name would need escaping, and names have none.
  const described = (name: string, description: string) => `${name}:${description.replace(/\s+/g, " ")}`;
  return (
    "#compdef kiln\n" +
    HEADER("zsh", 'kiln completion zsh > "${fpath[1]}/_kiln" (then a new shell), or source <(kiln completion zsh)') +
    caseFunction(
      "__kiln_subcommand_names",
      "The subcommands of a command path.",
      nodes.map((n) => [n.path, n.subcommands.map((s) => s.name)]),
      assign,
    ) +
    caseFunction(
      "__kiln_subcommands",
      "The subcommands of a command path, with what they do.",
      nodes.map((n) => [n.path, n.subcommands.map((s) => described(s.name, s.description))]),
      assign,
    ) +
    caseFunction(
      "__kiln_flags",
      "The flags a command path accepts, with what they do.",
      nodes.map((n) => [n.path, n.flags.flatMap((f) => f.names.map((name) => described(name, f.description)))]),
      assign,
    ) +
    caseFunction(
      "__kiln_valued",
      "The flags of a command path that take a value.",
      nodes.map((n) => [n.path, n.flags.filter((f) => f.takesValue).flatMap((f) => f.names)]),
      assign,
    ) +
    caseFunction(
      "__kiln_choices",
      'The values of "path flag", or of "path " (its first argument).',
      choiceEntries(nodes),
      assign,
    ) +
    `
_kiln() {
  local cmdpath="" word cur=\${words[CURRENT]}
  local -i i skip=0 args=0
  local -a reply
  # Walk the words before the cursor: subcommands deepen the path, a flag that takes a value skips it.
  for (( i = 2; i < CURRENT; i++ )); do
    word=\${words[i]}
    if (( skip )); then skip=0; continue; fi
    case $word in
      --*=*) ;;
      -*) reply=(); __kiln_valued "$cmdpath"; (( \${reply[(Ie)$word]} )) && skip=1 ;;
      *)
        reply=(); __kiln_subcommand_names "$cmdpath"
        if (( \${reply[(Ie)$word]} )); then cmdpath=\${cmdpath:+$cmdpath }$word; else (( args++ )); fi
        ;;
    esac
  done
  reply=()
  if (( skip )); then
    __kiln_choices "$cmdpath \${words[CURRENT-1]}"
    if (( \${#reply} )); then compadd -a reply; else _files; fi
  elif [[ $cur == -* ]]; then
    __kiln_flags "$cmdpath"
    _describe -t options option reply
  else
    __kiln_subcommands "$cmdpath"
    if (( \${#reply} )); then
      _describe -t commands command reply
    else
      (( args == 0 )) && __kiln_choices "$cmdpath "
      if (( \${#reply} )); then compadd -a reply; else _files; fi
    fi
  fi
}

if [[ \${funcstack[1]} == _kiln ]]; then _kiln "$@"; else compdef _kiln kiln; fi
`
  );
}
