#!/usr/bin/env python3
"""Generate the man pages and the bash completion from the argparse parsers (committed, never
edited by hand; the .deb ships them):

    docs/man/jobctl.1          from jobctl.cli.build_parser()
    docs/man/jobworkerd.8      from jobworkerd.cli.build_parser()
    completion/bash/jobctl     the parser's commands, options and value kinds, and the logic below

    python scripts/gen_cli_docs.py          regenerate
    python scripts/gen_cli_docs.py --check  exit 1 if a committed file is stale (a unit test runs this)

Commands, options, their arguments and help come from the parsers; the prose around them (files,
environment, examples) is here. tests/unit/test_cli_docs.py checks the committed pages against the
parsers independently of this script.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jobctl import cli as jobctl_cli  # noqa: E402
from jobworkerd import __version__  # noqa: E402
from jobworkerd import cli as daemon_cli  # noqa: E402

OUTPUTS = {
    "jobctl": os.path.join("docs", "man", "jobctl.1"),
    "jobworkerd": os.path.join("docs", "man", "jobworkerd.8"),
    "completion": os.path.join("completion", "bash", "jobctl"),
}
GENERATED = "generated from the argparse parsers by scripts/gen_cli_docs.py; do not edit"
CONNECTION = ("addr", "ca", "cert", "key", "context")  # jobctl's options before or after any command


# ---- the parsers -------------------------------------------------------------------------------


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(command path, parser, its description) for the parser and every visible subcommand, depth
    first. A subcommand added without help= is hidden, as in --help."""
    yield path, parser, parser.description or ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in visible(action):
                yield from walk(action.choices[name], (*path, name))


def visible(action: argparse._SubParsersAction) -> list[str]:  # type: ignore[type-arg]
    return [choice.dest for choice in action._choices_actions]


def help_of(parent: argparse.ArgumentParser, name: str) -> str:
    for action in parent._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return visible(action)
    return []


def own_options(parser: argparse.ArgumentParser, path: tuple[str, ...], prog: str) -> list[argparse.Action]:
    """The options a command defines itself: not -h, not jobctl's connection options that every
    command inherits (they are described once)."""
    result = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if prog == "jobctl" and path and action.dest in CONNECTION:
            continue
        result.append(action)
    return result


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar:
        return str(action.metavar)
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper()


def expanded_help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": ""}
    if action.choices and action.metavar:
        text += f" ({', '.join(map(str, action.choices))})"
    return text


