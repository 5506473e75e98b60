#!/usr/bin/env python3
"""Static checks of the Dockerfile, the ECS task definitions and the Terraform in deploy/.

Run by scripts/check-deploy.sh (which also runs checkov, hadolint and terraform fmt). Reads
the real sources it checks against: the CLI from src/main.rs (and the built binary's --help
when there is a current one), CI's cargo commands from scripts/test.sh, the workspace from
Cargo.toml. Prints one line per check; exits 1 if any failed.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# bqforward's own deadline at SIGTERM must fit in the container's stop timeout with this to spare
# (the last flush's requests, writing spills, process exit).
STOP_MARGIN_SECONDS = 5
ECS_MAX_STOP_TIMEOUT = 120
FORWARD_PORT = 24224
METRICS_PORT = 24231

failures = []
counts = {"ok": 0}


def check(ok, what, detail=""):
    if ok:
        counts["ok"] += 1
        print(f"  ok    {what}")
    else:
        failures.append(what)
        print(f"  FAIL  {what}{': ' + detail if detail else ''}")
    return ok


def section(title):
    print(f"\n{title}")


# --- the CLI, from its source -------------------------------------------------------------

def duration_seconds(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


class Cli:
    """Subcommands and long flags of `bqforward`, read from src/main.rs (clap derive)."""

    def __init__(self, main_rs):
        text = main_rs.read_text()
        enum = re.search(r"enum Command\s*\{(.*?)\n\}", text, re.S)
        body = enum.group(1) if enum else ""
        # Variants start a line at the enum's indentation: `    Run,` / `    Health {`.
        variants = re.findall(r"^    ([A-Z][A-Za-z0-9]*)\b", body, re.M)
        self.subcommands = {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}
        self.flags = set()
        for attrs, field in re.findall(r"#\[arg\(([^\]]*)\)\]\s*(?:///[^\n]*\s*)*(\w+):", text):
            long_name = re.search(r'long\s*=\s*"([^"]+)"', attrs)
            if long_name:
                self.flags.add("--" + long_name.group(1))
            elif re.search(r"\blong\b", attrs):
                self.flags.add("--" + field.replace("_", "-"))
            short = re.search(r"short\s*=\s*'(.)'", attrs)
            if short:
                self.flags.add("-" + short.group(1))
            elif re.search(r"\bshort\b", attrs):
                self.flags.add("-" + field[0])
        default = re.search(
            r'default_value\s*=\s*"([^"]+)"[^\]]*\]\s*(?:///[^\n]*\s*)*shutdown_timeout', text
        )
        self.default_shutdown = duration_seconds(default.group(1)) if default else None
        self.binary = self._current_binary(main_rs)

    @staticmethod
    def _current_binary(main_rs):
        """A built bqforward no older than the CLI source, to ask as well."""
        newest = max(p.stat().st_mtime for p in (ROOT / "src").rglob("*.rs"))
        for profile in ("release", "debug"):
            path = ROOT / "target" / profile / "bqforward"
            if path.exists() and path.stat().st_mtime >= newest:
                return path
        return None

    def help_of(self, subcommand):
        args = [str(self.binary)] + ([subcommand] if subcommand else []) + ["--help"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
        return done.returncode, done.stdout + done.stderr

    def check_args(self, args, where):
        """`args` as given to the bqforward binary: subcommand first, then flags."""
        sub = args[0] if args and not args[0].startswith("-") else None
        if sub is not None:
            check(sub in self.subcommands, f"{where}: subcommand `{sub}` is in the CLI (src/main.rs)",
                  f"known: {sorted(self.subcommands)}")
        for arg in args:
            if arg.startswith("-"):
                flag = arg.split("=", 1)[0]
                check(flag in self.flags, f"{where}: flag `{flag}` is in the CLI (src/main.rs)",
                      f"known: {sorted(self.flags)}")
        if self.binary:
            code, out = self.help_of(sub)
            check(code == 0, f"{where}: `{self.binary.relative_to(ROOT)} {sub or ''} --help` succeeds", out[-300:])
            for arg in args:
                if arg.startswith("--"):
                    flag = arg.split("=", 1)[0]
                    check(flag in out, f"{where}: the binary's --help lists `{flag}`")

    def shutdown_of(self, args):
        for i, arg in enumerate(args):
            if arg == "--shutdown-timeout" and i + 1 < len(args):
                return duration_seconds(args[i + 1])
            if arg.startswith("--shutdown-timeout="):
                return duration_seconds(arg.split("=", 1)[1])
        return self.default_shutdown


# --- the Dockerfile ------------------------------------------------------------------------

def dockerfile_instructions(path):
    """(line, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, buf, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


class DockerIgnore:
    """.dockerignore as Docker applies it: the last matching pattern wins, `!` re-includes,
    a pattern matching a directory matches everything under it."""

    def __init__(self, path):
        self.rules = []
        if path.exists():
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                pattern = line[1:] if negate else line
                self.rules.append((negate, self._regex(pattern.strip("/"))))

    @staticmethod
    def _regex(pattern):
        out, i = "", 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
                if i < len(pattern) and pattern[i] == "/":
                    i += 1
                continue
            out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
            i += 1
        return re.compile(out + "$")

    def excluded(self, rel):
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for negate, regex in self.rules:
            if any(regex.match(p) for p in prefixes):
                verdict = not negate
        return verdict


def tracked_files():
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in done.stdout.split("\0") if f]


