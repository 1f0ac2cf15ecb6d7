"""The job folder on the shared filesystem, and the batch script that runs in it.

A job folder (``<shared-dir>/jobs/<name>/``) holds:

- ``project/``: a working copy of the project, where the command runs;
- ``job.sh``: the batch script (the prepared environment, the config's ``env``
  and ``setup`` lines, then the entry point's command);
- ``job.out``: the job's output (stdout and stderr), which mlexec streams to
  the terminal as it is written;
- ``exit-status``: written by the script as it exits (its exit code, 143 when
  Slurm stopped it), so mlexec learns of the end at once instead of waiting
  for its next question to the controller.

A run of ``nodes: N``, ``processes-per-node: P`` (N x P > 1) has one more file:

- ``rank.sh``: one process of the run, started by ``srun`` once per task
  (:func:`srun_line`): its rank variables computed from Slurm's own
  (:data:`RANK_FROM_SLURM`), its share of the node's GPUs, then the command;
  the first rank to fail records itself in ``first-failure/rank`` (``mkdir``
  is atomic, so only one can), which names it in the run's reason.
"""

from __future__ import annotations

import shlex
import shutil
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence

from attrs import frozen

from mlexec_core.plugin.interfaces import PreparedEnvironment

#: What is not copied into the working copy.
COPY_IGNORE = (".git", "__pycache__", "mlruns", ".mlexec-slurm")


@frozen
class JobDir:
    path: Path

    @classmethod
    def new(cls, jobs_dir: Path, project_name: str) -> "JobDir":
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in project_name)[:40] or "project"
        return cls(jobs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{uuid.uuid4().hex[:8]}")

    @property
    def project(self) -> Path:
        return self.path / "project"

    @property
    def script(self) -> Path:
        return self.path / "job.sh"

    @property
    def output(self) -> Path:
        return self.path / "job.out"

    @property
    def exit_status(self) -> Path:
        return self.path / "exit-status"

    @property
    def rank_script(self) -> Path:
        return self.path / "rank.sh"

    @property
    def first_failure(self) -> Path:
        """A folder made by the first rank that failed, holding ``rank`` (``RANK CODE``)."""
        return self.path / "first-failure"

    def rank_failure(self) -> tuple[int, int] | None:
        """The first rank that failed and its exit code, if one did."""
        try:
            rank, code = (self.first_failure / "rank").read_text().split()
            return int(rank), int(code)
        except (OSError, ValueError):
            return None

    def copy_project(self, source: Path, shared_dir: Path) -> None:
        """Copy the project (without .git, caches, mlruns and the shared folder itself)."""
        shared = shared_dir.resolve()

        def ignore(folder: str, names: list[str]) -> list[str]:
            skipped = [n for n in names if n in COPY_IGNORE]
            skipped += [n for n in names if n not in skipped and (Path(folder) / n).resolve() == shared]
            return skipped

        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o700)  # the script may hold credentials (a tracking server's)
        shutil.copytree(source, self.project, symlinks=True, ignore=ignore)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def environment_lines(environment: PreparedEnvironment | None, run_env: Mapping[str, str],
                      config_env: Mapping[str, str]) -> list[str]:
    """Shell lines setting up the prepared environment, the run's variables, then the config's."""
    lines = []
    if environment is not None:
        lines += [f"unset {name}" for name in environment.unset]
        lines += [f"export {name}={shlex.quote(str(value))}" for name, value in environment.env.items()]
        if environment.path_prepend:
            prefix = ":".join(shlex.quote(p) for p in environment.path_prepend)
            lines.append(f'export PATH={prefix}:"$PATH"')
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in run_env.items()]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in config_env.items()]
    return lines


#: The rank variables of one process, from what Slurm gives each task (``{P}``: the run's
#: processes-per-node, which is the step's ``--ntasks-per-node``).
RANK_FROM_SLURM = (
    ("WORLD_SIZE", "$SLURM_NTASKS"),
    ("RANK", "$SLURM_PROCID"),
    ("LOCAL_RANK", "$SLURM_LOCALID"),
    ("LOCAL_WORLD_SIZE", "{P}"),
    ("NODE_RANK", "$SLURM_NODEID"),
    ("NNODES", "$SLURM_JOB_NUM_NODES"),
)
#: ``MASTER_PORT`` is derived from the job id, the same for every task without any exchange:
#: in ``MASTER_PORT_BASE`` .. ``MASTER_PORT_BASE + 9999``, below Linux's ephemeral ports (32768+).
MASTER_PORT_BASE = 20000
#: ``srun --label``'s ``N: `` (padded to the width of the largest task id) becomes ``[rank N] ``.
LABEL_TO_RANK = r"sed -u -E 's/^ *([0-9]+): /[rank \1] /'"


