"""Create, set up, launch, watch, stop and delete brainjax runs on Cloud TPU VMs, through ``gcloud``.

Every action is a pure function returning the gcloud argv lists it needs (``list[list[str]]``), so the exact
commands can be tested and reviewed offline; ``main`` only prints them (``--dry-run``) or runs them in order.

    python tpu_scripts/launch.py create --name bj --zone us-central2-b --accelerator v4-32 --spot
    python tpu_scripts/launch.py setup  --name bj --zone us-central2-b --repo https://github.com/ORG/brainjax
    python tpu_scripts/launch.py run    --name bj --zone us-central2-b --accelerator v4-32 \\
        --workdir gs://BUCKET/runs/111m -- brainjax pretrain --preset brainlm_111m
    python tpu_scripts/launch.py hosts v5litepod-256

Multislice (``--queued --node-count K``) nodes are addressed as ``NAME-0 .. NAME-{K-1}``, the names gcloud gives
nodes created with ``--node-prefix NAME``. Stdlib only, so it runs from any machine with gcloud installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys

# Runtime images for JAX per generation; documented defaults, override with --version.
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5"}
V5E_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
CHIPS_PER_HOST = 4
LOG = "$HOME/brainjax.log"  # on each worker's own disk, so every host keeps its own log
# The "[b]" keeps the pattern from matching the remote shell that runs pkill (its command line holds "[b]").
PATTERN = "[b]rainjax pretrain"


@dataclasses.dataclass(frozen=True)
class Slice:
    """Shape of one TPU slice: generation ("v4"), chips in the slice, and hosts (TPU VM workers)."""

    generation: str
    chips: int
    hosts: int


@dataclasses.dataclass(frozen=True)
class Target:
    """Where commands go: a TPU VM, or a queued resource of ``node_count`` slices (multislice when > 1)."""

    name: str
    zone: str
    project: str | None = None
    queued: bool = False
    node_count: int = 1

    def __post_init__(self) -> None:
        if not self.name or not self.zone:
            raise ValueError("--name and --zone must be non-empty")
        if self.node_count < 1:
            raise ValueError(f"--node-count must be >= 1, got {self.node_count}")
        if self.node_count > 1 and not self.queued:
            raise ValueError("--node-count > 1 (multislice) needs --queued (only queued resources make several slices)")

    def flags(self) -> list[str]:
        """gcloud location flags: ["--zone=Z"] plus "--project=P" when a project is given."""
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def nodes(self) -> list[str]:
        """TPU VM names to ssh into: [name] for one slice, [name-0, ..., name-{K-1}] for multislice."""
        return [f"{self.name}-{i}" for i in range(self.node_count)] if self.node_count > 1 else [self.name]


def hosts(accelerator: str) -> Slice:
    """Chips and hosts of an accelerator type such as "v4-32", "v5litepod-256" or "v5p-128".

    v4-N and v5p-N count TensorCores (2 per chip); v5litepod-N counts chips (1 TensorCore each). Hosts carry 4
    chips, except v5litepod-1/-4/-8, which are single-host.
    """
    match = re.fullmatch(r"(v4|v5litepod|v5p)-(\d+)", accelerator)
    if match is None:
        raise ValueError(f"unknown accelerator type {accelerator!r}; expected v4-N, v5litepod-N or v5p-N")
    generation, count = match.group(1), int(match.group(2))
    if generation == "v5litepod":
        if count not in V5E_SIZES:
            raise ValueError(f"{accelerator!r}: v5litepod sizes are {', '.join(map(str, V5E_SIZES))} chips")
        return Slice(generation, count, 1 if count <= 8 else count // CHIPS_PER_HOST)
    if count < 8 or count % 8:
        # Slices are whole hosts: 4 chips x 2 TensorCores.
        raise ValueError(f"{accelerator!r}: {generation}-N counts TensorCores and N must be a multiple of 8")
    chips = count // 2
    return Slice(generation, chips, chips // CHIPS_PER_HOST)


def create(target: Target, accelerator: str, version: str | None = None, spot: bool = False,
           reserved: bool = False) -> list[list[str]]:
    """gcloud argv that creates the TPU VM (or the queued resource with ``--queued``): one command."""
    if spot and reserved:
        raise ValueError("--spot and --reserved are exclusive: choose preemptible capacity or a reservation")
    shape = hosts(accelerator)
    runtime = version or RUNTIMES[shape.generation]
    billing = ["--spot"] if spot else ["--reserved"] if reserved else []
    if not target.queued:
        return [["gcloud", "compute", "tpus", "tpu-vm", "create", target.name, *target.flags(),
                 f"--accelerator-type={accelerator}", f"--version={runtime}", *billing]]
    nodes = ([f"--node-count={target.node_count}", f"--node-prefix={target.name}"] if target.node_count > 1
             else [f"--node-id={target.name}"])
    return [["gcloud", "compute", "tpus", "queued-resources", "create", target.name, *target.flags(),
             f"--accelerator-type={accelerator}", f"--runtime-version={runtime}", *nodes, *billing]]


def ssh(target: Target, node: str, command: str, worker: str = "all") -> list[str]:
    """gcloud argv running the shell string ``command`` on ``worker`` ("all" or an index) of TPU VM ``node``."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *target.flags(), f"--worker={worker}",
            f"--command={command}"]


