#!/usr/bin/env python3
"""Runs the bqforward container image as users run it: scripts/check-image.sh builds the image,
then runs this with podman configured for the machine.

The BigQuery emulator runs in a second container on a podman network of the two; bqforward
runs with what the ECS aggregator task definition (deploy/ecs/aggregator.json) gives it: its
command, environment, read-only root filesystem and stop timeout, and a named volume at the
image's VOLUME. Real clients on the host (tests/clients/forward_send.py with acks, PyPI
fluent-logger) send through the published ports; rows are read back over tabledata.list.
Prints one line per check and the time of each phase; stops at the first failure, printing
the containers' logs, and exits 1.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
TASK_DEFINITION = ROOT / "deploy" / "ecs" / "aggregator.json"
SCHEMA = ROOT / "deploy" / "terraform" / "modules" / "bigquery" / "schema" / "events.json"
PROJECT = "check-project"
DATASET = "logs"
EMULATOR_PORT = 9050
FORWARD_PORT = 24224
METRICS_PORT = 24231
VOLUME_PATH = "/var/lib/bqforward"
NONROOT_UID = 65532

# A fluentd aggregator's own config, mounted where fluentd's image reads it. Only auth_method
# none (the emulator takes no credentials) and endpoint are bqforward's.
MOUNTED_CONFIG = """\
<source>
  @type forward
  port 24224
  bind 0.0.0.0
</source>

<filter app.**>
  @type record_transformer
  <record>
    via mounted fluent.conf
  </record>
</filter>

<match app.**>
  @type bigquery_insert
  auth_method none
  endpoint "#{ENV['BIGQUERY_ENDPOINT']}"
  project check-project
  dataset logs
  table app
  fetch_schema true
  ignore_unknown_values true
  <inject>
    time_key time
    tag_key tag
  </inject>
  <buffer>
    @type file
    path /var/lib/bqforward/app
    flush_interval 1s
  </buffer>
</match>
"""


class Failed(Exception):
    pass


def check(ok, what, detail=""):
    if not ok:
        raise Failed(f"{what}{': ' + detail if detail else ''}")
    print(f"  ok    {what}", flush=True)


def info(what):
    print(f"  info  {what}", flush=True)


def podman(*args, check_exit=True, timeout=120):
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check_exit and done.returncode != 0:
        raise Failed(f"podman {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-800:]}")
    return done


def wait_for(condition, seconds, what, step=0.25):
    """Polls `condition` until it returns a true value; that value, or Failed after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {seconds}s")
        time.sleep(step)


def host_port(container, port):
    """The 127.0.0.1 port podman published for the container's `port`."""
    out = podman("port", container, f"{port}/tcp").stdout.strip()
    return int(out.rsplit(":", 1)[1])