def check_dockerfile(cli):
    section("Dockerfile")
    path = ROOT / "Dockerfile"
    instructions = dockerfile_instructions(path)
    ignore = DockerIgnore(ROOT / ".dockerignore")
    files = tracked_files()
    stages, stage, workdir, build_args = {}, None, {}, {}
    image = {"copied": set(), "env": {}, "volumes": [], "expose": set(), "user": None,
             "entrypoint": None, "cmd": None, "healthcheck": None}
    build_cmds, context, out_dirs = [], [], set()
    check_image = (ROOT / "scripts" / "check-image.sh").read_text()

    for line, word, args in instructions:
        where = f"Dockerfile:{line}"
        if word == "ARG" and stage is None:
            name, _, default = args.partition("=")
            build_args[name.strip()] = default.strip()
        elif word == "FROM":
            match = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            stage = match.group(2) or f"#{len(stages)}"
            base = match.group(1)
            variable = re.fullmatch(r"\$\{?(\w+)\}?", base)
            if variable:
                # A stage chosen by a build argument: its default and every value
                # scripts/check-image.sh passes must name an earlier stage.
                name = variable.group(1)
                values = {build_args.get(name)} | set(re.findall(rf"--build-arg {name}=(\S+)", check_image))
                for value in sorted(v or "" for v in values):
                    check(value in stages, f"{where}: {name}={value} names an earlier stage",
                          f"stages: {sorted(stages)}")
            elif base != "scratch" and base not in stages:
                check(":" in base and not base.endswith(":latest"), f"{where}: base image `{base}` has a pinned tag")
            stages[stage] = base
            image.update(copied=set(), env={}, volumes=[], expose=set(), user=None,
                         entrypoint=None, cmd=None, healthcheck=None)
        elif word == "WORKDIR":
            workdir[stage] = args
        elif word in ("COPY", "ADD"):
            check(word == "COPY", f"{where}: COPY rather than ADD")
            tokens = shlex.split(args)
            opts = [t for t in tokens if t.startswith("--")]
            srcs, dest = [t for t in tokens if not t.startswith("--")][:-1], tokens[-1]
            source_stage = next((o.split("=", 1)[1] for o in opts if o.startswith("--from=")), None)
            for src in srcs:
                if source_stage:
                    check(source_stage in stages, f"{where}: --from={source_stage} names an earlier stage")
                    image["copied"].add(dest if len(srcs) == 1 else dest.rstrip("/") + "/" + Path(src).name)
                    continue
                rel = src.rstrip("/").removeprefix("./")
                if rel.startswith("target/"):
                    # Made before the build, not in git: the prebuilt stage's binary tree.
                    check(not ignore.excluded(rel + "/usr/local/bin/bqforward"),
                          f"{where}: COPY source `{src}` is in the build context (.dockerignore)")
                    check(rel in check_image, f"{where}: scripts/check-image.sh lays out `{src}`")
                    out_dirs.add(("prebuilt", dest))
                    continue
                matched = [f for f in files if f == rel or f.startswith(rel + "/")] if rel != "." else files
                check(bool(matched), f"{where}: COPY source `{src}` exists in the repository")
                sent = [f for f in matched if not ignore.excluded(f)]
                check(bool(sent), f"{where}: COPY source `{src}` is in the build context (.dockerignore)")
                context.extend((f, dest, src) for f in sent)
                if len(srcs) == 1 and not dest.endswith("/") and (ROOT / rel).is_file():
                    image["copied"].add(dest)
                else:
                    image["copied"].update(dest.rstrip("/") + "/" + f[len(rel):].lstrip("/") for f in sent)
        elif word == "RUN":
            for part in re.split(r"&&|;", args):
                if re.match(r"\s*(cargo\s+build\b|scripts/build-deps\.sh)", part):
                    build_cmds.append(" ".join(part.split()))
                release = re.search(r"\bcp\s+\S*target/release/(\S+)\s", part)
                if release:
                    bins = re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text())
                    check(release.group(1) in bins, f"{where}: target/release/{release.group(1)} is a [[bin]] of Cargo.toml",
                          f"bins: {bins}")
                mkdir = re.match(r"\s*mkdir\s+-p\s+(.*)", part)
                if mkdir:
                    out_dirs.update((stage, d) for d in mkdir.group(1).split())
        elif word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                image["env"][key] = value
        elif word == "VOLUME":
            image["volumes"] = exec_form(args) or args.split()
        elif word == "EXPOSE":
            image["expose"].update(int(p.split("/")[0]) for p in args.split())
        elif word == "USER":
            image["user"] = args
        elif word in ("ENTRYPOINT", "CMD"):
            form = exec_form(args)
            check(form is not None, f"{where}: {word} uses the exec form (the runtime has no shell)")
            image[word.lower()] = form
        elif word == "HEALTHCHECK":
            cmd = re.search(r"\bCMD\s+(.*)$", args)
            form = exec_form(cmd.group(1)) if cmd else None
            check(form is not None, f"{where}: HEALTHCHECK CMD uses the exec form")
            image["healthcheck"] = form

    # The source stage compiles with CI's command; the prebuilt stage's tree is the source
    # stage's /out, laid out by scripts/check-image.sh.
    check(len(build_cmds) == 2 and build_cmds[0] == "scripts/build-deps.sh"
          and build_cmds[1].startswith("cargo build --release --locked"),
          "the source stage runs scripts/build-deps.sh, then `cargo build --release --locked`",
          f"found {build_cmds}")
    check("grep -o 'cargo build --release --locked" in check_image,
          "scripts/check-image.sh builds the prebuilt binary with the source stage's own command")
    source_dirs = {d.removeprefix("/out/") for s_, d in out_dirs if s_ != "prebuilt" and d.startswith("/out/")}
    prebuilt = next((d for s_, d in out_dirs if s_ == "prebuilt"), None)
    laid_out = {d.removeprefix("target/image/") for d in re.findall(r"target/image/\S+", check_image)
                if "/" in d.removeprefix("target/image/")}
    check(prebuilt == "/out/" and bool(source_dirs) and source_dirs <= laid_out,
          "scripts/check-image.sh lays out target/image/ as the source stage's /out",
          f"source stage makes {sorted(source_dirs)}, check-image.sh {sorted(laid_out)}")
    ci = (ROOT / "scripts" / "test.sh").read_text()
    check(re.search(r"^scripts/build-deps\.sh$", ci, re.M) is not None,
          "CI (scripts/test.sh) installs the build tools with the same scripts/build-deps.sh")
    ci_cargo = [l.strip() for l in ci.splitlines() if re.match(r"\s*cargo\s+(build|test|clippy)\b", l)]
    check(bool(ci_cargo) and all("--locked" in l for l in ci_cargo),
          "CI (scripts/test.sh) builds with --locked too, so a stale Cargo.lock fails CI before the image",
          f"{ci_cargo}")
    check_build_context(context)

    # The runtime stage.
    user = (image["user"] or "root").split(":")[0]
    check(user not in ("root", "0"), f"runtime user `{image['user']}` is not root")
    check({FORWARD_PORT, METRICS_PORT} <= image["expose"], f"EXPOSE {FORWARD_PORT} and {METRICS_PORT}")
    entry = image["entrypoint"] or []
    binary = entry[0] if entry else None
    check(binary == "bqforward" and "/usr/local/bin/bqforward" in image["copied"],
          "ENTRYPOINT is the bqforward binary copied to /usr/local/bin")
    if image["cmd"] is not None:
        cli.check_args(image["cmd"], "CMD")
    health = image["healthcheck"] or []
    check(health[:1] == ["bqforward"], "HEALTHCHECK runs bqforward", f"{health}")
    if health[:1] == ["bqforward"]:
        cli.check_args(health[1:], "HEALTHCHECK")
    config = image["env"].get("BQFORWARD_CONFIG")
    check(config in image["copied"], f"BQFORWARD_CONFIG={config} is a file the image copies")
    check(config == "/fluentd/etc/fluent.conf", "the default config is fluentd's /fluentd/etc/fluent.conf")
    check(any(p.startswith("/etc/bqforward/") for p in image["copied"]), "config lives in /etc/bqforward/")
    for copied in sorted(image["copied"]):
        if copied.endswith(".conf"):
            src = next((f for f, d, s in context if d == copied or copied.endswith("/" + Path(f).name)), None)
            if src:
                for include in re.findall(r"^\s*@include\s+(\S+)", (ROOT / src).read_text(), re.M):
                    check(include in image["copied"], f"{copied}: @include {include} is in the image")
    check(len(image["volumes"]) == 1, f"one VOLUME (the buffer), found {image['volumes']}")
    docker = {"volume": image["volumes"][0] if image["volumes"] else None, "copied": image["copied"],
              "files": {d: f for f, d, s in context if d.startswith("/")}, "config": config}
    check_image_configs(cli, docker)
    return docker


