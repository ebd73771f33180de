//! The operator as users deploy it: the images `scripts/image` builds, run with podman as
//! the kubelet would run deploy/'s Deployment, against a control plane of its own.
//!
//! What is taken from deploy/ (parsed, not copied): the RBAC, Namespace and
//! ServiceAccount (applied as they are), and from `deployment.yaml` the images, the
//! container's args, env (`fieldRef`s resolved as the kubelet does), volumes (each
//! `emptyDir` a fresh directory owned by `fsGroup`), user and group, read-only root
//! filesystem, dropped capabilities, no privilege escalation, memory limit, grace period,
//! probes, and the init container's command, which seeds the plugin volume.
//! The kubelet's part: a ServiceAccount token from the TokenRequest API with the CA and
//! namespace files at `/var/run/secrets/kubernetes.io/serviceaccount`, and
//! `KUBERNETES_SERVICE_HOST`/`_PORT` (the API server on loopback; `--network host`).
//!
//! One deviation: with host networking both replicas share the host's ports, so each
//! gets a free port in place of 8080 in `--http-addr` (only the port changes), and the
//! probes are asked on that port. Beyond deploy/: the plugin hot-loaded at the end (the
//! stamp test plugin) is first granted what `rekon rbac` prints for it, as an admin adding
//! a plugin would (deploy/'s RBAC covers the example plugins only). The images are built
//! with `scripts/image --profile debug`, the `rekon` the tests build.
//!
//! The test skips (printing `SKIPPED: container::…`) only when podman is missing or
//! cannot run a container here.