def http(port, method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


class Emulator:
    """bigquery-emulator in a container of the runtime base, the binary mounted read-only."""

    def __init__(self, name, base, binary, network, created):
        self.name = name
        created.append(name)
        podman("run", "-d", "--name", name, "--network", network, "--read-only",
               "-p", f"127.0.0.1::{EMULATOR_PORT}",
               "-v", f"{binary.resolve()}:/usr/local/bin/bigquery-emulator:ro",
               "--entrypoint", "/usr/local/bin/bigquery-emulator", base,
               "--host", "0.0.0.0", "--port", str(EMULATOR_PORT))
        self.port = host_port(name, EMULATOR_PORT)
        wait_for(lambda: self.call("GET", "/_emulator/health")[0] == 200, 30, "the emulator answers")
        self.endpoint = f"http://{name}:{EMULATOR_PORT}"

    def call(self, method, path, body=None):
        status, text = http(self.port, method, path, body)
        return status, (json.loads(text) if text else None)

    def api(self, method, path, body=None):
        status, answer = self.call(method, f"/bigquery/v2/projects/{PROJECT}{path}", body)
        if status != 200:
            raise Failed(f"emulator {method} {path}: {status} {answer}")
        return answer

    def create_table(self, table, extra_fields=()):
        """A table as deploy/terraform/modules/bigquery makes it: its schema, partitioned by
        day on `time`, clustered on `tag`."""
        fields = json.loads(SCHEMA.read_text()) + list(extra_fields)
        self.api("POST", f"/datasets/{DATASET}/tables", {
            "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": table},
            "schema": {"fields": fields},
            "timePartitioning": {"type": "DAY", "field": "time"},
            "clustering": {"fields": ["tag"]},
        })

    def faults(self, **settings):
        status, answer = self.call("POST", "/_emulator/faults", settings)
        if status != 200:
            raise Failed(f"emulator faults {settings}: {status} {answer}")

    def rows(self, table):
        """Every row of `table` as a dict, read with tabledata.list."""
        names = [f["name"] for f in self.api("GET", f"/datasets/{DATASET}/tables/{table}")["schema"]["fields"]]
        out, token = [], None
        while True:
            query = "?maxResults=10000" + (f"&pageToken={token}" if token else "")
            page = self.api("GET", f"/datasets/{DATASET}/tables/{table}/data{query}")
            for row in page.get("rows", []):
                out.append({n: cell.get("v") for n, cell in zip(names, row["f"])})
            token = page.get("pageToken")
            if not token:
                return out


def seqs_by_tag(rows):
    seen = collections.defaultdict(collections.Counter)
    for row in rows:
        seen[row["tag"]][int(row["seq"])] += 1
    return seen


def expect_rows(emulator, table, expected, seconds=60):
    """Waits until every tag in `expected` (tag: events sent with seq 0..n-1, acked or emitted
    without error) has its rows, then checks each seq is there exactly once; returns the rows."""
    def complete():
        rows = emulator.rows(table)
        seen = seqs_by_tag(rows)
        return rows if all(len(seen[tag]) >= n for tag, n in expected.items()) else None
    try:
        rows = wait_for(complete, seconds, "rows", step=0.5)
    except Failed:
        seen = seqs_by_tag(emulator.rows(table))
        have = {tag: f"{len(seen[tag])} of {n}" for tag, n in expected.items()}
        raise Failed(f"{table}: rows not complete within {seconds}s: {have}")
    seen = seqs_by_tag(rows)
    for tag, n in expected.items():
        counts = seen[tag]
        check(set(counts) == set(range(n)) and all(c == 1 for c in counts.values()),
              f"{table}: the {n} events of {tag} are there, each once",
              f"{len(counts)} distinct, {sum(counts.values())} rows")
    return rows


class Bqforward:
    """The image in a container: read-only root, a named volume at the VOLUME, ports published
    on 127.0.0.1, on the emulator's network."""

    def __init__(self, name, image, network, volume, env, command, stop_timeout, mounts=(),
                 created=None):
        self.name = name
        self.stop_timeout = stop_timeout
        args = ["run", "-d", "--name", name, "--network", network,
                # ECS readonlyRootFilesystem: nothing writable but the volume (podman would add
                # tmpfs on /tmp and /run without --read-only-tmpfs=false).
                "--read-only", "--read-only-tmpfs=false",
                "-v", f"{volume}:{VOLUME_PATH}", "--stop-timeout", str(stop_timeout),
                "-p", f"127.0.0.1::{FORWARD_PORT}", "-p", f"127.0.0.1::{METRICS_PORT}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for mount in mounts:
            args += ["-v", mount]
        started = time.monotonic()
        podman(*args, image, *command)
        if created is not None:
            created.append(name)
        self.healthy_after = self.wait_healthy(started)

    def wait_healthy(self, started):
        """Seconds until the image's HEALTHCHECK passes (podman healthcheck run: there is no
        systemd timer here to run it)."""
        def healthy():
            if self.state()["Status"] != "running":
                raise Failed(f"{self.name} stopped: {self.state()}")
            return podman("healthcheck", "run", self.name, check_exit=False).returncode == 0
        wait_for(healthy, 60, f"{self.name} healthy")
        status = podman("inspect", "--format", "{{.State.Health.Status}}", self.name).stdout.strip()
        check(status == "healthy", f"{self.name}: HEALTHCHECK healthy after {time.monotonic() - started:.1f}s")
        return time.monotonic() - started

    def state(self):
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def port(self, port=FORWARD_PORT):
        return host_port(self.name, port)

    def start(self):
        started = time.monotonic()
        podman("start", self.name)
        return self.wait_healthy(started)

    def kill(self):
        podman("kill", self.name)
        wait_for(lambda: self.state()["Status"] == "exited", 30, f"{self.name} exited after SIGKILL")
        return self.state()["ExitCode"]

    def stop(self):
        """`podman stop -t STOPTIMEOUT`: SIGTERM, SIGKILL after the timeout. (exit code, seconds)."""
        started = time.monotonic()
        podman("stop", "-t", str(self.stop_timeout), self.name, timeout=self.stop_timeout + 60)
        return self.state()["ExitCode"], time.monotonic() - started

    def metric(self, name):
        status, text = http(self.port(METRICS_PORT), "GET", "/metrics")
        if status != 200:
            raise Failed(f"{self.name} /metrics: {status}")
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + "{") or line.startswith(name + " ")]
        return sum(values)