def srun_line(job_dir: JobDir, nodes: int, per_node: int) -> str:
    """The step that starts the N x P processes: one task each, labelled, all stopped when one fails."""
    return (f"srun --nodes={nodes} --ntasks-per-node={per_node} --ntasks={nodes * per_node} "
            f"--kill-on-bad-exit=1 --label /bin/bash {shlex.quote(str(job_dir.rank_script))}")


#: Waits for the command started in the background (``$__mlexec_pid``) while the traps run:
#: ``wait`` returns early when a trapped signal arrives, so it is asked again while the command lives.
WAIT_FOR_COMMAND = ('while wait "$__mlexec_pid"; __mlexec_code=$?; kill -0 "$__mlexec_pid" 2>/dev/null; '
                    'do :; done')

#: ``__mlexec_warn_group PGID``: SIGUSR1 to the processes of a process group that catch it or block it
#: to wait for it (``SigCgt``, ``SigBlk`` in ``/proc/PID/status``: srun does), this shell excepted; to
#: the others its default action would be the end of the run, earlier than Slurm's (a command that
#: does not listen for the warning is left alone).
WARN_GROUP = r"""__mlexec_warn_group() {
    local group=$1 stat line pid key mask fields
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        fields=(${line##*) })
        pid=${stat#/proc/}; pid=${pid%/stat}
        [ "${fields[2]}" = "$group" ] && [ "$pid" != "$$" ] || continue
        mask=0
        while read -r key line; do
            case $key in SigBlk:|SigCgt:) mask=$(( mask | 0x$line )) ;; esac
        done 2>/dev/null <"/proc/$pid/status"
        (( (mask >> 9) & 1 )) && kill -USR1 "$pid" 2>/dev/null
    done
}"""


def rank_script(*, job_dir: JobDir, per_node: int, command: str) -> str:
    """One process of the run (an srun task): its rank variables, its GPUs, the command; the first
    rank to fail records itself (``mkdir`` is atomic: one rank wins)."""
    failed = shlex.quote(str(job_dir.first_failure))
    return "\n".join([
        "#!/bin/bash",
        "# One process of the run, started by srun once per task: its rank variables from Slurm's.",
        *(f"export {name}={value.replace('{P}', str(per_node))}" for name, value in RANK_FROM_SLURM),
        "# With GPUs: each process its own share when their number is a multiple of the processes",
        "# of a node; otherwise all of them (the process picks its own with LOCAL_RANK).",
        'if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then',
        '    IFS=, read -ra __mlexec_gpus <<<"$CUDA_VISIBLE_DEVICES"',
        '    if [ $(( ${#__mlexec_gpus[@]} % LOCAL_WORLD_SIZE )) = 0 ]; then',
        '        __mlexec_share=$(( ${#__mlexec_gpus[@]} / LOCAL_WORLD_SIZE ))',
        '        CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${__mlexec_gpus[*]:LOCAL_RANK*__mlexec_share:__mlexec_share}")',
        '    fi',
        'fi',
        f"cd {shlex.quote(str(job_dir.project))} || exit 1",
        "# Signals for the task (SIGUSR1: the warning before the end; SIGTERM: stop), from srun or scancel:",
        "# Slurm signals the task (with proctrack/cgroup only its first process, this shell), which passes",
        "# them on to the command's processes, in a process group of their own (set -m): SIGTERM to all,",
        "# SIGUSR1 to those that catch it. A stopped task is not the run's first failure.",
        WARN_GROUP,
        "__mlexec_stopped=",
        "trap '__mlexec_warn_group \"$__mlexec_pid\"' USR1",
        "trap '__mlexec_stopped=1; kill -TERM -- -\"$__mlexec_pid\" 2>/dev/null' TERM",
        "set -m",
        "(",
        "trap : USR1",
        command,
        ") &",
        "__mlexec_pid=$!",
        "set +m",
        WAIT_FOR_COMMAND,
        '[ -n "$__mlexec_stopped" ] && exit 143',
        f'if [ "$__mlexec_code" != 0 ] && mkdir {failed} 2>/dev/null; then',
        f'    printf \'%s %s\\n\' "$RANK" "$__mlexec_code" >{failed}/rank',
        "fi",
        'exit "$__mlexec_code"',
        "",
    ])