# Workload identity federation's credential configuration (the deployments' main path), as
# deploy/terraform/modules/aws-federation writes it; nothing connects during `bqforward check`.
DUMMY_CREDENTIAL_CONFIG = json.dumps({
    "type": "external_account",
    "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/bqforward-aws/providers/aws",
    "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
    "token_url": "https://sts.googleapis.com/v1/token",
    "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/bqforward@p.iam.gserviceaccount.com:generateAccessToken",
    "credential_source": {
        "environment_id": "aws1",
        "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
        "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
        "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
    },
})
# The fallback, a service-account key: `check` loads the key, so a real (test-only) one.
TEST_KEY = ROOT / "tests/fixtures/credentials/test-only-service-account.json"


def image_root(docker, tmp):
    """The image's config files under `tmp`, absolute paths inside them moved there too."""
    for dest, rel in docker["files"].items():
        target = Path(tmp + dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / rel).read_text()
        text = re.sub(r"(@include\s+)/", rf"\g<1>{tmp}/", text)
        text = text.replace(docker["volume"], tmp + docker["volume"])
        target.write_text(text)
    return Path(tmp)


def bqforward_check(cli, config, what):
    for credentials in ({"BIGQUERY_CREDENTIAL_CONFIG": DUMMY_CREDENTIAL_CONFIG},
                        {"BIGQUERY_JSON_KEY": TEST_KEY.read_text()}):
        env = {k: v for k, v in os.environ.items()
               if k not in ("BIGQUERY_JSON_KEY", "BIGQUERY_CREDENTIAL_CONFIG", "GOOGLE_APPLICATION_CREDENTIALS")}
        env.update(credentials, BIGQUERY_PROJECT="p")
        done = subprocess.run([str(cli.binary), "check", "-c", str(config)], capture_output=True,
                              text=True, timeout=60, env=env)
        check(done.returncode == 0, f"`bqforward check` accepts {what} with {next(iter(credentials))}",
              (done.stdout + done.stderr)[-400:])


