//! The rekon demo: a local control plane, `rekon run` with the example plugins, sample
//! resources, and what the host does with them, printed as it happens.
//!
//! Run through `scripts/demo`, which builds this program, then the plugins it runs
//! (`rekon-demo --plugins` lists them) and nothing else, with cargo's progress.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use rekon_tests::controlplane::{ControlPlane, ControlPlaneOptions, install_crd, wait_until};
use rekon_tests::plugins;
use rekon_tests::process::{RekonProcess, RunOptions, http_get};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The plugin crates the demo runs; `scripts/demo` builds exactly these.
const PLUGINS: &[&str] = &["webapp", "nodepool", "netdefaults"];

fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rekon.dev", "v1alpha1", kind));
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn docs(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(plugins::workspace().join(path)).expect("CRD file");
    text.split("\n---")
        .filter(|d| d.trim().len() > 3)
        .map(str::to_owned)
        .collect()
}

fn show_webapp(app: &DynamicObject, d: Option<&Deployment>, s: Option<&Service>) {
    let st = &app.data["status"];
    let ready = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    println!(
        "  WebApp {}: generation {}, status readyReplicas={} Ready={} ({}), observedGeneration={}",
        app.metadata.name.as_deref().unwrap_or("?"),
        app.metadata.generation.unwrap_or(0),
        st["readyReplicas"],
        ready["status"],
        ready["message"].as_str().unwrap_or("-"),
        ready["observedGeneration"],
    );
    if let Some(d) = d {
        let owner = d.metadata.owner_references.as_ref().and_then(|o| o.first());
        println!(
            "    Deployment {}: replicas={:?}, image={}, owned by {} {}",
            d.metadata.name.as_deref().unwrap_or("?"),
            d.spec.replicas,
            d.spec
                .template
                .spec
                .as_ref()
                .map_or("?", |p| p.containers[0].image.as_deref().unwrap_or("?")),
            owner.map_or("-", |o| o.kind.as_str()),
            owner.map_or("-", |o| o.name.as_str()),
        );
    }
    if let Some(s) = s {
        let ports: Vec<i32> = s
            .spec
            .iter()
            .flat_map(|sp| sp.ports.iter().flatten())
            .map(|p| p.port)
            .collect();
        println!(
            "    Service {}: ports {ports:?}",
            s.metadata.name.as_deref().unwrap_or("?")
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--plugins") {
        println!("{}", PLUGINS.join("\n"));
        return Ok(());
    }
    // Built by scripts/demo before anything starts; the demo never builds plugins itself.
    let built = plugins::release_dir();
    for name in PLUGINS {
        let wasm = plugins::component_in(&built, name);
        anyhow::ensure!(
            wasm.is_file(),
            "{} is missing: run scripts/demo, which builds the demo's plugins first \
             (cargo build --release --target wasm32-wasip2 -p {})",
            wasm.display(),
            PLUGINS.join(" -p ")
        );
    }
    println!(
        "== starting a local control plane (etcd + kube-apiserver + GC, built from source on first run)"
    );
    let cp = ControlPlane::start(ControlPlaneOptions::default()).await?;
    println!(
        "   ready in {:.1}s at {}",
        cp.startup_time().as_secs_f64(),
        cp.server_url()
    );
    let client = cp.client().await?;
    for path in ["plugins/webapp/crd.yaml", "plugins/nodepool/crd.yaml"] {
        for doc in docs(path) {
            install_crd(&client, doc).await?;
        }
    }
    println!("   CRDs installed: WebApp, NodePool, NodeReport");

    let dir = tempfile::tempdir()?;
    for name in PLUGINS {
        std::fs::copy(
            plugins::component_in(&built, name),
            dir.path().join(format!("{name}.wasm")),
        )?;
    }
    let mut options = RunOptions::new(cp.kubeconfig_path(), dir.path(), "rekon-demo");
    options.log_filter = "info,rekon_host::controller::store=warn";
    options.inherit_output = true;
    let mut rekon = RekonProcess::start(options);
    let port = rekon.port();
    println!(
        "\n== rekon run --plugins {} --http-addr 127.0.0.1:{port} (its logs are interleaved below)",
        dir.path().display()
    );

    wait_until("/readyz", WAIT, || async {
        (http_get(port, "/readyz")?.0 == 200).then_some(())
    })
    .await?;
    println!("   GET /readyz: 200 (plugins loaded, caches synced)");

    let apps = api(&client, "WebApp");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let sample: DynamicObject = serde_yaml::from_str(&std::fs::read_to_string(
        plugins::workspace().join("plugins/webapp/samples/web.yaml"),
    )?)?;
    println!(
        "\n== kubectl apply -f plugins/webapp/samples/web.yaml  (WebApp web: nginx, 3 replicas)"
    );
    apps.create(&PostParams::default(), &sample).await?;
    let app = wait_until("the WebApp's status", WAIT, || async {
        let a = apps.get("web").await.ok()?;
        a.data["status"]["conditions"].is_array().then_some(a)
    })
    .await?;
    let d = wait_until("the Deployment", WAIT, || async {
        deployments.get_opt("web").await.ok()?
    })
    .await?;
    let s = wait_until("the Service", WAIT, || async {
        services.get_opt("web").await.ok()?
    })
    .await?;
    show_webapp(&app, Some(&d), Some(&s));
    println!(
        "   (no kubelet or Deployment controller runs here, so no replica ever becomes ready)"
    );

    println!("\n== scale the WebApp to 5 replicas");
    apps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await?;
    let d = wait_until("the Deployment follows", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        (d.spec.replicas == Some(5)).then_some(d)
    })
    .await?;
    let app = wait_until("observedGeneration catches up", WAIT, || async {
        let a = apps.get("web").await.ok()?;
        let g = a.metadata.generation?;
        let c = a.data["status"]["conditions"].as_array()?.first()?.clone();
        (c["observedGeneration"] == json!(g)).then_some(a)
    })
    .await?;
    show_webapp(&app, Some(&d), None);

    println!(
        "\n== a NodePool and its NodeReports (multi-source: status counts healthy reports by label)"
    );
    let pools = api(&client, "NodePool");
    let reports = api(&client, "NodeReport");
    let pool: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "rekon.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": "gpu"}, "spec": {"minHealthy": 2}}),
    )?;
    pools.create(&PostParams::default(), &pool).await?;
    for (name, healthy) in [("node-a", true), ("node-b", false), ("node-c", true)] {
        let r: DynamicObject = serde_json::from_value(
            json!({"apiVersion": "rekon.dev/v1alpha1", "kind": "NodeReport",
            "metadata": {"name": name, "labels": {"rekon.dev/pool": "gpu"}}, "spec": {"healthy": healthy}}),
        )?;
        reports.create(&PostParams::default(), &r).await?;
        println!("   NodeReport {name}: healthy={healthy}");
    }
    let p = wait_until("the pool's status", WAIT, || async {
        let p = pools.get("gpu").await.ok()?;
        (p.data["status"]["total"] == json!(3)).then_some(p)
    })
    .await?;
    println!(
        "  NodePool gpu: healthy={} total={} Healthy={} ({})",
        p.data["status"]["healthy"],
        p.data["status"]["total"],
        p.data["status"]["conditions"][0]["status"],
        p.data["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap_or("-")
    );

    println!(
        "\n== label Namespace team-a rekon.dev/defaults=enabled (a decorator: no CRD of its own)"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team-a",
                "labels": {"rekon.dev/defaults": "enabled"}}}))?,
        )
        .await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "team-a");
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "team-a");
    let (p, q) = wait_until("the defaults", WAIT, || async {
        let p = policies.get_opt("default-deny-ingress").await.ok()??;
        let q = quotas.get_opt("default").await.ok()??;
        Some((p, q))
    })
    .await?;
    println!(
        "   NetworkPolicy {} (policyTypes {:?}) and ResourceQuota {} (hard {:?})",
        p.metadata.name.as_deref().unwrap_or("?"),
        p.spec
            .as_ref()
            .and_then(|s| s.policy_types.clone())
            .unwrap_or_default(),
        q.metadata.name.as_deref().unwrap_or("?"),
        q.spec
            .as_ref()
            .and_then(|s| s.hard.as_ref())
            .map(|h| h.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    println!("== remove the label: the defaults go");
    namespaces
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"rekon.dev/defaults": null}}})),
        )
        .await?;
    wait_until("the defaults are removed", WAIT, || async {
        let p = policies.get_opt("default-deny-ingress").await.ok()?;
        let q = quotas.get_opt("default").await.ok()?;
        (p.is_none() && q.is_none()).then_some(())
    })
    .await?;
    println!("   NetworkPolicy and ResourceQuota in team-a are gone");

    println!("\n== delete the WebApp: Kubernetes garbage-collects the children rekon owned to it");
    apps.delete("web", &DeleteParams::default()).await?;
    wait_until("the children are collected", WAIT, || async {
        let d = deployments.get_opt("web").await.ok()?;
        let s = services.get_opt("web").await.ok()?;
        (d.is_none() && s.is_none()).then_some(())
    })
    .await?;
    println!("   Deployment web and Service web are gone");
    println!("\n== GET /metrics (a few lines)");
    if let Some((_, body)) = http_get(port, "/metrics") {
        for line in body.lines().filter(|l| {
            l.starts_with("reconcile_total{")
                || l.starts_with("rekon_cache_objects{")
                || l.starts_with("workqueue_adds_total{")
        }) {
            println!("   {line}");
        }
    }
    println!("\n== done: stopping rekon (SIGTERM) and the control plane");
    rekon.terminate();
    let status = tokio::task::spawn_blocking(move || rekon.wait()).await?;
    println!("   rekon exited: {status}");
    Ok(())
}
