"""The ``slurm`` backend: the entry point's command as a batch job on a Slurm cluster.

Before any run exists (:meth:`SlurmBackend.check`, then :meth:`prepare`): the
client commands are on PATH, the controller answers, the cluster accepts the
job's options (``sbatch --test-only``), the environment is built by the chosen
environment manager under ``<shared-dir>/envs`` and the project is copied to a
job folder under ``<shared-dir>/jobs``.  :meth:`submit` writes the batch
script and calls ``sbatch``; :class:`~mlexec_slurm.job.SlurmJob` follows it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

from attrs import field, frozen

from mlexec_core.errors import BackendError, UsageError
from mlexec_core.plugin.interfaces import Backend, PreparedEnvironment, RunPlan, RunRecord, SubmittedJob
from mlexec_core.project.model import EnvKind

from mlexec_slurm.cluster import SlurmClient
from mlexec_slurm.config import SlurmConfig, parse_config
from mlexec_slurm.job import TAG_CLUSTER, TAG_JOB_ID, TAG_PARTITION, SlurmJob, output_writer
from mlexec_slurm.resources import Applied, apply_resources
from mlexec_slurm.script import JobDir, batch_script, environment_lines, rank_script, srun_line

#: Set to keep job folders (working copy, script, output) after the run, for debugging.
KEEP_VAR = "MLEXEC_SLURM_KEEP_JOB_DIR"


@frozen
class Prepared:
    """What :meth:`SlurmBackend.prepare` made ready before the run exists."""

    client: SlurmClient
    cluster: str
    job_dir: JobDir
    environment: PreparedEnvironment | None
    #: Whether a submission has taken ``job_dir`` (a sweep submits many jobs from one prepare).
    claimed: list = field(factory=list, eq=False, repr=False)


_claim_lock = threading.Lock()


def job_tracking_uri(uri: str | None, cwd: Path | None = None) -> str | None:
    """The run's tracking URI as the job must see it: relative store paths made absolute
    (the job runs in its own folder)."""
    if not uri:
        return uri
    cwd = cwd or Path.cwd()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file:" + str((cwd / uri[len("file:"):]).resolve())
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return str((cwd / uri).resolve())
    return uri


class SlurmBackend(Backend):
    """A Slurm batch job per run, a job array per sweep (registered in :mod:`mlexec_slurm.plugin`,
    with the capabilities ``fan-out`` and ``command-in-script``: the command is written into the
    batch script, not passed as one argument, so no size limit applies to it)."""

    def parse_config(self, config: Mapping[str, Any], base_dir: Path) -> SlurmConfig:
        return parse_config(config, base_dir)

    def _config(self, plan: RunPlan) -> SlurmConfig:
        config = plan.backend_config
        if not isinstance(config, SlurmConfig):  # a plan made by hand (Python API, tests)
            config = parse_config(config or {}, Path.cwd())
        return config

    def _applied(self, plan: RunPlan) -> Applied:
        """The backend config with the run's resources written over it (mlexec_slurm.resources)."""
        return apply_resources(self._config(plan), plan.resources)

    def _warn(self, applied: Applied) -> None:
        for note in applied.notes:
            self.context.reporter.warning(note)

    def environment_root(self, plan: RunPlan) -> Path | None:
        return self._config(plan).env_root

    # -- before the run -----------------------------------------------------------------

    def _refuse_docker(self, plan: RunPlan) -> None:
        if plan.project.environment.kind is EnvKind.DOCKER:
            raise UsageError(
                "the slurm backend cannot run a docker_env project: Slurm clusters run containers through "
                "their own runtime (Apptainer/Singularity, Pyxis/enroot), not Docker",
                context=str(plan.project.mlproject or plan.work_dir),
                hint="use a python_env or conda_env for this project on Slurm, or run it with -b local/-b docker; "
                     "a container runtime for Slurm can be added as an environment manager whose launcher "
                     "wraps the command (see the mlexec-slurm README, 'Containers')")

    def check(self, plan: RunPlan) -> None:
        """Fast checks before anything is built or any run exists."""
        self._refuse_docker(plan)
        applied = self._applied(plan)
        self._warn(applied)  # once, before anything exists (a sweep checks its base plan once)
        config = applied.config
        client = SlurmClient()
        client.tool("sbatch")
        client.ping()
        with tempfile.TemporaryDirectory(prefix="mlexec-slurm-") as tmp:
            script = Path(tmp) / "test.sh"
            script.write_text("#!/bin/bash\ntrue\n")
            forecast = client.test_only(config.sbatch_options(self._job_name(plan)), script)
        if forecast:  # "Job 12 to start at ... in partition debug": the 12 is a test id, not the job's
            import re

            self.context.reporter.info("Slurm accepts the job: " + re.sub(r"^Job \d+ ", "", forecast))

    def prepare(self, plan: RunPlan, environment: PreparedEnvironment | None) -> Prepared:
        self._refuse_docker(plan)
        if environment is not None and environment.launcher is not None:
            raise BackendError(
                f"the {environment.name} environment starts commands through its own launcher, which a Slurm "
                "job cannot use", hint="use --env-manager local, virtualenv/uv or conda with the slurm backend")
        config = self._config(plan)
        client = SlurmClient()
        cluster = client.cluster_name()
        with self.context.reporter.status(f"Copying the project to {config.jobs_dir}"):
            job_dir = self._copy_project(plan, config)
        return Prepared(client, cluster, job_dir, environment)

    @staticmethod
    def _copy_project(plan: RunPlan, config: SlurmConfig) -> JobDir:
        """A new job folder with a working copy of the project, in the shared folder."""
        job_dir = JobDir.new(config.jobs_dir, plan.project.display_name)
        try:
            job_dir.copy_project(plan.work_dir, config.shared_dir)
        except OSError as exc:
            job_dir.remove()
            raise BackendError(f"cannot copy the project to the shared folder {job_dir.path}: {exc}",
                               hint="set shared-dir in the backend config to a writable folder the compute "
                                    "nodes see at the same path") from None
        return job_dir

    # -- the job ------------------------------------------------------------------------

    def _job_name(self, plan: RunPlan) -> str:
        return f"mlexec-{plan.project.display_name}"[:64].replace(" ", "-")

    def _job_env(self, config: SlurmConfig, run: RunRecord) -> dict[str, str]:
        env = dict(run.env)
        uri = config.tracking_uri or job_tracking_uri(env.get("MLFLOW_TRACKING_URI") or run.tracking_uri)
        if uri:
            env["MLFLOW_TRACKING_URI"] = uri
        return env

    def _script(self, plan: RunPlan, config: SlurmConfig, run: RunRecord, job_dir: JobDir,
                environment: PreparedEnvironment | None, options: list[str],
                ranks: tuple[int, int] | None = None) -> str:
        header = [
            f"mlexec run {run.run_id}: project {plan.project.display_name}, entry point {plan.entry_point.name}",
            f"submitted with: sbatch {' '.join(options)} {job_dir.script}",
        ]
        return batch_script(job_dir=job_dir, header=header,
                            env_lines=environment_lines(environment, self._job_env(config, run), config.env),
                            setup=config.setup, command=plan.command, ranks=ranks, requeue=_may_restart(plan))

    def _write_scripts(self, plan: RunPlan, config: SlurmConfig, run: RunRecord, job_dir: JobDir,
                       environment: PreparedEnvironment | None, options: list[str],
                       ranks: tuple[int, int] | None) -> None:
        """``job.sh``, and ``rank.sh`` for a run of many processes (owner-only: they may hold a
        tracking server's credentials)."""
        job_dir.script.write_text(self._script(plan, config, run, job_dir, environment, options, ranks))
        job_dir.script.chmod(0o700)
        if ranks is not None:
            job_dir.rank_script.write_text(rank_script(job_dir=job_dir, per_node=ranks[1], command=plan.command))
            job_dir.rank_script.chmod(0o700)

    def _options(self, plan: RunPlan, config: SlurmConfig, job_dir: JobDir) -> list[str]:
        return [*config.sbatch_options(self._job_name(plan)), *_restart_options(plan), f"--output={job_dir.output}",
                f"--chdir={job_dir.project}"]

    def checkpoint_dir(self, plan: RunPlan, run: RunRecord) -> str:
        """``<shared-dir>/checkpoints/<run id>``: every node sees it, every attempt of the run shares
        it (Slurm's requeues and mlexec's restarts); mlexec does not delete it."""
        folder = self._config(plan).shared_dir / "checkpoints" / run.run_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot make the run's checkpoint folder {folder}: {exc}",
                               hint="set shared-dir in the backend config to a writable folder the compute "
                                    "nodes see at the same path") from None
        return str(folder)

    def _job_dir(self, plan: RunPlan, config: SlurmConfig, prepared: Prepared) -> JobDir:
        """The prepared job folder for the first submission; a new copy for each later one (the
        children of a sweep, retries): every job removes its own folder when it ends."""
        with _claim_lock:
            first = not prepared.claimed
            prepared.claimed.append(True)
        return prepared.job_dir if first else self._copy_project(plan, config)

    def submit(self, plan: RunPlan, run: RunRecord, prepared: Prepared) -> SubmittedJob:
        applied = self._applied(plan)
        config = applied.config
        job_dir = self._job_dir(plan, config, prepared)
        options = self._options(plan, config, job_dir)
        try:
            self._write_scripts(plan, config, run, job_dir, prepared.environment, options, applied.ranks)
            job_id = prepared.client.submit(options, job_dir.script)
        except BaseException:
            job_dir.remove()
            raise
        partition = config.partition
        info = prepared.client.show_job(job_id) or {}
        partition = info.get("Partition") or partition or ""
        tags = {TAG_JOB_ID: job_id, TAG_CLUSTER: prepared.cluster, TAG_PARTITION: partition}
        where = f" on cluster {prepared.cluster}" if prepared.cluster else ""
        self.context.reporter.info(f"Submitted Slurm job {job_id}{where}, partition {partition or 'default'}")
        return SlurmJob(prepared.client, job_id, job_dir, self.context.reporter, tags, output_writer(run),
                        time_limit=config.time, mem=config.mem or config.mem_per_cpu,
                        run_time_limit=applied.time_limit, keep_job_dir=bool(os.environ.get(KEEP_VAR)),
                        max_restarts=plan.restarts.max_restarts)

    # -- a sweep as one job array (the record's "fan-out" capability) --------------------

    def submit_many(self, plan: RunPlan, children, prepared: Prepared, max_parallel: int) -> list[SubmittedJob]:
        """The children as one ``sbatch --array=0-N%P``: task i runs child i's own script."""
        from mlexec_slurm.array import (TAG_ARRAY_JOB_ID, TAG_ARRAY_TASK_ID, ArrayFolder, array_option,
                                        array_script)

        applied = self._applied(plan)  # the children carry the sweep's resources
        config = applied.config
        job_dir = self._job_dir(plan, config, prepared)
        folder = ArrayFolder(job_dir, len(children), keep=bool(os.environ.get(KEEP_VAR)))
        options = self._array_options(plan, config, job_dir, len(children), max_parallel)
        try:
            for index, (child_plan, run) in enumerate(children):
                task = folder.task(index)
                task.path.mkdir(parents=True, exist_ok=True)
                self._write_scripts(child_plan, config, run, task, prepared.environment, options, applied.ranks)
            folder.script.write_text(array_script(job_dir.path, [
                f"mlexec sweep: {len(children)} children of project {plan.project.display_name}, "
                f"entry point {plan.entry_point.name}",
                f"submitted with: sbatch {' '.join(options)} {folder.script}"]))
            array_id = prepared.client.submit(options, folder.script)
        except BaseException:
            job_dir.remove()
            raise
        prepared.client.watch_array(array_id)  # the tasks share one squeue of the array
        info = prepared.client.show_job(f"{array_id}_0") or {}
        partition = info.get("Partition") or config.partition or ""
        where = f" on cluster {prepared.cluster}" if prepared.cluster else ""
        self.context.reporter.info(f"Submitted Slurm job array {array_id} ({len(children)} tasks, "
                                   f"{array_option(len(children), max_parallel)[8:]}){where}, "
                                   f"partition {partition or 'default'}")
        jobs: list[SubmittedJob] = []
        for index, (child_plan, run) in enumerate(children):
            task_id = f"{array_id}_{index}"
            tags = {TAG_JOB_ID: task_id, TAG_ARRAY_JOB_ID: array_id, TAG_ARRAY_TASK_ID: str(index),
                    TAG_CLUSTER: prepared.cluster, TAG_PARTITION: partition}
            jobs.append(SlurmJob(prepared.client, task_id, folder.task(index), _Quiet(self.context.reporter),
                                 tags, output_writer(run), time_limit=config.time,
                                 mem=config.mem or config.mem_per_cpu,
                                 run_time_limit=child_plan.resources.time, keep_job_dir=folder.keep,
                                 max_restarts=plan.restarts.max_restarts))
        return jobs

    def _array_options(self, plan: RunPlan, config: SlurmConfig, job_dir: JobDir, count: int,
                       max_parallel: int) -> list[str]:
        from mlexec_slurm.array import array_option

        return [*config.sbatch_options(self._job_name(plan)), *_restart_options(plan), array_option(count, max_parallel),
                f"--output={job_dir.path / 'tasks' / '%a' / 'job.out'}", f"--chdir={job_dir.project}"]

    def dry_run_many(self, plan: RunPlan, children, max_parallel: int) -> dict[str, Any]:
        """The array's sbatch options and script (the resources' warnings are the base plan's
        :meth:`dry_run`'s, shown once)."""
        from mlexec_slurm.array import array_script

        applied = self._applied(plan)
        config = applied.config
        job_dir = JobDir(config.jobs_dir / "<time>-<project>-<id>")
        options = self._array_options(plan, config, job_dir, len(children), max_parallel)
        script = array_script(job_dir.path, [f"mlexec sweep: {len(children)} children, one task each"])
        command = f"sbatch --parsable {' '.join(options)} {job_dir.path / 'array.sh'}"
        return {"sbatch": command, "sbatch_options": options, "array_script": script,
                "warnings": list(applied.notes), "text": f"# {command}\n{script}"}

    def dry_run(self, plan: RunPlan) -> dict[str, Any]:
        """The sbatch options and the batch script, without contacting the cluster."""
        self._refuse_docker(plan)
        applied = self._applied(plan)
        self._warn(applied)
        config = applied.config
        job_dir = JobDir(config.jobs_dir / "<time>-<project>-<id>")
        from mlexec_core.plugin.interfaces import redact, tracking_uri

        placeholder = "<set when the run is created>"
        uri = redact(tracking_uri())
        run = RunRecord(run_id=placeholder, tracking_uri=uri,
                        env={"MLFLOW_RUN_ID": placeholder, "MLFLOW_EXPERIMENT_ID": placeholder,
                             "MLFLOW_TRACKING_URI": uri})
        options = self._options(plan, config, job_dir)
        environment = None
        if plan.env_manager and plan.env_manager != "local":
            environment = PreparedEnvironment(name=plan.env_manager, path_prepend=(
                f"{config.env_root}/<environment>/bin",))
        script = self._script(plan, config, run, job_dir, environment, options, applied.ranks)
        command = f"sbatch --parsable {' '.join(options)} {job_dir.script}"
        out = {
            "sbatch": command,
            "sbatch_options": options,
            "shared_dir": str(config.shared_dir),
            "environments": str(config.env_root),
            "batch_script": script,
            "warnings": list(applied.notes),
            "text": f"# {command}\n{script}",
        }
        if applied.ranks is not None:  # many processes: the srun step, and what each task runs
            nodes, per_node = applied.ranks
            ranks = rank_script(job_dir=job_dir, per_node=per_node, command=plan.command)
            out.update(srun=srun_line(job_dir, nodes, per_node), rank_script=ranks,
                       processes=nodes * per_node)
            out["text"] += f"\n# {job_dir.rank_script} (each of the {nodes * per_node} srun tasks)\n{ranks}"
        return out


def _may_restart(plan: RunPlan) -> bool:
    """Whether the run may be started again (``--max-restarts``, 3 unless the user said otherwise)."""
    return plan.restarts.max_restarts > 0


def _restart_options(plan: RunPlan) -> list[str]:
    """Slurm requeues the job itself (preempted, its node lost, ``scontrol requeue``), with the same job
    id, when the run may restart; every attempt appends to the one output file."""
    return ["--requeue" if _may_restart(plan) else "--no-requeue", "--open-mode=append"]


class _Quiet:
    """A task's reporter: the sweep's view shows each child; per-task pending and
    cancel lines (one per child) would drown it.  Warnings still show."""

    def __init__(self, reporter) -> None:
        self._reporter = reporter

    def info(self, message: str) -> None:
        pass

    def success(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        self._reporter.warning(message)

    def status(self, message: str):
        return self._reporter.status(message)