def check_image_configs(cli, docker):
    """The image's default config, and the config ECS FireLens generates around ours, pass
    `bqforward check` (needs a current binary)."""
    if not cli.binary:
        print("  skip  no current target/{release,debug}/bqforward: configs not run through `bqforward check`")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = image_root(docker, tmp)
        env_dirs = {"BQFORWARD_BUFFER_DIR": f"{tmp}/buffer", "BQFORWARD_DEAD_LETTER_DIR": f"{tmp}/dead"}
        os.environ.update(env_dirs)
        bqforward_check(cli, root / docker["config"].lstrip("/"),
                        f"the image's default config ({docker['config']} and what it includes)")
        for path in sorted((ROOT / "deploy" / "ecs").glob("*.json")):
            for c in json.loads(path.read_text()).get("containerDefinitions", []):
                opts = c.get("firelensConfiguration", {}).get("options", {})
                if opts.get("config-file-value"):
                    # What the ECS agent writes to /fluentd/etc/fluent.conf for a fluentd router
                    # in awsvpc with enable-ecs-log-metadata false (amazon-ecs-agent,
                    # agent/taskresource/firelens/firelensconfig_unix.go).
                    generated = root / "firelens-generated.conf"
                    generated.write_text(
                        f"<source>\n    @type unix\n    path {tmp}/fluent.sock\n</source>\n\n"
                        f"<source>\n    @type forward\n    bind 127.0.0.1\n    port {FORWARD_PORT}\n</source>\n\n"
                        f"@include {tmp}{opts['config-file-value']}\n")
                    bqforward_check(cli, generated, f"the config FireLens generates for {path.name}")
        for key in env_dirs:
            os.environ.pop(key)


