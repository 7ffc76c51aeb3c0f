/**
 * The CLI's command table: every command, its one-line summary, its usage, and the options it takes. Parsing,
 * `help`, the main usage and the shell completion scripts all read it, so a command added here is parsed, listed
 * and completed everywhere at once.
 */
import { DEFAULT_NAMESPACE } from '../credentials/exchange.ts';

/** Every option the CLI knows (node:util parseArgs form); which command takes which is in COMMANDS. */
export const OPTIONS = {
  gateway: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'ca-file': { type: 'string' },
  config: { type: 'string' },
  mode: { type: 'string' },
  'timeout-ms': { type: 'string' },
  output: { type: 'string', short: 'o' },
  help: { type: 'boolean', short: 'h' },
  verbose: { type: 'boolean', short: 'v' },
  version: { type: 'boolean' },
  L: { type: 'string', short: 'L', multiple: true },
  listen: { type: 'string' },
  username: { type: 'string' },
  password: { type: 'string' },
  context: { type: 'string' },
  kubeconfig: { type: 'string' },
  namespace: { type: 'string', short: 'n' },
  local: { type: 'boolean' },
} as const;

export type OptionName = keyof typeof OPTIONS;

/** Values some options take, for completion. */
export const OPTION_VALUES: Partial<Record<OptionName, readonly string[]>> = {
  mode: ['auto', 'direct', 'relay'],
  output: ['text', 'json'],
};

/** Options that name a file (completed with file names). */
export const FILE_OPTIONS: readonly OptionName[] = ['token-file', 'ca-file', 'config', 'kubeconfig'];

/** Every command that talks to a gateway takes these. */
const GATEWAY_OPTIONS: readonly OptionName[] = [
  'gateway',
  'token',
  'token-file',
  'ca-file',
  'config',
  'mode',
  'context',
  'kubeconfig',
  'timeout-ms',
  'output',
  'verbose',
  'help',
];

export interface CommandSpec {
  /** One line for the command list. */
  summary: string;
  /** The options it accepts (anything else is a usage error, exit 2). */
  options: readonly OptionName[];
  /** Its help text (usage first), without the common options block. */
  usage: string;
  /** Whether the common gateway options block belongs in its help. */
  gatewayOptions: boolean;
  /** Completion of positional arguments: fixed words (e.g. shells), or none. */
  words?: readonly string[];
  /** Its positional arguments name agents: completion offers `ls -o name` (asked of the gateway, 3 s at most). */
  agents?: boolean;
}

export const SHELLS = ['bash', 'zsh', 'fish', 'powershell'] as const;
export type Shell = (typeof SHELLS)[number];