def setup(target: Target, repo: str | None = None, ref: str = "main", wheel: str | None = None) -> list[list[str]]:
    """gcloud argv installing jax[tpu] and brainjax (from git ``repo@ref``, or a copied wheel/sdist) everywhere."""
    if (repo is None) == (wheel is None):
        raise ValueError("setup needs exactly one of --repo URL or --wheel PATH")
    commands: list[list[str]] = []
    if wheel is not None:
        package = "./" + wheel.rstrip("/").rsplit("/", 1)[-1]
        commands += [["gcloud", "compute", "tpus", "tpu-vm", "scp", wheel, f"{node}:{package[2:]}",
                      *target.flags(), "--worker=all"] for node in target.nodes()]
    else:
        package = f"git+{repo}@{ref}"
    # One resolver call for both, so pip picks a brainjax-compatible jax that has TPU wheels.
    install = shlex.join(["python3", "-m", "pip", "install", "--upgrade", "jax[tpu]", package])
    return commands + [ssh(target, node, install) for node in target.nodes()]


def remote_run(command: list[str], workdir: str, env: dict[str, str]) -> str:
    """The shell string started on every worker: nohup'd brainjax with env vars, its output in the worker's log."""
    if not command:
        raise ValueError("run needs the brainjax command after '--', e.g. -- brainjax pretrain --preset NAME")
    if any(arg == "--workdir" or arg.startswith("--workdir=") for arg in command):
        raise ValueError("give the work dir once, as launch.py --workdir, not inside the brainjax command")
    for key in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"--env name {key!r} is not a valid environment variable name")
    full = [*command, "--workdir", workdir] + ([] if "--distributed" in command else ["--distributed"])
    assigns = [f"{key}={value}" for key, value in env.items()]
    # pip --user installs the entry point in ~/.local/bin, which non-login ssh shells leave off PATH; stdin and
    # both output streams are detached so the ssh session returns at once and a dropped ssh leaves the job alive.
    return (f'export PATH="$HOME/.local/bin:$PATH" ; nohup {shlex.join(["env", *assigns, *full])}'
            f' > "{LOG}" 2>&1 < /dev/null &')


def run(target: Target, accelerator: str, workdir: str, command: list[str],
        env: dict[str, str] | None = None) -> list[list[str]]:
    """gcloud argv starting ``command`` (+ --workdir, --distributed) in the background on every worker."""
    multi_host = hosts(accelerator).hosts > 1 or target.node_count > 1
    if multi_host and not workdir.startswith("gs://"):
        raise ValueError(f"work dir {workdir!r} is not gs://: every host of a multi-host slice must read and write "
                         "the same checkpoint directory")
    remote = remote_run(command, workdir, env or {})
    return [ssh(target, node, remote) for node in target.nodes()]


def logs(target: Target, worker: int = 0, node: int = 0) -> list[list[str]]:
    """gcloud argv following the log of one worker (index ``worker`` of slice ``node``)."""
    if not 0 <= node < target.node_count or worker < 0:
        raise ValueError(f"no worker {worker} on node {node} (node count {target.node_count})")
    return [ssh(target, target.nodes()[node], f'tail -n 100 -F "{LOG}"', worker=str(worker))]


