/**
 * `narrowlink completion bash|zsh|fish|powershell`: completion scripts generated from the command table
 * (cli/commands.ts), so they offer exactly the commands and the options each command accepts, the fixed values of
 * `--mode` and `--output`, and file names after file options.
 */
import { COMMANDS, type CommandSpec, FILE_OPTIONS, flagsOf, OPTION_VALUES, OPTIONS, type OptionName, type Shell } from './commands.ts';

/** One line per option, for shells that show descriptions. */
const OPTION_HELP: Record<OptionName, string> = {
  gateway: 'gateway URL (wss://host[:port])',
  token: 'client token',
  'token-file': 'read the token from a file',
  'ca-file': 'extra CA certificates (PEM)',
  config: 'settings file',
  mode: 'auto, direct or relay',
  'timeout-ms': 'how long to wait, ms',
  output: 'text or json',
  help: 'help for the command',
  verbose: 'say more',
  version: 'print the version',
  L: 'a forward spec [ADDR:]PORT:AGENT[:PORT]',
  listen: 'where to listen, ADDR:PORT',
  username: 'SOCKS username',
  password: 'SOCKS password',
  context: 'kube context',
  kubeconfig: 'kubeconfig file',
  namespace: 'namespace narrowlink is installed in',
  local: 'stop at the local login state',
};

const PROGRAMS = ['narrowlink', 'kubectl-narrowlink'];

function takesValue(option: OptionName): boolean {
  return OPTIONS[option].type === 'string';
}

function commandNames(): string[] {
  return Object.keys(COMMANDS);
}

/** Fixed words a command's positional arguments complete to. */
function wordsOf(name: string, spec: CommandSpec): readonly string[] {
  if (name === 'help') return commandNames();
  return spec.words ?? [];
}