def check_build_context(context):
    """Lay out the build stage's COPY set alone and ask cargo whether it is a complete
    workspace whose Cargo.lock is current: what `cargo build --locked` needs in the image."""
    if shutil.which("cargo") is None:
        print("  skip  cargo not found: build-context workspace check")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for rel, dest, src in context:
            if dest.startswith("/"):
                continue  # runtime-stage files
            target = Path(tmp) / dest.rstrip("/").removeprefix("./")
            srcrel = src.rstrip("/").removeprefix("./")
            if rel != srcrel:
                target = target / rel[len(srcrel):].lstrip("/")
            elif dest.endswith("/"):
                target = target / Path(rel).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        done = subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1", "--quiet"],
            cwd=tmp, capture_output=True, text=True, timeout=300,
        )
        check(done.returncode == 0,
              "the build stage's files alone are a workspace that `cargo --locked` accepts",
              done.stderr.strip()[-400:])


# --- ECS task definitions ------------------------------------------------------------------

def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("environment", [])}


def is_bqforward(container):
    return "bqforward" in container.get("image", "").rsplit("/", 1)[-1].split(":")[0]


def check_task_definition(path, cli, docker):
    rel = path.relative_to(ROOT)
    section(f"{rel}")
    try:
        td = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        check(False, f"{rel} is JSON", str(err))
        return
    check(True, f"{rel} is JSON")
    for key in ("family", "containerDefinitions", "networkMode", "requiresCompatibilities", "cpu", "memory"):
        check(key in td, f"has `{key}`")
    containers = {c.get("name"): c for c in td.get("containerDefinitions", [])}
    volumes = {v.get("name") for v in td.get("volumes", [])}
    for name, c in containers.items():
        for key in ("name", "image", "essential", "logConfiguration"):
            check(key in c, f"{name}: has `{key}`")
        for dep in c.get("dependsOn", []):
            check(dep.get("containerName") in containers, f"{name}: dependsOn {dep.get('containerName')} exists")
        if "FARGATE" in td.get("requiresCompatibilities", []):
            check(c.get("logConfiguration", {}).get("logDriver") in ("awslogs", "awsfirelens", "splunk"),
                  f"{name}: log driver is one Fargate offers")

    routers = [n for n, c in containers.items() if is_bqforward(c)]
    check(bool(routers), "runs a bqforward container")
    for name in routers:
        check_bqforward_container(td, containers[name], cli, docker, volumes)
    for name, c in containers.items():
        driver = c.get("logConfiguration", {}).get("logDriver")
        if driver == "fluentd":
            check_fluentd_driver(td, name, c, containers, routers)
        elif driver == "awsfirelens":
            check_firelens_app(td, name, c, containers, docker)
    if path.name == "aggregator.json":
        check_aggregator(td, containers)