def forward_send(port, tag, events, mode="packed", chunk=100, extra=()):
    """tests/clients/forward_send.py over one connection with acks: returns the events acked."""
    done = subprocess.run([sys.executable, str(CLIENTS / "forward_send.py"), "--port", str(port),
                           "--mode", mode, "--events", str(events), "--chunk", str(chunk), "--ack",
                           "--tag", tag, *extra], capture_output=True, text=True, timeout=120)
    check(done.returncode == 0, f"forward_send.py {mode} {tag} exits 0", done.stderr[-400:])
    summary = json.loads(done.stdout)
    check(summary == {"sent": events, "acked": events},
          f"{tag}: {events} events sent as {mode} with acks, all acked", f"{summary}")
    return events


def fluent_logger_send(port, tag, label, count):
    """The PyPI fluent-logger client, as an application logs (Message mode, no acks)."""
    done = subprocess.run([sys.executable, str(CLIENTS / "fluent_logger_send.py"), "--port", str(port),
                           "--tag", tag, "--label", label, "--count", str(count), "--nanosecond"],
                          capture_output=True, text=True, timeout=60)
    check(done.returncode == 0, f"fluent-logger sends {count} events as {tag}.{label}", done.stderr[-400:])
    return count


def aggregator_task():
    """Command, environment and stop timeout of bqforward in the ECS aggregator task definition."""
    td = json.loads(TASK_DEFINITION.read_text())
    c = next(c for c in td["containerDefinitions"] if c["name"] == "bqforward")
    env = {e["name"]: e["value"] for e in c.get("environment", [])}
    check(c.get("readonlyRootFilesystem") is True, "the task definition asks for a read-only root filesystem")
    return c["command"], env, c["stopTimeout"]


class Phases:
    def __init__(self):
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, title):
        now = time.monotonic()
        if self.last != self.started:
            print(f"  ({now - self.last:.1f}s)", flush=True)
        self.last = now
        print(f"\n{title}", flush=True)