def synopsis(prog: str, path: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    if parser.usage:
        return parser.usage
    parts = [prog, *path]
    if subcommands(parser):
        parts.append("SUBCOMMAND")
    elif any(a.option_strings and not isinstance(a, argparse._HelpAction) for a in parser._actions):
        parts.append("[options]")
    for action in positionals(parser):
        name = metavar(action)
        parts.append({"+": f"{name} [{name}...]", "*": f"[{name}...]", "?": f"[{name}]"}.get(action.nargs, name))  # type: ignore[arg-type]
    return " ".join(parts)


# ---- roff --------------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text for roff: backslashes and minus signs escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def option_item(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
    arg = metavar(action)
    head = names + (f" \\fI{esc(arg)}\\fR" if arg else "")
    return f".TP\n{head}\n{esc(expanded_help(action))}\n"


def positional_item(action: argparse.Action) -> str:
    return f".TP\n\\fI{esc(metavar(action))}\\fR\n{esc(expanded_help(action))}\n"


def preformatted(text: str) -> str:
    return ".PP\n.nf\n" + esc(text.rstrip("\n")) + "\n.fi\n"


def commands_section(prog: str, parser: argparse.ArgumentParser) -> str:
    out = [".SH COMMANDS\n"]
    parents = {path: p for path, p, _ in walk(parser)}
    for path, sub, description in walk(parser):
        if not path:
            continue
        out.append(f'.SS "{esc(synopsis(prog, path, sub))}"\n')
        text = description or help_of(parents[path[:-1]], path[-1])
        if text:
            out.append(esc(text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")) + "\n")
        for action in positionals(sub):
            if action.help:
                out.append(positional_item(action))
        for action in own_options(sub, path, prog):
            out.append(option_item(action))
        if sub.epilog:
            out.append(preformatted(sub.epilog))
    return "".join(out)


def header(prog: str, section: int, manual: str, summary: str) -> str:
    return (f'.\\" {prog}({section}): {GENERATED}.\n'
            f'.TH {prog.upper()} {section} "" "jobworkerd {__version__}" "{manual}"\n'
            f".SH NAME\n{prog} \\- {esc(summary)}\n")


def paragraphs(*texts: str) -> str:
    return "".join(f".PP\n{esc(t)}\n" for t in texts)


def items(pairs: list[tuple[str, str]], bold: bool = True) -> str:
    font = "B" if bold else "I"
    return "".join(f".TP\n\\f{font}{esc(k)}\\fR\n{esc(v)}\n" for k, v in pairs)


# ---- jobctl(1) ---------------------------------------------------------------------------------


def jobctl_page() -> str:
    parser = jobctl_cli.build_parser()
    top_options = [a for a in parser._actions if a.option_strings]
    epilog = jobctl_cli.EPILOG
    exit_status = epilog[epilog.index("exit status:") + len("exit status:\n"):]
    return "".join([
        header("jobctl", 1, "User Commands", "run and control jobs on a jobworkerd daemon"),
        ".SH SYNOPSIS\n",
        ".B jobctl\n[\\fIconnection options\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR] [\\fIARG\\fR...]\n",
        ".SH DESCRIPTION\n",
        paragraphs(
            parser.description or "",
            "jobctl talks to jobworkerd(8) over gRPC with mutual TLS: it starts jobs (each in its own cgroup "
            "and PID, mount and network namespaces), prints their output from the first byte, stops them, "
            "waits for them and lists them. A user sees and controls only the jobs it started; a client "
            "certificate with the admin role sees all.",
            "The connection options may be given before the command or after it.",
        ),
        ".SH CONNECTION OPTIONS\n",
        "".join(option_item(a) for a in top_options),
        commands_section("jobctl", parser),
        ".SH CONNECTION SETTINGS\n",
        paragraphs(
            "Each of the daemon address, the CA certificate, the client certificate and its key comes from "
            "the first of these that gives it: the options --addr, --ca, --cert and --key; the variables "
            "JOBCTL_ADDR, JOBCTL_CA, JOBCTL_CERT and JOBCTL_KEY; the selected context in the config file; "
            "the config file's top-level keys addr, ca, cert and key. The address defaults to localhost:7443; "
            "the three files have no default.",
            "The context is the one named by --context, else by JOBCTL_CONTEXT, else the file's "
            "current-context (set by jobctl context use). The context called default is the file's "
            "top-level keys. An unknown context is a usage error.",
        ),
        ".SH ENVIRONMENT\n",
        items([
            ("JOBCTL_ADDR", "daemon address, HOST:PORT"),
            ("JOBCTL_CA", "CA certificate that issued the daemon's certificate"),
            ("JOBCTL_CERT", "client certificate"),
            ("JOBCTL_KEY", "the client certificate's private key"),
            ("JOBCTL_CONTEXT", "the context to use, unless --context is given"),
            ("XDG_CONFIG_HOME", "where the config file is looked for (default ~/.config)"),
        ]),
        ".SH FILES\n",
        ".TP\n.I ~/.config/jobctl/config.yaml\n",
        esc("Connection settings (mode 0600). Relative paths in it are relative to its directory. "
            "jobctl context rewrites it atomically and keeps keys it does not know (but not comments). "
            "The jobworkerd package writes one for root, with an admin certificate."),
        "\n",
        preformatted(
            "current-context: prod\n"
            "contexts:\n"
            "  prod:\n"
            "    addr: jobs1.example.org:7443\n"
            "    ca: /home/me/.config/jobctl/prod-ca.crt\n"
            "    cert: /home/me/.config/jobctl/me.crt\n"
            "    key: /home/me/.config/jobctl/me.key\n"
            "addr: localhost:7443        # the default context\n"
            "ca: /etc/jobworkerd/tls/ca.crt\n"
            "cert: me.crt\n"
            "key: me.key"
        ),
        ".SH EXIT STATUS\n",
        preformatted(exit_status),
        ".SH EXAMPLES\n",
        preformatted(
            "jobctl run --cpu 0.5 --mem 256M -- python3 -c 'print(\"hi\")'\n"
            "id=$(jobctl run -d --pids 50 -- sh -c 'sleep 600')\n"
            "jobctl logs -f $id\n"
            "jobctl stop --grace 2s $id\n"
            "jobctl status -o json $id\n"
            "jobctl context add prod --addr jobs1.example.org:7443 --ca prod-ca.crt --cert me.crt --key me.key\n"
            "jobctl --context prod ls"
        ),
        ".SH SEE ALSO\n",
        ".BR jobworkerd (8)\n",
    ])


# ---- jobworkerd(8) -----------------------------------------------------------------------------


def jobworkerd_page() -> str:
    parser = daemon_cli.build_parser()
    top_options = [a for a in parser._actions if a.option_strings]
    return "".join([
        header("jobworkerd", 8, "System Administration", "job runner daemon with cgroup limits, namespaces and mutual TLS"),
        ".SH SYNOPSIS\n",
        "".join(f".B jobworkerd {esc(' '.join(path))}\n[\\fIoptions\\fR]\n.br\n"
                for path, sub, _ in walk(parser) if path and not subcommands(sub)),
        ".B jobworkerd \\-\\-version\n",
        ".SH DESCRIPTION\n",
        paragraphs(
            "jobworkerd runs commands as jobs on one host. Each job gets its own cgroup (CPU, memory, I/O and "
            "process limits; cgroup v2 or v1, detected at start) beneath the daemon's own cgroup, and its own "
            "PID, mount, network, UTS, IPC and cgroup namespaces, in a sandbox: a read-only host, its own "
            "/tmp, /dev, /run and /sys, no capabilities (docker's default set for root), no_new_privs and a "
            "seccomp filter (profiles in the config's sandbox section; an admin may ask jobctl run for a privileged job). "
            "A job's network is none (only lo), bridge (a veth on the daemon's bridge, NAT, an egress policy "
            "and published ports in the daemon's nftables tables) or host (admins); see the network section. "
            "Clients, such as jobctl(1), start, stop, list, wait for and "
            "stream the output of jobs over gRPC; every connection is mutual TLS, and a client's identity and "
            "role come from its certificate.",
            "jobworkerd serve runs the daemon, as root. Under systemd (jobworkerd.service) it reports readiness "
            "with sd_notify. SIGTERM or SIGINT stop it cleanly: running jobs get SIGTERM, a grace period, "
            "then SIGKILL, and are recorded as stopped. jobworkerd ca creates a CA and issues certificates.",
            "Besides jobworker.v1.JobWorker the daemon serves the standard gRPC health service "
            "(grpc.health.v1.Health) and server reflection, so generic clients need no proto file, e.g. "
            "grpcurl -cacert ca.crt -cert me.crt -key me.key localhost:7443 list.",
            "With metrics.listen set (127.0.0.1:9464 in the shipped configuration) it serves Prometheus metrics "
            "there: plain HTTP on loopback, TLS with client certificates from tls.ca on any other address. "
            "Under journald it logs to the journal natively, with the fields JOB_ID, OWNER and REASON on a "
            "job's start and end lines, so journalctl JOB_ID=ID finds a job's lines.",
        ),
        ".SH OPTIONS\n",
        "".join(option_item(a) for a in top_options),
        commands_section("jobworkerd", parser),
        ".SH FILES\n",
        items([
            ("/etc/jobworkerd/config.yaml", "the configuration (listen address, TLS files, limits, users)"),
            ("/etc/jobworkerd/tls/", "the CA, server certificate and key made at installation"),
            ("/var/lib/jobworkerd/", "job records (SQLite); they survive restarts"),
            ("/run/jobworkerd/jobs/", "each job's output (tmpfs; kept for output_retention)"),
        ], bold=False),
        ".SH EXIT STATUS\n",
        items([("0", "clean stop"), ("1", "an error while running, or serve not run as root"),
               ("2", "the configuration is unusable (the message names the key)")]),
        ".SH SEE ALSO\n",
        ".BR jobctl (1),\n.BR systemctl (1),\n.BR journalctl (1)\n",
    ])


# ---- bash completion ---------------------------------------------------------------------------


def value_kind(action: argparse.Action) -> str:
    if action.dest == "context":
        return "context"
    if action.choices:
        return "choices:" + " ".join(map(str, action.choices))
    meta = str(action.metavar or "")
    if meta == "FILE":
        return "file"
    if meta == "DIR":
        return "dir"
    if meta == "PATH":
        return "path"
    return "none"


def positional_kind(path: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    kinds = []
    for action in positionals(parser):
        meta = metavar(action)
        if meta == "ID":
            kinds.append("active-id" if path[-1] in ("stop",) else "id")
        elif meta == "CMD":
            kinds.append("command")
        elif meta == "NAME" and path[:1] == ("context",) and path[-1] in ("use", "rm"):
            kinds.append("context" if path[-1] == "use" else "named-context")
        else:
            kinds.append("none")
    return " ".join(kinds)


def completion_script() -> str:
    parser = jobctl_cli.build_parser()
    opts, values, args, subs = {}, {}, {}, {}
    for path, sub, _ in walk(parser):
        key = " ".join(("jobctl", *path))
        words = []
        for action in sub._actions:
            for option in action.option_strings:
                words.append(option + ("=" if action.nargs != 0 else ""))
                if action.nargs != 0:
                    values[f"{key}|{option}"] = value_kind(action)
        opts[key] = " ".join(words)
        if subcommands(sub):
            subs[key] = " ".join(subcommands(sub))
        if path:
            args[key] = positional_kind(path, sub)

    def table(name: str, mapping: dict[str, str]) -> str:
        rows = "".join(f'    ["{k}"]="{v}"\n' for k, v in mapping.items())
        return f"declare -gA {name}=(\n{rows})\n"

    return (f"# bash completion for jobctl(1)                               -*- shell-script -*-\n"
            f"# {GENERATED}.\n\n"
            "# options of each command (\"jobctl\" is before the command); '=' marks an option that takes a value\n"
            + table("_jobctl_opts", opts)
            + "# what an option's value is, by \"command|option\": file, dir, path, context, choices:..., none\n"
            + table("_jobctl_values", values)
            + "# subcommands of each command\n"
            + table("_jobctl_subcommands", subs)
            + "# what the positional arguments of each command are: id, active-id, command, context, none\n"
            + table("_jobctl_args", args)
            + COMPLETION_LOGIC)


COMPLETION_LOGIC = r'''
# Job ids come from the daemon (jobctl __complete-ids: one ListJobs, at most 2 s, silent on errors),
# with the connection options already on the command line; context names from the config file.
_jobctl_ids() {
    "$1" __complete-ids ${2:+--active} "${@:3}" 2>/dev/null
}

_jobctl_contexts() {
    "$1" context ls -q 2>/dev/null
}

# File names go through mapfile, one per line, so that names with blanks stay whole.
_jobctl_value() {  # jobctl-command kind current-word
    local kind=$2 cur=$3
    case $kind in
        file|path) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        dir) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
        context) COMPREPLY=($(compgen -W "$(_jobctl_contexts "$1")" -- "$cur")) ;;
        choices:*) COMPREPLY=($(compgen -W "${kind#choices:}" -- "$cur")) ;;
        *) COMPREPLY=() ;;
    esac
}

_jobctl() {
    local prog=${1:-jobctl} cur=${COMP_WORDS[COMP_CWORD]}
    COMPREPLY=()
    # Words before the current one, with what bash split off at '=' and ':' glued back on
    # (--addr=host:7443 arrives as --addr = host : 7443).
    local -a words=()
    local i w glue=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == "=" || $w == ":" ]]; then
            words[${#words[@]}-1]+=$w; glue=1
        elif ((glue)) && ((${#words[@]})); then
            words[${#words[@]}-1]+=$w; glue=0
        else
            words+=("$w"); glue=0
        fi
    done
    # The value of "--opt=" being typed: bash made "=" (or the text after it) the current word.
    local pending=""
    if [[ $cur == "=" ]]; then
        pending=${words[${#words[@]}-1]}; cur=""
    elif ((COMP_CWORD > 1)) && [[ ${COMP_WORDS[COMP_CWORD-1]} == "=" ]]; then
        pending=${words[${#words[@]}-1]%=}
    elif ((glue)) && ((${#words[@]})); then
        cur=""  # after host: in --addr host:...: nothing to offer
        return 0
    fi
    pending=${pending%=}

    local cmd=jobctl nargs=0 dashdash=0 opt value takes
    local -a conn=()
    for ((i = 0; i < ${#words[@]}; i++)); do
        w=${words[i]}
        if ((dashdash)); then
            ((nargs++)); continue
        fi
        if [[ $w == "--" ]]; then
            dashdash=1; continue
        fi
        if [[ $w == -* ]]; then
            opt=${w%%=*}
            takes=0
            [[ " ${_jobctl_opts[$cmd]} " == *" $opt= "* ]] && takes=1
            if ((takes)) && [[ $w != *=* ]]; then
                if [[ $pending == "" && $i -eq $((${#words[@]} - 1)) ]]; then
                    # the current word is this option's value
                    _jobctl_value "$prog" "${_jobctl_values[$cmd|$opt]}" "$cur"
                    return 0
                fi
                value=${words[i+1]}; ((i++))
            else
                value=${w#*=}
            fi
            case $opt in --addr|--ca|--cert|--key|--context) ((takes)) && [[ $cmd != "jobctl context add" ]] && conn+=("$opt" "$value") ;; esac
            continue
        fi
        if ((nargs == 0)) && [[ " ${_jobctl_subcommands[$cmd]} " == *" $w "* ]]; then
            cmd+=" $w"
        else
            ((nargs++))
        fi
    done

    if [[ -n $pending ]]; then
        _jobctl_value "$prog" "${_jobctl_values[$cmd|$pending]}" "$cur"
        return 0
    fi
    if ((dashdash)) || [[ $cmd == "jobctl run" && $nargs -gt 0 ]]; then
        if [[ $cmd == "jobctl run" ]]; then
            if ((nargs == 0)); then
                mapfile -t COMPREPLY < <(compgen -c -- "$cur")
            else
                compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            fi
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        local -a flags=()
        for w in ${_jobctl_opts[$cmd]}; do flags+=("${w%=}"); done
        COMPREPLY=($(compgen -W "${flags[*]}" -- "$cur"))
        [[ $cmd == "jobctl run" ]] && COMPREPLY+=($(compgen -W "--" -- "$cur"))
        return 0
    fi
    if [[ -n ${_jobctl_subcommands[$cmd]} ]]; then
        ((nargs == 0)) && COMPREPLY=($(compgen -W "${_jobctl_subcommands[$cmd]}" -- "$cur"))
        return 0
    fi
    local -a kinds=(${_jobctl_args[$cmd]})
    ((nargs < ${#kinds[@]})) || return 0
    case ${kinds[nargs]} in
        id) COMPREPLY=($(compgen -W "$(_jobctl_ids "$prog" "" "${conn[@]}")" -- "$cur")) ;;
        active-id) COMPREPLY=($(compgen -W "$(_jobctl_ids "$prog" active "${conn[@]}")" -- "$cur")) ;;
        command) mapfile -t COMPREPLY < <(compgen -c -- "$cur") ;;
        context) COMPREPLY=($(compgen -W "$(_jobctl_contexts "$prog")" -- "$cur")) ;;
        named-context) COMPREPLY=($(compgen -W "$(_jobctl_contexts "$prog" | grep -vx default)" -- "$cur")) ;;
    esac
    return 0
}

complete -F _jobctl jobctl
'''


# ---- main --------------------------------------------------------------------------------------


def render() -> dict[str, str]:
    return {OUTPUTS["jobctl"]: jobctl_page(), OUTPUTS["jobworkerd"]: jobworkerd_page(),
            OUTPUTS["completion"]: completion_script()}


def main() -> int:
    outputs = render()
    if "--check" in sys.argv[1:]:
        stale = []
        for rel, text in outputs.items():
            try:
                with open(os.path.join(ROOT, rel), encoding="utf-8") as handle:
                    current = handle.read()
            except FileNotFoundError:
                current = None
            if current != text:
                stale.append(rel)
        if stale:
            print(f"stale: {', '.join(stale)}: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    for rel, text in outputs.items():
        path = os.path.join(ROOT, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