def check_bqforward_container(td, c, cli, docker, volumes):
    name = c["name"]
    args = c.get("command", [])
    cli.check_args(args, f"{name} command")
    hc = c.get("healthCheck", {}).get("command", [])
    check(hc[:2] == ["CMD", "bqforward"], f"{name}: healthCheck runs `bqforward` in exec form (no shell in the image)", f"{hc}")
    if hc[:2] == ["CMD", "bqforward"]:
        cli.check_args(hc[2:], f"{name} healthCheck")
    shutdown = cli.shutdown_of(args)
    stop = c.get("stopTimeout")
    check(shutdown is not None, f"{name}: shutdown timeout known ({shutdown}s)")
    if shutdown is not None:
        check(isinstance(stop, int) and shutdown + STOP_MARGIN_SECONDS <= stop <= ECS_MAX_STOP_TIMEOUT,
              f"{name}: stopTimeout {stop}s >= --shutdown-timeout {shutdown:g}s + {STOP_MARGIN_SECONDS}s and <= {ECS_MAX_STOP_TIMEOUT}s")
    mounts = {m.get("containerPath"): m for m in c.get("mountPoints", [])}
    buffer_mount = mounts.get(docker["volume"])
    check(buffer_mount is not None and buffer_mount.get("sourceVolume") in volumes,
          f"{name}: a task volume is mounted at the image's VOLUME {docker['volume']} (file buffer)")
    check(buffer_mount is not None and not buffer_mount.get("readOnly", False), f"{name}: the buffer volume is writable")
    check(c.get("logConfiguration", {}).get("logDriver") not in ("fluentd", "awsfirelens"),
          f"{name}: bqforward's own logs do not go through itself")
    check(c.get("restartPolicy", {}).get("enabled") is True,
          f"{name}: restartPolicy keeps the task (and its buffer volume) when bqforward restarts")
    secret_names = {s.get("name") for s in c.get("secrets", [])}
    federation = env_of(c).get("BIGQUERY_CREDENTIAL_CONFIG")
    check("BIGQUERY_JSON_KEY" in secret_names or federation is not None
          or env_of(c).get("BIGQUERY_AUTH_METHOD") in ("application_default", "compute_engine"),
          f"{name}: BigQuery credentials by federation (BIGQUERY_CREDENTIAL_CONFIG) or from a secret")
    check("BIGQUERY_JSON_KEY" not in env_of(c), f"{name}: no key in plain environment")
    if federation is not None:
        try:
            config = json.loads(federation)
        except ValueError:
            config = {}
        check(config.get("type") == "external_account" and "private_key" not in federation
              and config.get("credential_source", {}).get("environment_id") == "aws1",
              f"{name}: BIGQUERY_CREDENTIAL_CONFIG is an AWS external_account configuration (no key)")
    for s in c.get("secrets", []):
        check(re.match(r"arn:aws[\w-]*:(secretsmanager|ssm):", s.get("valueFrom", "")) is not None,
              f"{name}: secret {s.get('name')} is a Secrets Manager / SSM ARN")
    check(c.get("readonlyRootFilesystem") is True, f"{name}: read-only root filesystem")
    check("BIGQUERY_PROJECT" in env_of(c), f"{name}: BIGQUERY_PROJECT set")


def check_fluentd_driver(td, name, c, containers, routers):
    opts = c["logConfiguration"].get("options", {})
    address = opts.get("fluentd-address", "")
    # dockerd runs the log driver in the host's network namespace: a task ENI's localhost is
    # not the daemon's, and Fargate has no fluentd driver at all.
    check(td.get("networkMode") in ("host", "bridge"),
          f"{name}: fluentd log driver with networkMode {td.get('networkMode')} (dockerd connects from the host network)")
    check("FARGATE" not in td.get("requiresCompatibilities", []), f"{name}: fluentd log driver is not used on Fargate")
    match = re.fullmatch(r"(?:tcp://)?([\d.]+|localhost):(\d+)", address)
    check(match is not None, f"{name}: fluentd-address `{address}` is host:port")
    if match and routers:
        router = containers[routers[0]]
        env = env_of(router)
        check(match.group(1) in ("127.0.0.1", "localhost") and env.get("BQFORWARD_BIND", "0.0.0.0") in ("127.0.0.1", "0.0.0.0"),
              f"{name}: fluentd-address is on the host's loopback where bqforward listens")
        check(int(match.group(2)) == int(env.get("BQFORWARD_PORT", FORWARD_PORT)),
              f"{name}: fluentd-address port is bqforward's Forward port")
    check(opts.get("fluentd-async") == "true",
          f"{name}: fluentd-async true (the app neither blocks nor fails while bqforward restarts)")
    check(bool(opts.get("tag")), f"{name}: tag set (routes the app's logs)")
    check(opts.get("fluentd-sub-second-precision") == "true", f"{name}: sub-second timestamps")
    check_depends_healthy(name, c, routers)