def batch_script(*, job_dir: JobDir, header: Sequence[str], env_lines: Sequence[str], setup: Sequence[str],
                 command: str, ranks: tuple[int, int] | None = None, requeue: bool = False) -> str:
    """The batch script: records its exit status, sets the environment, runs setup, then the command
    (once; or, with ``ranks=(nodes, per_node)``, as one srun task per process, each running
    ``rank.sh``).

    The command runs in the background while the script waits for it, so that the script's traps
    run at once: SIGUSR1 (the warning before the end, ``--signal=B:USR1@grace``, sent at once on
    preemption by clusters with ``preempt_send_user_signal``) is passed on to the processes of the
    job that catch it (srun passes it on to its tasks on every node, whose ``rank.sh`` does the
    same); SIGTERM (Slurm stopping the job) is passed on to all of them, the script waits for the
    command, and the job ends 143.  With ``requeue`` (Slurm may start the
    job again: ``--requeue``), ``MLEXEC_ATTEMPT`` adds Slurm's restarts of the job to mlexec's
    attempt."""
    status = shlex.quote(str(job_dir.exit_status))
    parts = [
        "#!/bin/bash",
        *(f"# {line}" for line in header),
        "",
        "# Written as the script exits, so mlexec sees the end at once (143: stopped by Slurm).",
        f"__mlexec_status={status}",
        '__mlexec_end() { local code=$?; printf \'%s\\n\' "$code" >"$__mlexec_status.tmp" '
        '&& mv -f "$__mlexec_status.tmp" "$__mlexec_status"; }',
        "trap __mlexec_end EXIT",
        "# Slurm signals this script (with proctrack/cgroup, only this script), which passes the signal on",
        "# to the processes of its process group (srun passes it on to its tasks on every node).",
        "# Stopped by Slurm (scancel, preemption, time limit): SIGTERM to all of them; the script waits",
        "# for the command to end (Slurm's SIGKILL follows after KillWait), then ends 143.",
        "__mlexec_stopped=",
        "__mlexec_term() { __mlexec_stopped=1; trap '' TERM; kill -TERM 0 2>/dev/null; trap __mlexec_term TERM; }",
        "trap __mlexec_term TERM",
        "# The warning before the end (SIGUSR1: --signal=B:USR1@grace, or at once on preemption where the",
        "# cluster sends it), to the processes that catch it, so they can save their work.",
        WARN_GROUP,
        "__mlexec_warn() {",
        '    echo "mlexec: Slurm job $SLURM_JOB_ID got SIGUSR1 (its end is near): passed on to the command" >&2',
        '    local line fields; read -r line </proc/$$/stat; fields=(${line##*) })',
        '    __mlexec_warn_group "${fields[2]}"  # this script\'s process group',
        "}",
        "trap __mlexec_warn USR1",
        "",
        "# The environment",
        *env_lines,
    ]
    if requeue:
        parts += ["# The attempt: mlexec's, plus Slurm's own restarts of this job (requeued: preempted, a lost node)",
                  "export MLEXEC_ATTEMPT=$(( ${MLEXEC_ATTEMPT:-1} + ${SLURM_RESTART_COUNT:-0} ))"]
    parts.append(f"cd {shlex.quote(str(job_dir.project))} || exit 1")
    if setup:
        parts += ["", "# setup (from the backend config); a failing line fails the job", "set -e", *setup, "set +e"]
    if ranks is None:
        parts += ["", "# The entry point's command (its subshell outlives the warning its processes get)",
                  "(", "trap : USR1", command, ") &", "__mlexec_pid=$!", WAIT_FOR_COMMAND,
                  '[ -n "$__mlexec_stopped" ] && exit 143', 'exit "$__mlexec_code"', ""]
        return "\n".join(parts)
    nodes, per_node = ranks
    parts += [
        "",
        f"# The entry point's command as {nodes * per_node} processes ({nodes} nodes x {per_node}), one srun task",
        f"# each, running {job_dir.rank_script.name}. Rank 0 runs on the first host of the allocation;",
        f"# MASTER_PORT is derived from the job id ({MASTER_PORT_BASE} + job id % 10000).",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
        f"export MASTER_PORT=$(( {MASTER_PORT_BASE} + SLURM_JOB_ID % 10000 ))",
        f"rm -rf {shlex.quote(str(job_dir.first_failure))}  # left by an attempt Slurm requeued",
        "# The labeller ignores the signals: it ends with the last of the ranks' output.",
        f"{{ trap : USR1; {srun_line(job_dir, nodes, per_node)} 2>&1 | "
        f"{{ trap '' USR1 TERM; exec {LABEL_TO_RANK}; }}; "
        "exit \"${PIPESTATUS[0]}\"; } &",
        "__mlexec_pid=$!",
        WAIT_FOR_COMMAND,
        '[ -n "$__mlexec_stopped" ] && exit 143',
        "# The job ends with the exit code of the first rank that failed (srun's is the highest).",
        f"if [ -f {shlex.quote(str(job_dir.first_failure / 'rank'))} ]; then",
        f"    read -r _ __mlexec_code <{shlex.quote(str(job_dir.first_failure / 'rank'))}",
        "fi",
        'exit "$__mlexec_code"',
        "",
    ]
    return "\n".join(parts)
