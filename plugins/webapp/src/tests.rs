//! Native unit tests of the WebApp logic.

use rekon_sdk::k8s_openapi::api::apps::v1::Deployment;
use rekon_sdk::k8s_openapi::api::core::v1::Service;
use rekon_sdk::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rekon_sdk::testing::{self, Obj, assert_condition};
use rekon_sdk::{Gvk, Mapping, Output, Plugin, Request};
use serde_json::json;

use super::*;

fn webapp(replicas: i32) -> Obj {
    testing::object::<WebApp>("web")
        .ns("shop")
        .uid("uid-web")
        .rv("41")
        .generation(2)
        .spec(json!({ "image": "nginx:1.27", "replicas": replicas, "port": 8080 }))
}

fn deployment_with_ready(app: &Obj, ready: i32) -> Obj {
    testing::object::<Deployment>("web")
        .ns("shop")
        .owned_by(app)
        .status(json!({ "replicas": 3, "readyReplicas": ready }))
}

fn reconcile(req: Request) -> Output {
    WebAppPlugin::reconcile(req).expect("reconcile succeeds")
}

#[test]
fn a_new_webapp_gets_a_deployment_and_a_service_in_that_order() {
    let out = reconcile(testing::request(webapp(3)));
    assert_eq!(
        testing::summary(&out),
        "  apply apps/v1 Deployment shop/web\n  apply v1 Service shop/web\n  update-status rekon.dev/v1alpha1 WebApp shop/web\n"
    );
    assert!(!out.prunes() && out.requeue().is_none() && out.events().is_empty());
}

#[test]
fn the_deployment_runs_the_image_on_the_port_with_the_labels() {
    let out = reconcile(testing::request(webapp(3)));
    let d = out.applied_named::<Deployment>("web");
    assert_eq!(d.metadata.namespace.as_deref(), Some("shop"));
    let labels = d.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "web");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "rekon");
    assert_eq!(
        d.metadata.owner_references, None,
        "the host adds owner references"
    );
    assert_eq!(d.spec.replicas, Some(3));
    let selector = d.spec.selector.match_labels.unwrap();
    assert_eq!(
        selector.into_iter().collect::<Vec<_>>(),
        [("app.kubernetes.io/name".to_owned(), "web".to_owned())]
    );
    assert_eq!(d.spec.template.metadata.unwrap().labels, Some(labels));
    let pod = d.spec.template.spec.unwrap();
    let [container] = pod.containers.as_slice() else {
        panic!("one container: {:?}", pod.containers)
    };
    assert_eq!(
        (container.name.as_str(), container.image.as_deref()),
        ("web", Some("nginx:1.27"))
    );
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 8080);
}

#[test]
fn the_service_selects_the_pods_and_forwards_the_port() {
    let out = reconcile(testing::request(webapp(3)));
    let s = out.applied_named::<Service>("web").spec.unwrap();
    assert_eq!(s.selector.unwrap()["app.kubernetes.io/name"], "web");
    let ports = s.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (ports[0].port, ports[0].target_port.clone()),
        (8080, Some(IntOrString::Int(8080)))
    );
}

#[test]
fn omitted_replicas_and_port_default_to_one_and_80() {
    let app = testing::object::<WebApp>("web")
        .ns("shop")
        .spec(json!({ "image": "nginx" }));
    let out = reconcile(testing::request(&app));
    let d = out.applied_named::<Deployment>("web");
    assert_eq!(d.spec.replicas, Some(1));
    assert_eq!(
        d.spec.template.spec.unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap()[0]
            .container_port,
        80
    );
}

#[test]
fn status_copies_ready_replicas_from_the_owned_deployment() {
    let app = webapp(3);
    let out = reconcile(testing::request(&app).with_related(deployment_with_ready(&app, 2)));
    assert_eq!(
        out.status_updates(),
        [&json!({
            "apiVersion": "rekon.dev/v1alpha1", "kind": "WebApp",
            "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "41", "uid": "uid-web" },
            "status": { "readyReplicas": 2 },
        })]
    );
}

#[test]
fn without_a_deployment_nothing_is_ready() {
    let out = reconcile(testing::request(webapp(3)));
    assert_eq!(out.status_updates()[0]["status"]["readyReplicas"], 0);
    let ready = assert_condition(&out, "Ready", false, "Progressing");
    assert_eq!(ready.message, "0/3 replicas ready");
}

#[test]
fn fewer_ready_replicas_than_wanted_is_progressing() {
    let app = webapp(3);
    let out = reconcile(testing::request(&app).with_related(deployment_with_ready(&app, 2)));
    assert_condition(&out, "Ready", false, "Progressing");
}

#[test]
fn enough_ready_replicas_make_it_ready() {
    let app = webapp(3);
    let out = reconcile(testing::request(&app).with_related(deployment_with_ready(&app, 3)));
    let ready = assert_condition(&out, "Ready", true, "Available");
    assert_eq!(ready.message, "3/3 replicas ready");
}

#[test]
fn a_deployment_of_another_name_does_not_count() {
    let app = webapp(1);
    let other = testing::object::<Deployment>("web-old")
        .ns("shop")
        .status(json!({ "readyReplicas": 5 }));
    let out = reconcile(testing::request(&app).with_related(&other));
    assert_eq!(out.status_updates()[0]["status"]["readyReplicas"], 0);
}

#[test]
fn the_written_status_carries_the_webapp_generation_as_observed_generation() {
    let app = webapp(3).generation(7);
    let req = testing::request(&app).with_related(deployment_with_ready(&app, 3));
    let out = reconcile(req.clone());
    let status = testing::FakeHost::new()
        .now("2026-01-01T00:00:00Z")
        .run(|| testing::written_status(&req, &out))
        .unwrap();
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(
        status["conditions"],
        json!([{
            "type": "Ready", "status": "True", "reason": "Available", "message": "3/3 replicas ready",
            "observedGeneration": 7, "lastTransitionTime": "2026-01-01T00:00:00Z",
        }])
    );
}

#[test]
fn a_webapp_without_an_image_is_a_permanent_error() {
    let app = testing::object::<WebApp>("web")
        .ns("shop")
        .spec(json!({ "replicas": 2 }));
    let err = WebAppPlugin::reconcile(testing::request(&app)).unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.message().contains("WebApp shop/web") && err.message().contains("image"),
        "{err}"
    );
}

#[test]
fn metadata_owns_deployments_and_services_and_resyncs_every_five_minutes() {
    let m = WebAppPlugin::metadata();
    assert_eq!(
        (m.name.as_str(), m.primary.clone()),
        ("webapp", Gvk::new("rekon.dev", "v1alpha1", "WebApp"))
    );
    let watched: Vec<_> = m
        .watches
        .iter()
        .map(|w| (w.kind.to_string(), w.mapping.clone()))
        .collect();
    assert_eq!(
        watched,
        [
            ("apps/v1 Deployment".to_owned(), Mapping::OwnerReference),
            ("v1 Service".to_owned(), Mapping::OwnerReference)
        ]
    );
    assert_eq!(
        m.writes,
        [
            Gvk::new("apps", "v1", "Deployment"),
            Gvk::new("", "v1", "Service")
        ]
    );
    assert_eq!(
        (m.reads.len(), m.resync, m.finalizer),
        (0, Some(Duration::from_secs(300)), None)
    );
}