def check_firelens_app(td, name, c, containers, docker):
    routers = [n for n, r in containers.items() if "firelensConfiguration" in r]
    check(len(routers) == 1, f"{name}: awsfirelens with one FireLens log router in the task")
    if not routers:
        return
    router = containers[routers[0]]
    fl = router["firelensConfiguration"]
    opts = fl.get("options", {})
    check(fl.get("type") == "fluentd", f"{routers[0]}: FireLens type fluentd (bqforward reads fluentd's config)")
    check(opts.get("enable-ecs-log-metadata") == "false",
          f"{routers[0]}: enable-ecs-log-metadata false (ECS would add a <filter>, which bqforward refuses)")
    check(opts.get("config-file-type") == "file" and opts.get("config-file-value") in docker["copied"],
          f"{routers[0]}: config-file-value {opts.get('config-file-value')} is a file the image copies")
    check(router.get("user") == "0", f"{routers[0]}: runs as root (FireLens creates its socket in a root-owned host directory)")
    check("@type" not in c["logConfiguration"].get("options", {}),
          f"{name}: no @type in awsfirelens options (the output lives in the config file)")
    check_depends_healthy(name, c, routers)


def check_depends_healthy(name, c, routers):
    deps = {d.get("containerName"): d.get("condition") for d in c.get("dependsOn", [])}
    check(any(deps.get(r) == "HEALTHY" for r in routers), f"{name}: dependsOn bqforward HEALTHY", f"{deps}")


def check_aggregator(td, containers):
    check(td.get("networkMode") == "awsvpc", "aggregator: awsvpc (one ENI per task, NLB targets by IP)")
    bq = next(c for c in containers.values() if is_bqforward(c))
    ports = {p.get("containerPort") for p in bq.get("portMappings", [])}
    check({FORWARD_PORT, METRICS_PORT} <= ports, f"aggregator: maps {FORWARD_PORT} and {METRICS_PORT}")
    metrics = containers.get("metrics", {})
    content = env_of(metrics).get("AOT_CONFIG_CONTENT")
    check(content == (ROOT / "deploy/otel/collector.yaml").read_text(),
          "aggregator: the metrics sidecar's AOT_CONFIG_CONTENT is deploy/otel/collector.yaml")
    check(f"127.0.0.1:{METRICS_PORT}" in (content or ""), "aggregator: the collector scrapes bqforward on the task's localhost")


# --- Terraform -------------------------------------------------------------------------------

def check_terraform():
    section("deploy/terraform")
    try:
        import hcl2
    except ImportError:
        check(False, "python-hcl2 importable")
        return
    files = sorted((ROOT / "deploy" / "terraform").rglob("*.tf"))
    check(bool(files), f"{len(files)} .tf files found")
    for path in files:
        rel = path.relative_to(ROOT)
        try:
            with path.open() as f:
                hcl2.load(f)
            check(True, f"{rel} parses (python-hcl2)")
        except Exception as err:  # the parser raises lark errors of several kinds
            check(False, f"{rel} parses (python-hcl2)", str(err).splitlines()[0][:300])
    main = (ROOT / "deploy/terraform/modules/aggregator/main.tf").read_text()
    check('["CMD", "bqforward", "health"]' in main, "aggregator module: healthCheck runs `bqforward health`")
    check("shutdown_timeout_seconds + 10" in main and '"--shutdown-timeout"' in main,
          "aggregator module: stopTimeout is --shutdown-timeout + 10 s")
    check('containerPath = "/var/lib/bqforward"' in main, "aggregator module: buffer volume at the image's VOLUME")


def check_skip_comments():
    section("checkov skip comments")
    for path in sorted(list((ROOT / "deploy").rglob("*")) + [ROOT / "Dockerfile"]):
        if not path.is_file() or path.suffix not in (".tf", "") and path.name != "Dockerfile":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = re.search(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", line)
            if match:
                check(len((match.group(2) or "").strip()) >= 20,
                      f"{path.relative_to(ROOT)}:{number}: skip of {match.group(1)} gives its reason")


def main():
    cli = Cli(ROOT / "src" / "main.rs")
    section("CLI (src/main.rs)")
    print(f"  subcommands {sorted(cli.subcommands)}, flags {sorted(cli.flags)}, "
          f"default --shutdown-timeout {cli.default_shutdown}s, binary "
          f"{cli.binary.relative_to(ROOT) if cli.binary else 'none current (source only)'}")
    docker = check_dockerfile(cli)
    for path in sorted((ROOT / "deploy" / "ecs").glob("*.json")):
        check_task_definition(path, cli, docker)
    check_terraform()
    check_skip_comments()
    print(f"\n{counts['ok']} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