def run(args, names, phase):
    command, task_env, stop_timeout = aggregator_task()
    podman("network", "create", names["network"])
    names["networks"].append(names["network"])

    phase("emulator")
    emulator = Emulator(names["emulator"], args.base, Path(args.emulator), names["network"],
                        names["containers"])
    emulator.api("POST", "/datasets", {"datasetReference": {"projectId": PROJECT, "datasetId": DATASET}})
    emulator.create_table(task_env.get("BIGQUERY_TABLE", "events"))
    emulator.create_table("app", [{"name": "via", "type": "STRING"}])
    info(f"{emulator.endpoint} ({args.emulator}) with {DATASET}.events and {DATASET}.app")

    phase("image")
    shell = podman("run", "--rm", "--entrypoint", "/bin/sh", args.image, "-c", "true", check_exit=False)
    check(shell.returncode != 0, "no shell in the image (/bin/sh does not run)", shell.stderr[-200:])
    version = podman("run", "--rm", args.image, "--version").stdout.strip()
    check(version.startswith("bqforward "), f"`podman run IMAGE --version`: {version}")

    phase(f"default config, environment and command of {TASK_DEFINITION.relative_to(ROOT)}")
    table = task_env.get("BIGQUERY_TABLE", "events")
    env = dict(task_env, BIGQUERY_PROJECT=PROJECT, BIGQUERY_DATASET=DATASET,
               BIGQUERY_ENDPOINT=emulator.endpoint, BIGQUERY_AUTH_METHOD="none")
    podman("volume", "create", names["volume"])
    names["volumes"].append(names["volume"])
    bq = Bqforward(names["bqforward"], args.image, names["network"], names["volume"], env, command,
                   stop_timeout, created=names["containers"])
    pid = bq.state()["Pid"]
    uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
    check(uids == [str(NONROOT_UID)] * 2, f"bqforward runs as uid {NONROOT_UID}", f"{uids}")
    readonly = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", bq.name).stdout.strip()
    check(readonly == "true", "root filesystem read-only")
    mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", names["volume"]).stdout.strip()
    owner = os.stat(mountpoint).st_uid
    check(owner == NONROOT_UID, f"the named volume at {VOLUME_PATH} is owned by {owner}, from the image")
    port = bq.port()
    sent = {}
    sent["image.packed"] = forward_send(port, "image.packed", 3000, "packed", 100)
    sent["image.compressed"] = forward_send(port, "image.compressed", 2000, "compressed", 250,
                                            ["--gzip-members", "2"])
    sent["image.message"] = forward_send(port, "image.message", 300, "message", 50)
    sent["image.fluent-logger"] = fluent_logger_send(port, "image", "fluent-logger", 200)
    expect_rows(emulator, table, sent)

    phase("podman kill with acked events only in the file buffer, then podman start")
    emulator.faults(error_503_rate=1.0)
    sent["image.killed"] = forward_send(port, "image.killed", 2000, "packed", 100)
    wait_for(lambda: emulator.call("GET", "/_emulator/stats")[1]["faults_503"] > 0, 30,
             "bqforward tries to insert while BigQuery answers 503")
    check(seqs_by_tag(emulator.rows(table))["image.killed"] == {}, "BigQuery (503) has none of them")
    code = bq.kill()
    check(code == 137, f"podman kill: exit code {code} (SIGKILL)")
    after = bq.start()
    buffered = bq.metric("fluentd_output_status_buffer_total_bytes")
    check(buffered > 0, f"restarted (healthy after {after:.1f}s) with {buffered:.0f} bytes in its file buffer")

    phase(f"podman stop -t {stop_timeout} (ECS stopTimeout) while BigQuery answers 503: buffer kept")
    sent["image.stopped"] = forward_send(bq.port(), "image.stopped", 500, "forward", 50)
    code, seconds = bq.stop()
    check(code == 0 and seconds < stop_timeout,
          f"SIGTERM: exit code {code} after {seconds:.1f}s, within the stop timeout {stop_timeout}s")
    seen = seqs_by_tag(emulator.rows(table))
    check(seen["image.killed"] == {} and seen["image.stopped"] == {}, "BigQuery still has none of them")

    phase("BigQuery back, podman start: the buffer kept across SIGKILL and SIGTERM is delivered")
    emulator.call("DELETE", "/_emulator/faults")
    bq.start()
    expect_rows(emulator, table, sent)
    check(len(emulator.rows(table)) == sum(sent.values()),
          f"{table}: {sum(sent.values())} rows in all, none duplicated")

    phase(f"podman stop -t {stop_timeout} with inserts in flight (BigQuery answering in 3s): buffers flushed")
    emulator.faults(latency_ms=3000)
    sent["image.flushed"] = forward_send(bq.port(), "image.flushed", 1000, "packed", 100)
    landed = len(seqs_by_tag(emulator.rows(table))["image.flushed"])
    check(landed < sent["image.flushed"], f"at SIGTERM BigQuery has {landed} of them")
    code, seconds = bq.stop()
    check(code == 0 and seconds < stop_timeout,
          f"SIGTERM: exit code {code} after {seconds:.1f}s, within the stop timeout {stop_timeout}s")
    emulator.call("DELETE", "/_emulator/faults")
    expect_rows(emulator, table, {"image.flushed": sent["image.flushed"]}, seconds=5)
    podman("rm", bq.name)
    names["containers"].remove(bq.name)

    phase("a fluentd config mounted at /fluentd/etc/fluent.conf")
    config = Path(args.work) / "fluent.conf"
    config.write_text(MOUNTED_CONFIG)
    config.chmod(0o644)
    mount = f"{config.resolve()}:/fluentd/etc/fluent.conf:ro"
    checked = podman("run", "--rm", "--read-only", "-v", mount, "-e", f"BIGQUERY_ENDPOINT={emulator.endpoint}",
                     args.image, "check", check_exit=False)
    check(checked.returncode == 0 and "bigquery_insert" in checked.stdout + checked.stderr,
          "`podman run -v fluent.conf:/fluentd/etc/fluent.conf IMAGE check` accepts it",
          (checked.stdout + checked.stderr)[-400:])
    podman("volume", "create", names["volume2"])
    names["volumes"].append(names["volume2"])
    mounted = Bqforward(names["mounted"], args.image, names["network"], names["volume2"],
                        {"BIGQUERY_ENDPOINT": emulator.endpoint}, [], stop_timeout, [mount],
                        created=names["containers"])
    port = mounted.port()
    app = {"app.mounted": forward_send(port, "app.mounted", 2000, "compressed", 200),
           "app.fluent-logger": fluent_logger_send(port, "app", "fluent-logger", 100)}
    rows = expect_rows(emulator, "app", app)
    check(all(r["via"] == "mounted fluent.conf" for r in rows), "every row went through its record_transformer")
    code, seconds = mounted.stop()
    check(code == 0 and seconds < stop_timeout, f"SIGTERM: exit code {code} after {seconds:.1f}s")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--base", required=True, help="runtime base image, to run the emulator in")
    p.add_argument("--emulator", required=True, help="bigquery-emulator binary")
    p.add_argument("--work", default=str(ROOT / "target" / "check-image"))
    args = p.parse_args()
    run_id = f"{os.getpid()}"
    names = {"network": f"bqforward-check-{run_id}", "emulator": f"bqforward-check-emulator-{run_id}",
             "bqforward": f"bqforward-check-{run_id}", "mounted": f"bqforward-check-mounted-{run_id}",
             "volume": f"bqforward-check-buffer-{run_id}", "volume2": f"bqforward-check-mounted-buffer-{run_id}",
             "containers": [], "volumes": [], "networks": []}
    phase = Phases()
    try:
        run(args, names, phase)
        phase("done")
        return 0
    except (Failed, subprocess.TimeoutExpired) as err:
        print(f"  FAIL  {err}", flush=True)
        for name in names["containers"]:
            print(f"\n--- podman logs --tail 40 {name}")
            logs = podman("logs", "--tail", "40", name, check_exit=False)
            print(logs.stdout + logs.stderr)
        return 1
    finally:
        for name in names["containers"]:
            podman("rm", "-f", "-t", "0", name, check_exit=False)
        for name in names["volumes"]:
            podman("volume", "rm", "-f", name, check_exit=False)
        for name in names["networks"]:
            podman("network", "rm", "-f", name, check_exit=False)
        print(f"  ({time.monotonic() - phase.started:.1f}s in all)")


if __name__ == "__main__":
    sys.exit(main())
