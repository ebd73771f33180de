//! `rekon dev` on a plugin crate made by `rekon new`: it starts the local control plane,
//! installs the crate's CRD, builds the plugin and runs the host (`/readyz` answering 200
//! only once that first build is loaded); an edit of the plugin's
//! source reaches the cluster with the same `rekon dev` process and the same control
//! plane; a broken edit leaves the running version running; Ctrl-C stops everything.
//!
//! The crate builds in the scaffold tests' target directory (`scaffold.rs`), so only the
//! first build of a run is cold.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use rekon_tests::binary::rekon;
use rekon_tests::controlplane::{TestNamespace, wait_until};
use rekon_tests::process::http_get;
use serde_json::json;

use crate::scaffold::{copy_lock, run, scaffold_target};

/// Starting the control plane, building it first if its sources changed (a cold Go build
/// takes 6–12 minutes on 2 cores).
const CONTROL_PLANE_WAIT: Duration = Duration::from_secs(20 * 60);
/// The first build of the plugin (cold: the SDK, serde and k8s-openapi with LTO, several
/// minutes on a loaded 2-core machine), then its load and first reconcile.
const FIRST_BUILD_WAIT: Duration = Duration::from_secs(15 * 60);
/// A rebuild after an edit (only the plugin crate and the LTO link), then the swap.
const REBUILD_WAIT: Duration = Duration::from_secs(6 * 60);
/// Ctrl-C to exit: the host's grace (5 s) and the control plane's shutdown.
const STOP_WAIT: Duration = Duration::from_secs(90);