use crate::deploy::{
    EXAMPLES, apply, deploy_dir, docs, install_example_crds, kustomized, rekon_rbac,
};
use crate::operator::lease_holder;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use rekon_tests::controlplane::{ControlPlane, ControlPlaneOptions, TestNamespace, wait_until};
use rekon_tests::plugins;
use rekon_tests::process::{free_port, http_get};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cold starts compile every plugin (debug host on two shared cores): generous.
const WAIT: Duration = Duration::from_secs(180);
/// The base image `scripts/image` imports.
const BASE: &str = "localhost/debian:bookworm-slim";
/// Where the kubelet mounts a ServiceAccount's token, CA and namespace.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `podman` with the settings this machine needs (`REKON_PODMAN_ARGS`, default runc and
/// cgroupfs) and deploy/podman/containers.conf, as `scripts/image` runs it.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    let args = std::env::var("REKON_PODMAN_ARGS")
        .unwrap_or_else(|_| "--runtime runc --cgroup-manager=cgroupfs".into());
    cmd.args(args.split_whitespace());
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            deploy_dir().join("podman").join("containers.conf"),
        );
    }
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs podman; answers its stdout, or panics with its stderr.
fn podman_ok(args: &[&str]) -> String {
    let out = output(podman().args(args));
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers removed (`podman rm -f`) when dropped, also when the test fails.
#[derive(Default)]
struct Containers(Mutex<Vec<String>>);

impl Containers {
    fn add(&self, name: &str) {
        self.0.lock().unwrap().push(name.to_owned());
    }

    /// Whether the container is running.
    fn running(name: &str) -> bool {
        podman_ok(&["inspect", "--format", "{{.State.Running}}", name]) == "true"
    }

    /// The container's log, for failure messages.
    fn logs(name: &str) -> String {
        let out = output(podman().args(["logs", "--tail", "60", name]));
        format!(
            "--- podman logs {name} ---\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Removes containers left by earlier runs of this test whose process is gone (killed
/// before its [`Containers`] guard ran): they are named `rekon-it-PID-…`.
fn remove_stale_containers() {
    let names = podman_ok(&[
        "ps",
        "--all",
        "--format",
        "{{.Names}}",
        "--filter",
        "name=^rekon-it-",
    ]);
    for name in names.lines() {
        let pid = name.split('-').nth(2).unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = podman().args(["rm", "-f", "-t", "0", name]).output();
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = podman().args(["rm", "-f", "-t", "0", name]).output();
        }
    }
}

/// deploy/deployment.yaml, parsed.
fn deployment() -> Deployment {
    let path = deploy_dir().join("deployment.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `podman run` needs to run one of the pod's containers as the kubelet would.
struct PodSpec {
    namespace: String,
    user: i64,
    group: i64,
    fs_group: i64,
    grace: i64,
    init: Container,
    main: Container,
    /// The volumes (all `emptyDir`) by name.
    volumes: Vec<String>,
}

fn pod_spec() -> PodSpec {
    let d = deployment();
    let namespace = d
        .metadata
        .namespace
        .clone()
        .expect("the Deployment names its namespace");
    let spec = d.spec.template.spec.expect("a pod template");
    let sc = spec
        .security_context
        .clone()
        .expect("a pod securityContext");
    assert_eq!(sc.run_as_non_root, Some(true), "runAsNonRoot");
    let mut volumes = Vec::new();
    for v in spec.volumes.unwrap_or_default() {
        assert!(
            v.empty_dir.is_some(),
            "volume {} is not an emptyDir: the test knows only emptyDir",
            v.name
        );
        volumes.push(v.name);
    }
    let mut init = spec.init_containers.unwrap_or_default();
    assert_eq!(init.len(), 1, "one init container (the plugin seed)");
    let mut main = spec.containers;
    assert_eq!(main.len(), 1, "one container");
    PodSpec {
        namespace,
        user: sc.run_as_user.expect("runAsUser"),
        group: sc.run_as_group.expect("runAsGroup"),
        fs_group: sc.fs_group.expect("fsGroup"),
        grace: spec.termination_grace_period_seconds.unwrap_or(30),
        init: init.remove(0),
        main: main.remove(0),
        volumes,
    }
}

/// A Kubernetes memory quantity (`512Mi`, `64Mi`, `1Gi`, plain bytes) in bytes.
fn bytes_of(quantity: &str) -> u64 {
    let (digits, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("memory quantity {quantity:?}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("memory quantity {quantity:?}: unit {other:?} not handled"),
    }
}

/// The `podman run` flags for `c`'s securityContext, the pod's user and group, its
/// memory limit and volume mounts (`dirs`: the pod's volume directories by name).
fn run_flags(pod: &PodSpec, c: &Container, dirs: &[(String, PathBuf)]) -> Vec<String> {
    let mut flags = vec![
        "--network=host".to_owned(),
        format!("--user={}:{}", pod.user, pod.group),
        format!("--group-add={}", pod.fs_group),
    ];
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.read_only_root_filesystem == Some(true) {
        // As in Kubernetes: no tmpfs on /tmp, /run and /var/tmp either.
        flags.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if sc.allow_privilege_escalation == Some(false) {
        flags.push("--security-opt=no-new-privileges".into());
    }
    for cap in sc.capabilities.and_then(|c| c.drop).unwrap_or_default() {
        flags.push(format!("--cap-drop={cap}"));
    }
    if let Some(limit) = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    {
        flags.push(format!("--memory={}", bytes_of(&limit.0)));
    }
    for m in c.volume_mounts.clone().unwrap_or_default() {
        let dir = dirs
            .iter()
            .find(|(name, _)| *name == m.name)
            .unwrap_or_else(|| panic!("{} mounts volume {}, which the pod lacks", c.name, m.name));
        flags.push(format!("--volume={}:{}", dir.1.display(), m.mount_path));
    }
    flags
}

/// One replica: the pod's volumes, its HTTP port, its container.
struct Replica {
    name: String,
    port: u16,
    plugins: PathBuf,
    _volumes: tempfile::TempDir,
}

impl Replica {
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }
}

/// The probes of `c` (liveness, readiness, startup): their paths, each on the port named
/// `http` (checked).
fn probe_paths(c: &Container) -> Vec<String> {
    let ports = c.ports.clone().unwrap_or_default();
    [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
        .into_iter()
        .map(|p| {
            let get = p
                .as_ref()
                .and_then(|p| p.http_get.clone())
                .expect("every probe is an httpGet");
            let port = match &get.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                    ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(name))
                        .unwrap_or_else(|| panic!("probe port {name} is not a container port"))
                        .container_port
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
            };
            (port, get.path.expect("a probe path"))
        })
        .map(|(port, path)| {
            assert_eq!(
                Some(port),
                ports.first().map(|p| p.container_port),
                "probes ask the container port"
            );
            path
        })
        .collect()
}

/// Creates the replica's volumes, seeds the plugin volume with the init container and
/// starts the host container. `sa` is the directory mounted at [`SA_MOUNT`].
fn start_replica(
    pod: &PodSpec,
    containers: &Containers,
    name: &str,
    sa: &Path,
    api_port: u16,
) -> Replica {
    let volumes = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for v in &pod.volumes {
        let dir = volumes.path().join(v);
        std::fs::create_dir(&dir).unwrap();
        // emptyDir with fsGroup: owned by the group, writable by it.
        std::os::unix::fs::chown(&dir, Some(pod.user as u32), Some(pod.fs_group as u32)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
        dirs.push((v.clone(), dir));
    }
    std::fs::set_permissions(volumes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The init container: its image and command, run to completion.
    let init = &pod.init;
    let command = init.command.clone().expect("the init container's command");
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(run_flags(pod, init, &dirs));
    args.push(format!("--entrypoint={}", command[0]));
    args.push(init.image.clone().expect("an init image"));
    args.extend(command[1..].iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(&args);

    let main = &pod.main;
    let port = free_port();
    let container_port = main
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .expect("a container port")
        .container_port;
    let mut run_args = Vec::new();
    for a in main.args.clone().unwrap_or_default() {
        // The documented deviation: only the port of --http-addr changes.
        match a.strip_prefix("--http-addr=") {
            Some(addr) => {
                let (ip, p) = addr.rsplit_once(':').expect("--http-addr is IP:PORT");
                assert_eq!(
                    p,
                    container_port.to_string(),
                    "--http-addr serves the container port"
                );
                run_args.push(format!("--http-addr={ip}:{port}"));
            }
            None => run_args.push(a),
        }
    }
    let mut args = vec![
        "run".to_owned(),
        "--detach".to_owned(),
        format!("--name={name}"),
        format!("--stop-timeout={}", pod.grace),
        format!("--volume={}:{SA_MOUNT}:ro", sa.display()),
        "--env=KUBERNETES_SERVICE_HOST=127.0.0.1".to_owned(),
        format!("--env=KUBERNETES_SERVICE_PORT={api_port}"),
    ];
    for e in main.env.clone().unwrap_or_default() {
        let value = match (
            &e.value,
            e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.name" => name.to_owned(),
                "metadata.namespace" => pod.namespace.clone(),
                other => panic!("env {}: fieldRef {other} not handled", e.name),
            },
            (None, None) => panic!("env {}: neither a value nor a fieldRef", e.name),
        };
        args.push(format!("--env={}={value}", e.name));
    }
    args.extend(run_flags(pod, main, &dirs));
    args.push(main.image.clone().expect("an image"));
    args.extend(run_args);
    containers.add(name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(&args);
    let plugins = dirs
        .iter()
        .find(|(n, _)| n == "plugins")
        .expect("a volume named plugins")
        .1
        .clone();
    Replica {
        name: name.to_owned(),
        port,
        plugins,
        _volumes: volumes,
    }
}

/// The container's peak memory so far (cgroup v1 `memory.max_usage_in_bytes`, or v2
/// `memory.peak`), when the cgroup can be found.
fn peak_memory(name: &str) -> Option<u64> {
    let id = podman_ok(&["inspect", "--format", "{{.Id}}", name]);
    let pattern = format!("libpod-{id}");
    for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        for parent in ["libpod_parent", "machine.slice", ""] {
            for (leaf, file) in [
                (pattern.clone(), "memory.max_usage_in_bytes"),
                (format!("{pattern}.scope"), "memory.peak"),
                (pattern.clone(), "memory.peak"),
            ] {
                let path = Path::new(root).join(parent).join(&leaf).join(file);
                if let Ok(text) = std::fs::read_to_string(&path) {
                    return text.trim().parse().ok();
                }
            }
        }
    }
    None
}

/// Prints a container's peak memory so far against the Deployment's limit.
fn print_peak_memory(pod: &PodSpec, r: &Replica) {
    let limit = pod
        .main
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map_or("none".into(), |q| q.0.clone());
    match tokio::task::block_in_place(|| peak_memory(&r.name)) {
        Some(peak) => println!(
            "{}: peak memory so far {:.1} MiB (limit {limit})",
            r.name,
            peak as f64 / f64::from(1 << 20),
        ),
        None => println!("{}: peak memory not found in the cgroup fs", r.name),
    }
}

fn webapps(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("rekon.dev", "v1alpha1", "WebApp")),
    )
}

/// Why podman cannot run containers here, or `None` when it can (after building the
/// images with `scripts/image --profile debug`, which must then succeed).
fn podman_unusable() -> Option<String> {
    match podman().arg("--version").output() {
        Err(e) => {
            return Some(format!(
                "podman cannot be run ({e}); scripts/setup installs it"
            ));
        }
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "podman --version failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(_) => {}
    }
    let out = output(podman().arg("info"));
    if !out.status.success() {
        return Some(format!(
            "podman info failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let began = Instant::now();
    let out = output(
        Command::new(plugins::workspace().join("scripts/image"))
            .args(["--profile", "debug"])
            .env("CARGO_TARGET_DIR", plugins::target_dir()),
    );
    assert!(
        out.status.success(),
        "scripts/image --profile debug failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "scripts/image --profile debug: {:.1?}\n{}",
        began.elapsed(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // The base scripts/image made: a failure here is podman's, not the images'.
    let out = output(podman().args(["run", "--rm", "--network=host", BASE, "true"]));
    if !out.status.success() {
        return Some(format!(
            "podman run {BASE} true failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_in_containers_elects_converges_takes_over_on_stop_and_hot_loads() {
    crate::logs();
    let images = tokio::task::spawn_blocking(podman_unusable).await.unwrap();
    if let Some(reason) = images {
        // Straight to the process's stderr, past the test harness's capture, so the skip
        // shows in every run's output.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: container::deploy_in_containers_elects_converges_takes_over_on_stop_and_hot_loads \
             — podman cannot run containers on this machine: {reason}"
        );
        return;
    }
    let pod = pod_spec();
    let probes = probe_paths(&pod.main);

    // A control plane of its own: deploy/'s host watches every namespace, and deploy/'s
    // cluster-wide names (ClusterRole rekon, namespace rekon-system) are applied for real.
    let cp = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .unwrap();
    let admin = cp.client().await.unwrap();
    let api_port: u16 = cp
        .server_url()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the API server URL has a port");
    for object in kustomized() {
        if object["kind"] != "Deployment" {
            apply(&admin, &object, false).await.unwrap();
        }
    }
    install_example_crds(&admin).await;

    // What the kubelet mounts for the ServiceAccount.
    let sa_name = deployment()
        .spec
        .template
        .spec
        .and_then(|s| s.service_account_name)
        .unwrap_or_else(|| "default".into());
    let token = cp
        .service_account_token(&admin, &pod.namespace, &sa_name)
        .await
        .unwrap();
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), token).unwrap();
    std::fs::copy(cp.data_dir().join("pki/ca.crt"), sa.path().join("ca.crt")).unwrap();
    std::fs::write(sa.path().join("namespace"), &pod.namespace).unwrap();
    for f in ["token", "ca.crt", "namespace"] {
        std::fs::set_permissions(sa.path().join(f), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    std::fs::set_permissions(sa.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    tokio::task::block_in_place(remove_stale_containers);
    let containers = Containers::default();
    let prefix = format!("rekon-it-{}", std::process::id());
    let started = Instant::now();
    let (a, b) = tokio::task::block_in_place(|| {
        let a = start_replica(
            &pod,
            &containers,
            &format!("{prefix}-a"),
            sa.path(),
            api_port,
        );
        let b = start_replica(
            &pod,
            &containers,
            &format!("{prefix}-b"),
            sa.path(),
            api_port,
        );
        (a, b)
    });
    let logs = |r: &Replica| Containers::logs(&r.name);
    for r in [&a, &b] {
        let seeded: Vec<String> = std::fs::read_dir(&r.plugins)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut want: Vec<String> = EXAMPLES.iter().map(|c| format!("{c}.wasm")).collect();
        want.sort();
        let mut seeded = seeded;
        seeded.sort();
        assert_eq!(
            seeded, want,
            "the init container seeded the example plugins"
        );
    }

    // One leader.
    let leader = wait_until("a replica leads", WAIT, || async {
        for r in [&a, &b] {
            let running = tokio::task::block_in_place(|| Containers::running(&r.name));
            assert!(
                running,
                "{} exited before a leader was elected\n{}",
                r.name,
                logs(r)
            );
        }
        lease_holder(&admin, &pod.namespace).await.ok()?
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", logs(&a), logs(&b)));
    let (leader, standby) = if leader == a.name {
        (a, b)
    } else {
        assert_eq!(leader, b.name, "the Lease names a replica");
        (b, a)
    };
    println!("leader: {}", leader.name);

    // Probes answer on the container port, for the leader and the standby alike; the
    // leader is ready once it compiled and started every plugin (a cold artifact cache).
    for r in [&leader, &standby] {
        for path in &probes {
            wait_until(
                &format!("{} answers {path} with 200", r.name),
                WAIT,
                || async { (r.get(path)?.0 == 200).then_some(()) },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(r)));
        }
    }
    println!(
        "leader ready (cold start: every plugin compiled) {:.1?} after the containers started",
        started.elapsed()
    );
    print_peak_memory(&pod, &leader);

    // The leader, in-cluster, converges the sample WebApp.
    let sample =
        std::fs::read_to_string(plugins::workspace().join("plugins/webapp/samples/web.yaml"))
            .unwrap();
    let sample = docs(&sample).remove(0);
    let app_ns = sample["metadata"]["namespace"].as_str().unwrap().to_owned();
    let app_name = sample["metadata"]["name"].as_str().unwrap().to_owned();
    let apps = webapps(&admin, &app_ns);
    apps.patch(
        &app_name,
        &PatchParams::apply("rekon-it"),
        &Patch::Apply(&sample),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &app_ns);
    let replicas_of = |want: i32| {
        let deployments = deployments.clone();
        let app_name = app_name.clone();
        async move {
            let d = deployments.get_opt(&app_name).await.ok()??;
            (d.spec.replicas == Some(want)).then_some(())
        }
    };
    wait_until("the leader converges the sample WebApp", WAIT, || async {
        replicas_of(3).await?;
        Api::<Service>::namespaced(admin.clone(), &app_ns)
            .get_opt(&app_name)
            .await
            .ok()??;
        let w = apps.get(&app_name).await.ok()?;
        w.data.pointer("/status/conditions/0").map(|_| ())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&leader)));

    // SIGTERM (`podman stop`) of the leader: it exits cleanly and releases the Lease,
    // which a watch sees empty before the standby holds it.
    let holders = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let seen = holders.clone();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &pod.namespace);
    let watch = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(leases, watcher::Config::default()));
        while let Some(Ok(event)) = events.next().await {
            if let watcher::Event::Apply(l) | watcher::Event::InitApply(l) = event {
                seen.lock().unwrap().push(
                    l.spec
                        .and_then(|s| s.holder_identity)
                        .filter(|h| !h.is_empty()),
                );
            }
        }
    });
    wait_until("the watch sees the leader hold the Lease", WAIT, || async {
        (holders.lock().unwrap().last().cloned().flatten().as_deref() == Some(leader.name.as_str()))
            .then_some(())
    })
    .await
    .unwrap();
    let stop = Instant::now();
    tokio::task::block_in_place(|| podman_ok(&["stop", &leader.name]));
    let exit = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &leader.name]);
    println!(
        "podman stop {}: exit code {exit} after {:.1?}",
        leader.name,
        stop.elapsed()
    );
    assert_eq!(
        exit,
        "0",
        "the leader exits cleanly on SIGTERM\n{}",
        logs(&leader)
    );
    wait_until("the standby takes over", WAIT, || async {
        (lease_holder(&admin, &pod.namespace).await.ok()?.as_deref() == Some(standby.name.as_str()))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&standby)));
    println!("takeover {:.1?} after podman stop", stop.elapsed());
    let sequence = holders.lock().unwrap().clone();
    watch.abort();
    let released = sequence
        .iter()
        .position(|h| h.as_deref() == Some(leader.name.as_str()))
        .and_then(|i| {
            sequence[i..]
                .iter()
                .position(Option::is_none)
                .map(|j| i + j)
        });
    let taken = sequence
        .iter()
        .rposition(|h| h.as_deref() == Some(standby.name.as_str()));
    assert!(
        matches!((released, taken), (Some(r), Some(t)) if r < t),
        "the Lease was released before the standby took it: holders seen {sequence:?}"
    );

    // The new leader reconciles: a changed spec reaches the Deployment.
    apps.patch(
        &app_name,
        &PatchParams::apply("rekon-it"),
        &Patch::Apply(json!({
            "apiVersion": sample["apiVersion"], "kind": "WebApp",
            "metadata": { "name": app_name, "namespace": app_ns },
            "spec": { "image": sample["spec"]["image"], "replicas": 2, "port": sample["spec"]["port"] },
        })),
    )
    .await
    .unwrap();
    wait_until("the new leader scales the Deployment to 2", WAIT, || {
        replicas_of(2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&standby)));

    print_peak_memory(&pod, &standby);

    // A plugin copied into the running container's plugin volume is hot-loaded. As an
    // admin would, grant it what `rekon rbac` prints for it first (deploy/'s RBAC covers
    // the example plugins only), and wait until the authorizer has the grant.
    let name = format!("{}-stamp", pod.main.name);
    let grant = rekon_rbac(
        &["stamp-plugin"],
        &[
            "--name",
            &name,
            "--namespace",
            &pod.namespace,
            "--service-account",
            &sa_name,
        ],
    );
    for object in docs(&grant) {
        apply(&admin, &object, false).await.unwrap();
    }
    let user = format!("system:serviceaccount:{}:{sa_name}", pod.namespace);
    wait_until("the ServiceAccount may update configmaps/status", WAIT, || async {
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {
                "user": user,
                "resourceAttributes": { "verb": "update", "resource": "configmaps", "subresource": "status" },
            },
        }))
        .unwrap();
        let answer = Api::<SubjectAccessReview>::all(admin.clone())
            .create(&PostParams::default(), &review)
            .await
            .ok()?;
        answer.status.filter(|s| s.allowed).map(|_| ())
    })
    .await
    .unwrap();
    let stamp = plugins::path("stamp-plugin");
    tokio::task::block_in_place(|| {
        podman_ok(&[
            "cp",
            stamp.to_str().unwrap(),
            &format!("{}:/var/lib/rekon/plugins/stamp.wasm", standby.name),
        ])
    });
    let ns = TestNamespace::create(&admin, "container").await.unwrap();
    let cms: Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": "hot", "labels": { "rekon.dev/stamp": "true" } },
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait_until(
        "the hot-loaded stamp plugin stamps a ConfigMap",
        WAIT,
        || async { cms.get_opt("hot-stamp").await.ok()? },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&standby)));
    println!("whole run: {:.1?}", started.elapsed());
    drop(containers);
}
