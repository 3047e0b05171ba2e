// Go `flag`-package compatible command-line parsing, so OK Log's commands and systemd units keep
// working: `-name value`, `-name=value`, `--name`, boolean `-b` / `-b=false`, repeatable flags,
// parsing stops at the first positional argument or `--`.
import { InvalidArgumentError } from './errors.ts';

export type FlagKind = 'string' | 'bool' | 'int' | 'duration' | 'strings';

export interface FlagSpec {
  name: string;
  kind: FlagKind;
  /** Default as shown in help and used when absent (strings for duration/string, number, boolean). */
  default: string | number | boolean | string[];
  help: string;
}

export type FlagValues = Record<string, string | number | boolean | string[]>;

export interface ParsedFlags {
  values: FlagValues;
  positional: string[];
  /** Names given explicitly on the command line. */
  set: Set<string>;
  help: boolean;
}

function convert(spec: FlagSpec, raw: string): string | number | boolean {
  switch (spec.kind) {
    case 'bool': {
      const v = raw.toLowerCase();
      if (['1', 't', 'true'].includes(v)) return true;
      if (['0', 'f', 'false'].includes(v)) return false;
      throw new InvalidArgumentError(`invalid boolean value ${JSON.stringify(raw)} for flag -${spec.name}`);
    }
    case 'int': {
      if (!/^-?\d+$/.test(raw.trim()))
        throw new InvalidArgumentError(
          `invalid value ${JSON.stringify(raw)} for flag -${spec.name}: not an integer`,
        );
      return Number(raw);
    }
    default:
      return raw;
  }
}

export function parseFlags(specs: FlagSpec[], argv: string[]): ParsedFlags {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const values: FlagValues = {};
  for (const s of specs) values[s.name] = Array.isArray(s.default) ? [...s.default] : s.default;
  const set = new Set<string>();
  let help = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      i++;
      break;
    }
    if (!arg.startsWith('-') || arg === '-') break;
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    if (name === 'h' || name === 'help') {
      help = true;
      continue;
    }
    const spec = byName.get(name);
    if (!spec) throw new InvalidArgumentError(`flag provided but not defined: -${name}`);
    let raw: string;
    if (eq >= 0) raw = body.slice(eq + 1);
    else if (spec.kind === 'bool') raw = 'true';
    else {
      if (i + 1 >= argv.length) throw new InvalidArgumentError(`flag needs an argument: -${name}`);
      raw = argv[++i];
    }
    if (spec.kind === 'strings') {
      const prev = set.has(name) ? (values[name] as string[]) : [];
      values[name] = [...prev, raw];
    } else {
      values[name] = convert(spec, raw);
    }
    set.add(name);
  }
  return { values, positional: argv.slice(i), set, help };
}

/** Per-command usage text, OK Log style. */
export function usage(command: string, specs: FlagSpec[], extra = ''): string {
  const rows = specs.map((s) => {
    const def = Array.isArray(s.default)
      ? s.default.length
        ? s.default.join(',')
        : '...'
      : String(s.default);
    return [`-${s.name} ${def === '' ? '""' : def}`, s.help];
  });
  const width = Math.max(...rows.map((r) => r[0].length), 0) + 2;
  const lines = rows.map(([a, b]) => `  ${a.padEnd(width)}${b}`);
  return `USAGE\n  ${command} [flags]${extra ? ` ${extra}` : ''}\n\nFLAGS\n${lines.join('\n')}\n`;
}