/// `rekon dev` as a child process: its stdout lines collected, its stderr in a file;
/// killed when dropped.
struct Dev {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl Dev {
    fn start(dir: &Path, log: PathBuf, http_port: u16) -> Dev {
        let mut child = Command::new(rekon())
            .arg("dev")
            .arg(dir)
            .arg(format!("--http-addr=127.0.0.1:{http_port}"))
            .env("CARGO_TARGET_DIR", scaffold_target())
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("REKON_CONTROLPLANE_BIN")
            .env("REKON_LOG", "info,rekon_host::controller::store=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("rekon dev starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let pipe = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Dev { child, stdout, log }
    }

    /// The first stdout line starting with `prefix`, without it.
    fn line(&self, prefix: &str) -> Option<String> {
        let lines = self.stdout.lock().unwrap();
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What to show when a wait fails.
    fn report(&self) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        format!(
            "rekon dev's stdout:\n{}\nthe end of its stderr ({}):\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Fails the test at once, with the output so far, if `rekon dev` has exited.
    fn ensure_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("rekon dev exited ({status})\n{}", self.report());
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

async fn config_map_message(api: &Api<ConfigMap>, name: &str) -> Option<String> {
    let cm = api.get_opt(name).await.ok()??;
    cm.data?.get("message").cloned()
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("the plugin's source");
    assert!(
        text.contains(from),
        "the scaffold's {} no longer contains {from:?}; update this test's edit",
        file.display()
    );
    std::fs::write(file, text.replacen(from, to, 1)).expect("editing the plugin's source");
}

#[tokio::test(flavor = "multi_thread")]
async fn rekon_dev_rebuilds_an_edited_plugin_and_the_change_reaches_the_cluster_without_a_restart()
{
    crate::logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev-greeter");
    run(
        Command::new(rekon())
            .args([
                "new",
                "dev-greeter",
                "--kind",
                "example.dev/v1/Greeting",
                "--dir",
            ])
            .arg(&dir),
        "rekon new",
    );
    copy_lock(&dir);

    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut dev = Dev::start(&dir, tmp.path().join("rekon-dev.log"), http_port);
    let kubeconfig = wait_until(
        "rekon dev prints export KUBECONFIG=",
        CONTROL_PLANE_WAIT,
        || {
            dev.ensure_running();
            let line = dev.line("export KUBECONFIG=");
            async move { line }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    let cluster_pid: u32 = dev
        .line("rekon dev: control plane pid ")
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no control plane pid line\n{}", dev.report()));
    assert!(
        dev.line("rekon dev: installed CRDs: greetings.example.dev")
            .is_some(),
        "the crate's crd.yaml is installed\n{}",
        dev.report()
    );

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("the printed kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let ns = TestNamespace::create(&client, "dev").await.unwrap();
    let greetings: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns.name(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("example.dev", "v1", "Greeting")),
    );
    let primary: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.dev/v1", "kind": "Greeting",
        "metadata": {"name": "hi"}, "spec": {"message": "hello"},
    }))
    .unwrap();
    let uid = greetings
        .create(&PostParams::default(), &primary)
        .await
        .expect("creating a Greeting")
        .metadata
        .uid;
    // /readyz turns 200 only once the first build is loaded: an empty plugin directory
    // is not "every plugin loaded". The log is read after each answer, so a 200 that
    // came first shows as a log without the build.
    let built_when_ready = wait_until("/readyz answers 200", FIRST_BUILD_WAIT, || {
        dev.ensure_running();
        let answer = http_get(http_port, "/readyz").map(|(status, _)| status);
        let log = dev.log();
        async move {
            (answer == Some(200)).then(|| log.contains("rekon dev: built dev-greeter in"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    assert!(
        built_when_ready,
        "/readyz answered 200 before the plugin was built\n{}",
        dev.report()
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    wait_until(
        "the first build reconciles the Greeting",
        FIRST_BUILD_WAIT,
        || {
            dev.ensure_running();
            async {
                (config_map_message(&config_maps, "hi").await.as_deref() == Some("hello"))
                    .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));

    // An edit of the source: rebuilt, swapped in, every primary reconciled again.
    edit(
        &dir.join("src/lib.rs"),
        "primary.spec.message)",
        "format!(\"{} (edited)\", primary.spec.message))",
    );
    wait_until(
        "the edited plugin rewrites the ConfigMap",
        REBUILD_WAIT,
        || {
            dev.ensure_running();
            async {
                (config_map_message(&config_maps, "hi").await.as_deref() == Some("hello (edited)"))
                    .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    assert!(
        dev.running(),
        "the same rekon dev process\n{}",
        dev.report()
    );
    assert!(alive(cluster_pid), "the same control plane process");
    let now = greetings
        .get("hi")
        .await
        .expect("the Greeting is still there");
    assert_eq!(
        now.metadata.uid, uid,
        "the same cluster: the Greeting was never recreated"
    );

    // Broken edits: each build fails, the error is shown, the running version keeps
    // reconciling. Two in a row, so that whatever the first failure did to the running
    // plugin has been acted on by the host (it acts on a plugin file within its settle
    // time, 300 ms) before the second failure is reported and the primary changes.
    edit(&dir.join("src/lib.rs"), "(edited)\"", "(edited)\" +");
    let failures = |log: &str| log.matches("building dev-greeter failed").count();
    wait_until("rekon dev reports the failed build", REBUILD_WAIT, || {
        dev.ensure_running();
        let log = dev.log();
        async move { (failures(&log) == 1).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    let log = dev.log();
    assert!(
        log.contains("error: ") || log.contains("error["),
        "cargo's diagnostics are shown\n{}",
        dev.report()
    );
    edit(&dir.join("src/lib.rs"), "(edited)\" +", "(edited)\" + +");
    wait_until(
        "rekon dev reports the second failed build",
        REBUILD_WAIT,
        || {
            dev.ensure_running();
            let log = dev.log();
            async move { (failures(&log) == 2).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    greetings
        .patch(
            "hi",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"message": "bye"}})),
        )
        .await
        .unwrap();
    wait_until("the running version still reconciles", REBUILD_WAIT, || {
        dev.ensure_running();
        async {
            (config_map_message(&config_maps, "hi").await.as_deref() == Some("bye (edited)"))
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    assert!(
        dev.running(),
        "a failed build stops nothing\n{}",
        dev.report()
    );

    // Ctrl-C: the host, cargo and the control plane stop; rekon dev exits 0.
    let pid = dev.child.id();
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_until("rekon dev exits on Ctrl-C", STOP_WAIT, || {
        let status = dev.child.try_wait().expect("try_wait");
        async move { status }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dev.report()));
    assert!(status.success(), "{status}\n{}", dev.report());
    wait_until("the control plane is gone", STOP_WAIT, || async {
        (!alive(cluster_pid)).then_some(())
    })
    .await
    .unwrap();
    assert!(
        !Path::new(&kubeconfig).exists(),
        "the temporary cluster's data is removed"
    );
}