export const COMMANDS: Record<string, CommandSpec> = {
  login: {
    summary: "log in with your kube context's credentials (kubectl's): finds the gateway, caches a token",
    options: ['context', 'kubeconfig', 'namespace', 'timeout-ms', 'output', 'verbose', 'help'],
    gatewayOptions: false,
    usage: `Usage: narrowlink login [--context NAME] [--kubeconfig FILE] [-n NAMESPACE] [-o json]

Logs in to Narrowlink with the credentials of a kube context, exactly as kubectl uses them (client
certificates, bearer tokens, token files, exec plugins such as EKS/GKE/OIDC helpers, in-cluster
ServiceAccounts). Your Kubernetes credential goes to the API server only:
  1. reads the ConfigMap narrowlink-discovery in NAMESPACE (gateway URL, its CA, where to log in);
  2. makes an Ed25519 key that never leaves this machine and asks the operator, through a
     ClientLoginRequest, for a token bound to it (the cluster's RBAC decides who may: ClusterRole
     narrowlink-login);
  3. caches token, key, gateway and CA for the context, readable by you only, in
     $XDG_CONFIG_HOME/narrowlink/contexts/ (~/.config/...; %APPDATA%\\narrowlink\\contexts on Windows).
Then ls, forward, socks, connect and status need no --gateway, --token or --ca-file; forward and
socks renew the token before it expires while your kube credential still works.

  --context NAME      the kube context (default: the kubeconfig's current context)
  --kubeconfig FILE   the kubeconfig (default: KUBECONFIG, else ~/.kube/config, else in-cluster)
  -n, --namespace NS  where narrowlink is installed: the chart's release namespace (default ${DEFAULT_NAMESPACE})
  --timeout-ms N      how long to wait for the operator's answer (default 30000)
  -o, --output FMT    text | json
  -h, --help          help for the command
`,
  },
  logout: {
    summary: "forget the current context's cached token and key",
    options: ['context', 'kubeconfig', 'output', 'verbose', 'help'],
    gatewayOptions: false,
    usage: `Usage: narrowlink logout [--context NAME] [--kubeconfig FILE] [-o json]

Deletes the token and key "narrowlink login" cached for the kube context (default: the current one).
The token itself stays valid until it expires (at most the operator's cap, default 8 h).
`,
  },
  ls: {
    summary: 'list the agents you may reach and their ports',
    options: GATEWAY_OPTIONS,
    gatewayOptions: true,
    usage: `Usage: narrowlink ls [-o json|name]

Lists the agents your policies let you reach, with their exposed ports and connected instances.
-o name prints one agent per line as forward, connect and status take it (NAME, or NAMESPACE/NAME
where the name is not unique): for scripts, and what shell completion offers.
`,
  },
  forward: {
    summary: 'forward local ports to agents:  narrowlink forward 8080 demo:http',
    options: [...GATEWAY_OPTIONS, 'L'],
    gatewayOptions: true,
    agents: true,
    usage: `Usage: narrowlink forward [LOCAL_ADDR:]LOCAL_PORT AGENT[:PORT_NAME|PORT]
       narrowlink forward -L [LOCAL_ADDR:]LOCAL_PORT:AGENT[:PORT] [-L ...]

Listens on a local port (127.0.0.1 unless given) and relays every connection to the agent's
port. AGENT is NAME or NAMESPACE/NAME; the port may be left out when the agent exposes one.
LOCAL_PORT 0 picks a free port (printed). Listeners stay open while the gateway reconnects
("reconnecting in 2 s: CAUSE" on stderr). Prints a summary when the connection counts change;
-v prints one line per connection (relay or direct, bytes each way, duration) instead.

  -L SPEC             a forward spec; repeatable
`,
  },
  socks: {
    summary: 'run a local SOCKS5 proxy whose destinations are agents',
    options: [...GATEWAY_OPTIONS, 'listen', 'username', 'password'],
    gatewayOptions: true,
    usage: `Usage: narrowlink socks [--listen 127.0.0.1:1080] [--username U --password P]

Runs a SOCKS5 proxy (CONNECT only). The destination host names the agent (AGENT,
AGENT.NAMESPACE, optionally followed by .narrowlink); the destination port is the agent's port:
  curl --socks5-hostname 127.0.0.1:1080 http://demo:8080/

  --listen ADDR:PORT  where to listen (default 127.0.0.1:1080)
  --username U        require SOCKS username/password authentication  [NARROWLINK_SOCKS_USERNAME]
  --password P                                                       [NARROWLINK_SOCKS_PASSWORD]
`,
  },
  connect: {
    summary: "pipe stdin/stdout to an agent's port (ssh ProxyCommand)",
    options: GATEWAY_OPTIONS,
    gatewayOptions: true,
    agents: true,
    usage: `Usage: narrowlink connect AGENT PORT

Connects stdin and stdout to the agent's port. Exits 0 when the stream ends cleanly, 1 when it
was reset. For ssh: ssh -o ProxyCommand='narrowlink connect %h 22' user@AGENT
`,
  },
  status: {
    summary: 'who you are (user, groups, context, token expiry) and the gateway session',
    options: [...GATEWAY_OPTIONS, 'local'],
    gatewayOptions: true,
    agents: true,
    usage: `Usage: narrowlink status [AGENT] [--local] [-o json]

With a login: the kube context, cluster, your user and groups as the cluster authenticated them, the
gateway and when the token expires (exit 3 when not logged in or expired). --local stops there;
otherwise it connects to the gateway and reports the session: identity, token expiry, round trip, how many
agents you may reach, and your NAT as the gateway's UDP probes saw it (type, public endpoint),
which decides whether a direct path can work. With AGENT, also sets up a direct path to it and
says whether it came up (how, how fast) or why not (e.g. BothSymmetric, UdpBlocked, Denied); exit 1
when AGENT is not one you may reach or has no connected instance.
`,
  },
  doctor: {
    summary: 'check what a connection needs, step by step (✓/✗ with the fix):  narrowlink doctor [AGENT]',
    options: GATEWAY_OPTIONS,
    gatewayOptions: true,
    agents: true,
    usage: `Usage: narrowlink doctor [AGENT] [-o json]

Checks, in order, and prints ✓ or ✗ (– when it could not run) with what it saw and the fix: settings and
token (found, unexpired, the login's context), gateway DNS, TCP, TLS (the certificate's names and issuer),
the WebSocket upgrade, authentication, clock skew against the gateway, UDP to the NAT probe ports and the
NAT type; with AGENT also whether your policies allow it, whether an instance is attached, and whether a
direct path comes up (or why not). Exit code: 0 when all passed, else the first ✗'s: 2 settings,
3 credentials, 4 gateway unreachable, 1 anything else.
`,
  },
  help: {
    summary: 'help for a command:  narrowlink help forward',
    options: ['help'],
    gatewayOptions: false,
    usage: `Usage: narrowlink help [COMMAND]

Prints the usage of COMMAND, or the list of commands.
`,
  },
  version: {
    summary: "print the CLI's version",
    options: ['output', 'help'],
    gatewayOptions: false,
    usage: `Usage: narrowlink version [-o json]     (also: narrowlink --version)

Prints the CLI's version, and with -o json also the Node.js version and platform.
`,
  },
  completion: {
    summary: 'print a shell completion script:  narrowlink completion bash|zsh|fish|powershell',
    options: ['help'],
    gatewayOptions: false,
    words: SHELLS,
    usage: `Usage: narrowlink completion bash|zsh|fish|powershell

Prints a script that completes narrowlink's commands and options in that shell. Load it with:
  bash:        source <(narrowlink completion bash)       (or save it to /etc/bash_completion.d/narrowlink)
  zsh:         source <(narrowlink completion zsh)        (or save it as _narrowlink on your $fpath)
  fish:        narrowlink completion fish > ~/.config/fish/completions/narrowlink.fish
  powershell:  narrowlink completion powershell | Out-String | Invoke-Expression   (add it to $PROFILE)
`,
  },
};