/** Single-quoted for POSIX shells and fish. */
function sq(text: string): string {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function bash(): string {
  const valued = (Object.keys(OPTIONS) as OptionName[]).filter(takesValue).flatMap(flagsOf);
  const cases = Object.entries(COMMANDS)
    .map(([name, spec]) => `    ${name}) opts=${sq(spec.options.flatMap(flagsOf).join(' '))}; words=${sq(wordsOf(name, spec).join(' '))}; agents=${spec.agents ? 1 : 0} ;;`)
    .join('\n');
  const valueCases = Object.entries(OPTION_VALUES)
    .map(([option, values]) => `    ${flagsOf(option as OptionName).join('|')}) COMPREPLY=($(compgen -W ${sq((values ?? []).join(' '))} -- "$cur")); return ;;`)
    .join('\n');
  const fileFlags = FILE_OPTIONS.flatMap(flagsOf).join('|');
  return `# bash completion for narrowlink; load with: source <(narrowlink completion bash)
_narrowlink() {
  local cur prev cmd w i skip opts words agents
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev=""
  if (( COMP_CWORD > 0 )); then prev="\${COMP_WORDS[COMP_CWORD-1]}"; fi
  COMPREPLY=()
  # The option before the cursor takes a value: complete that value.
  case "$prev" in
${valueCases}
    ${fileFlags}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
  esac
  if [[ " ${valued.join(' ')} " == *" $prev "* ]]; then return; fi
  # The command: the first word that is neither an option nor an option's value.
  cmd=""
  skip=0
  for (( i = 1; i < COMP_CWORD; i++ )); do
    w="\${COMP_WORDS[i]}"
    if (( skip )); then skip=0; continue; fi
    case "$w" in
      --*=*) ;;
      -*) if [[ " ${valued.join(' ')} " == *" $w "* ]]; then skip=1; fi ;;
      *) cmd="$w"; break ;;
    esac
  done
  if [[ -z "$cmd" ]]; then
    if [[ "$cur" == -* ]]; then
      COMPREPLY=($(compgen -W "--help --version" -- "$cur"))
    else
      COMPREPLY=($(compgen -W ${sq(commandNames().join(' '))} -- "$cur"))
    fi
    return
  fi
  opts=""
  words=""
  agents=0
  case "$cmd" in
${cases}
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    # Agent names from the gateway (your login or settings), bounded so a tab never hangs.
    if (( agents )); then words="$words $("\${COMP_WORDS[0]}" ls -o name --timeout-ms 3000 2>/dev/null)"; fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
  fi
}
complete -F _narrowlink ${PROGRAMS.join(' ')}
`;
}

/** zsh `_arguments` specs for a command's options. */
function zshSpecs(spec: CommandSpec): string[] {
  return spec.options.flatMap((option) => {
    const help = OPTION_HELP[option].replaceAll("'", '').replaceAll('[', '(').replaceAll(']', ')').replaceAll(':', ' ');
    const values = OPTION_VALUES[option];
    const action = !takesValue(option) ? '' : FILE_OPTIONS.includes(option) ? `:file:_files` : values ? `:${option}:(${values.join(' ')})` : `:${option}: `;
    const repeat = option === 'L' ? '*' : '';
    return flagsOf(option).map((flag) => `'${repeat}${flag}[${help}]${action}'`);
  });
}

function zsh(): string {
  const described = Object.entries(COMMANDS)
    .map(([name, spec]) => `    ${sq(`${name}:${spec.summary.replaceAll(':', '\\:')}`)}`)
    .join('\n');
  const cases = Object.entries(COMMANDS)
    .map(([name, spec]) => {
      const words = wordsOf(name, spec);
      const positional =
        words.length > 0 ? ` '1:${name === 'help' ? 'command' : 'shell'}:(${words.join(' ')})'` : spec.agents ? " '*:agent:_narrowlink_agents'" : " '*:argument: '";
      return `    ${name}) _arguments -s ${zshSpecs(spec).join(' ')}${positional} ;;`;
    })
    .join('\n');
  return `#compdef ${PROGRAMS.join(' ')}
# zsh completion for narrowlink; load with: source <(narrowlink completion zsh), or save as _narrowlink on $fpath
_narrowlink_agents() {
  # Agent names from the gateway (your login or settings), bounded so a tab never hangs.
  local -a agents
  agents=(\${(f)"$(narrowlink ls -o name --timeout-ms 3000 2>/dev/null)"})
  compadd -a agents
}
_narrowlink() {
  local -a commands
  commands=(
${described}
  )
  if (( CURRENT == 2 )); then
    _describe -t commands 'narrowlink command' commands
    return
  fi
  local cmd=$words[2]
  shift words
  (( CURRENT-- ))
  case $cmd in
${cases}
  esac
}
if [[ "\${funcstack[1]}" == _narrowlink ]]; then
  _narrowlink "$@"
else
  compdef _narrowlink ${PROGRAMS.join(' ')}
fi
`;
}

function fish(): string {
  const lines: string[] = ['# fish completion for narrowlink; save as ~/.config/fish/completions/narrowlink.fish'];
  for (const program of PROGRAMS) {
    lines.push(`complete -c ${program} -f`);
    lines.push(`complete -c ${program} -n '__fish_use_subcommand' -l help -s h -d 'help'`);
    lines.push(`complete -c ${program} -n '__fish_use_subcommand' -l version -d 'print the version'`);
    for (const [name, spec] of Object.entries(COMMANDS)) {
      lines.push(`complete -c ${program} -n '__fish_use_subcommand' -a ${name} -d ${sq(spec.summary)}`);
      const when = `-n '__fish_seen_subcommand_from ${name}'`;
      for (const option of spec.options) {
        const spelled = flagsOf(option)
          .map((flag) => (flag.startsWith('--') ? `-l ${flag.slice(2)}` : `-s ${flag.slice(1)}`))
          .join(' ');
        const values = OPTION_VALUES[option];
        const value = !takesValue(option) ? '' : FILE_OPTIONS.includes(option) ? ' -rF' : values ? ` -xa ${sq(values.join(' '))}` : ' -x';
        lines.push(`complete -c ${program} ${when} ${spelled}${value} -d ${sq(OPTION_HELP[option])}`);
      }
      const words = wordsOf(name, spec);
      if (words.length > 0) lines.push(`complete -c ${program} ${when} -xa ${sq(words.join(' '))}`);
      if (spec.agents) lines.push(`complete -c ${program} ${when} -xa '(${program} ls -o name --timeout-ms 3000 2>/dev/null)'`);
    }
  }
  return `${lines.join('\n')}\n`;
}

function powershell(): string {
  const table = Object.entries(COMMANDS)
    .map(([name, spec]) => {
      const options = spec.options.flatMap(flagsOf).map((flag) => `'${flag}'`);
      const words = wordsOf(name, spec).map((word) => `'${word}'`);
      return `    '${name}' = @{ Options = @(${options.join(', ')}); Words = @(${words.join(', ')}); Agents = $${spec.agents ? 'true' : 'false'} }`;
    })
    .join('\n');
  const values = Object.entries(OPTION_VALUES)
    .flatMap(([option, list]) => flagsOf(option as OptionName).map((flag) => `    '${flag}' = @(${(list ?? []).map((v) => `'${v}'`).join(', ')})`))
    .join('\n');
  const valued = (Object.keys(OPTIONS) as OptionName[])
    .filter(takesValue)
    .flatMap(flagsOf)
    .map((flag) => `'${flag}'`)
    .join(', ');
  return `# PowerShell completion for narrowlink; load with:
#   narrowlink completion powershell | Out-String | Invoke-Expression
Register-ArgumentCompleter -Native -CommandName ${PROGRAMS.map((p) => `'${p}'`).join(', ')} -ScriptBlock {
  param($wordToComplete, $commandAst, $cursorPosition)
  $commands = @{
${table}
  }
  $values = @{
${values}
  }
  $valued = @(${valued})
  $elements = @($commandAst.CommandElements | Select-Object -Skip 1 | ForEach-Object { $_.ToString() })
  if ($wordToComplete -ne '' -and $elements.Count -gt 0) { $elements = @($elements | Select-Object -SkipLast 1) }
  $command = $null
  $skip = $false
  foreach ($element in $elements) {
    if ($skip) { $skip = $false; continue }
    if ($element.StartsWith('-')) { if ($valued -contains $element) { $skip = $true }; continue }
    $command = $element
    break
  }
  $previous = if ($elements.Count -gt 0) { $elements[-1] } else { '' }
  if ($values.ContainsKey($previous)) {
    $candidates = $values[$previous]
  } elseif ($null -eq $command) {
    $candidates = if ($wordToComplete.StartsWith('-')) { @('--help', '--version') } else { @($commands.Keys | Sort-Object) }
  } elseif ($commands.ContainsKey($command)) {
    $candidates = if ($wordToComplete.StartsWith('-')) { $commands[$command].Options } else { $commands[$command].Words }
    # Agent names from the gateway (your login or settings), bounded so a tab never hangs.
    if (-not $wordToComplete.StartsWith('-') -and $commands[$command].Agents) { $candidates = @($candidates) + @(& $commandAst.CommandElements[0].ToString() ls -o name --timeout-ms 3000 2>$null) }
  } else {
    $candidates = @()
  }
  $candidates | Where-Object { $_ -like "$wordToComplete*" } | ForEach-Object {
    [System.Management.Automation.CompletionResult]::new($_, $_, 'ParameterValue', $_)
  }
}
`;
}

/** The completion script for `shell`. */
export function completionScript(shell: Shell): string {
  switch (shell) {
    case 'bash':
      return bash();
    case 'zsh':
      return zsh();
    case 'fish':
      return fish();
    case 'powershell':
      return powershell();
  }
}