def stop(target: Target) -> list[list[str]]:
    """gcloud argv sending SIGTERM to brainjax on every worker (the trainer checkpoints before it exits)."""
    # "|| true": a worker with nothing running is not a failure.
    return [ssh(target, node, f"pkill -TERM -f {shlex.quote(PATTERN)} || true") for node in target.nodes()]


def delete(target: Target) -> list[list[str]]:
    """gcloud argv deleting the TPU VM, or the queued resource together with its nodes."""
    if target.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", target.name, *target.flags(),
                 "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", target.name, *target.flags(), "--quiet"]]


def parse_env(pairs: list[str]) -> dict[str, str]:
    """["KEY=VALUE", ...] -> {KEY: VALUE}; a pair without "=" is an error."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--env {pair!r} is not KEY=VALUE")
        env[key] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    """The launch.py command line: one sub-command per action."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM / queued resource name (node prefix for multislice)")
    common.add_argument("--zone", required=True)
    common.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
    common.add_argument("--queued", action="store_true", help="a queued resource rather than a plain TPU VM")
    common.add_argument("--node-count", type=int, default=1, help="slices (multislice when > 1, needs --queued)")
    common.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", parents=[common], help="create the TPU VM or queued resource")
    p.add_argument("--accelerator", required=True, help="v4-32, v5litepod-256, v5p-128, ...")
    p.add_argument("--version", help=f"TPU runtime (default per generation: {RUNTIMES})")
    billing = p.add_mutually_exclusive_group()
    billing.add_argument("--spot", action="store_true")
    billing.add_argument("--reserved", action="store_true")
    p = sub.add_parser("setup", parents=[common], help="install jax[tpu] and brainjax on every worker")
    p.add_argument("--repo", help="git URL of brainjax")
    p.add_argument("--ref", default="main", help="git branch, tag or commit (default: %(default)s)")
    p.add_argument("--wheel", help="local wheel or sdist to copy and install instead of --repo")
    p = sub.add_parser("run", parents=[common], help="start '-- brainjax ...' on every worker under nohup")
    p.add_argument("--accelerator", required=True, help="the slice type, to know whether it is multi-host")
    p.add_argument("--workdir", required=True, help="gs://BUCKET/PATH (required on multi-host slices)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p = sub.add_parser("logs", parents=[common], help="follow one worker's log")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--node", type=int, default=0, help="slice index for multislice")
    sub.add_parser("stop", parents=[common], help="SIGTERM brainjax on every worker")
    sub.add_parser("delete", parents=[common], help="delete the TPU VM or queued resource")
    p = sub.add_parser("hosts", help="print the hosts and chips of a slice type")
    p.add_argument("accelerator")
    return parser


def commands_for(args: argparse.Namespace, command: list[str]) -> list[list[str]]:
    """Dispatch parsed arguments to the action builders."""
    target = Target(args.name, args.zone, args.project, args.queued, args.node_count)
    if args.action == "create":
        return create(target, args.accelerator, args.version, args.spot, args.reserved)
    if args.action == "setup":
        return setup(target, args.repo, args.ref, args.wheel)
    if args.action == "run":
        return run(target, args.accelerator, args.workdir, command, parse_env(args.env))
    if args.action == "logs":
        return logs(target, args.worker, args.node)
    return stop(target) if args.action == "stop" else delete(target)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (text after "--" is the remote command of ``run``); print or execute the gcloud calls."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    argv, command = argv[:split], argv[split + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.action == "hosts":
            shape = hosts(args.accelerator)
            print(f"{args.accelerator}: {shape.hosts} hosts, {shape.chips} chips")
            return 0
        if command and args.action != "run":
            raise ValueError(f"only run takes a command after '--' (got it for {args.action})")
        commands = commands_for(args, command)
    except ValueError as err:
        parser.error(str(err))
    for argv_ in commands:
        if args.dry_run:
            print(shlex.join(argv_))
        else:
            subprocess.run(argv_, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