export const COMMON_HELP = `Common options (env in brackets; also read from ~/.config/narrowlink/config.yaml):
  --gateway URL       gateway URL, wss://host[:port] (ws:// on loopback)   [NARROWLINK_GATEWAY]
  --token TOKEN       client token                                          [NARROWLINK_TOKEN]
  --token-file FILE   read the token from FILE (~ and $VARS expanded)       [NARROWLINK_TOKEN_FILE]
  --ca-file FILE      extra CA certificates to trust (PEM)                  [NARROWLINK_CA_FILE]
  --config FILE       settings file (gateway, token, tokenFile, caFile, mode) [NARROWLINK_CONFIG]
  --mode MODE         auto | direct | relay (default auto)                  [NARROWLINK_MODE]
  --context NAME      use the login of this kube context (default: the kubeconfig's current context)
  --kubeconfig FILE   the kubeconfig to read the current context from (default: KUBECONFIG, ~/.kube/config)
  --timeout-ms N      how long to wait for the gateway and a stream to open (default 15000)
  -o, --output FMT    text | json
  -v, --verbose       say more: dial attempts, every retry, one line per connection
  -h, --help          help for the command`;

/** The main usage: the command list comes from the table. */
export function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length)) + 2;
  const list = Object.entries(COMMANDS)
    .map(([name, spec]) => `  ${name.padEnd(width)} ${spec.summary}`)
    .join('\n');
  return `narrowlink: reach services inside your cluster through a Narrowlink gateway

Usage: narrowlink COMMAND [options]

Commands:
${list}

Run "narrowlink help COMMAND" (or "narrowlink COMMAND --help") for a command's options;
"narrowlink --version" prints the version.

Credentials: flags, then environment, then the config file, then the token "narrowlink login" cached for the
kube context (--context, else the current one). With a login nothing else is needed.

Exit codes: 0 ok, 1 a stream failed, 2 usage or configuration, 3 credentials, 4 gateway unreachable.

${COMMON_HELP}
`;
}

/** A command's help: its usage, then the common options when it talks to a gateway. */
export function commandHelp(command: string): string {
  const spec = COMMANDS[command];
  if (!spec) return mainHelp();
  return spec.gatewayOptions ? `${spec.usage}\n${COMMON_HELP}\n` : spec.usage;
}

/** The first lines of a command's usage (through the blank line), for usage errors. */
export function usageLines(command: string | undefined): string {
  const text = command && COMMANDS[command] ? (COMMANDS[command] as CommandSpec).usage : 'Usage: narrowlink COMMAND [options]\n';
  const end = text.indexOf('\n\n');
  return `${end < 0 ? text.trimEnd() : text.slice(0, end)}\nRun "narrowlink help${command && COMMANDS[command] ? ` ${command}` : ''}" for more.`;
}

/** The flag spellings of an option: `--name` and `-x`. */
export function flagsOf(option: OptionName): string[] {
  const spec = OPTIONS[option] as { short?: string };
  const long = option.length > 1 ? [`--${option}`] : [];
  return [...long, ...(spec.short ? [`-${spec.short}`] : [])];
}
