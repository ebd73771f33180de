//! The rekon example of the multi-source pattern: a `NodePool` (`rekon.dev/v1alpha1`)
//! whose status counts the `NodeReport`s that name it with the label `rekon.dev/pool`,
//! and how many of them are healthy.
//!
//! The plugin never lists anything itself: it declares the watch with a label mapping,
//! and the host hands every reconcile the pool's current reports from its cache. A burst
//! of report changes collapses into few reconciles, each on the latest state.
//!
//! The CRDs (NodePool, NodeReport) are in `crd.yaml` beside this crate.

use rekon_sdk::{Condition, Error, Kind, Mapping, Metadata, Output, Plugin, Request};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The label a NodeReport names its pool with.
pub const POOL_LABEL: &str = "rekon.dev/pool";

/// A pool of nodes, healthy when at least `minHealthy` of its reports say so.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodePool {
    /// `spec`.
    #[serde(default)]
    pub spec: NodePoolSpec,
}

/// `NodePool.spec`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// Healthy reports needed for the pool to be Healthy (default 1).
    #[serde(default)]
    pub min_healthy: Option<u32>,
}

impl Kind for NodePool {
    const GROUP: &'static str = "rekon.dev";
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "NodePool";
}

/// One node's report about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// `spec`.
    #[serde(default)]
    pub spec: NodeReportSpec,
}

/// `NodeReport.spec`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReportSpec {
    /// Whether the node is healthy.
    #[serde(default)]
    pub healthy: bool,
}

impl Kind for NodeReport {
    const GROUP: &'static str = "rekon.dev";
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "NodeReport";
}

/// The plugin.
pub struct NodePoolPlugin;

impl Plugin for NodePoolPlugin {
    fn metadata() -> Metadata {
        Metadata::new::<NodePool>("nodepool", env!("CARGO_PKG_VERSION"))
            .watch::<NodeReport>(Mapping::Label(POOL_LABEL.into()))
    }

    fn reconcile(req: Request) -> Result<Output, Error> {
        let pool: NodePool = req.primary()?;
        let reports = req.related::<NodeReport>()?;
        let healthy = reports.iter().filter(|r| r.spec.healthy).count();
        let needed = pool.spec.min_healthy.unwrap_or(1) as usize;
        let ok = healthy >= needed;
        let message = format!(
            "{healthy} of {} reports healthy, {needed} needed",
            reports.len()
        );
        Ok(Output::new()
            .update_status_of(&req, json!({ "healthy": healthy, "total": reports.len() }))
            .condition(Condition::new(
                "Healthy",
                ok,
                if ok { "EnoughHealthy" } else { "TooFewHealthy" },
                message,
            )))
    }
}

rekon_sdk::export_plugin!(NodePoolPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use rekon_sdk::testing::{self, assert_condition};

    fn report(name: &str, healthy: bool) -> testing::Obj {
        testing::object::<NodeReport>(name)
            .ns("infra")
            .label(POOL_LABEL, "gpu")
            .spec(json!({ "healthy": healthy }))
    }

    fn pool() -> testing::Obj {
        testing::object::<NodePool>("gpu")
            .ns("infra")
            .generation(1)
            .spec(json!({ "minHealthy": 2 }))
    }

    #[test]
    fn status_counts_healthy_reports_among_those_naming_the_pool() {
        let req = testing::request(pool())
            .with_related(report("a", true))
            .with_related(report("b", false))
            .with_related(report("c", true));
        let out = NodePoolPlugin::reconcile(req.clone()).unwrap();
        let status = testing::written_status(&req, &out).expect("a status is written");
        assert_eq!(status["healthy"], 2);
        assert_eq!(status["total"], 3);
        assert_condition(&out, "Healthy", true, "EnoughHealthy");
    }

    #[test]
    fn a_pool_without_enough_healthy_reports_is_not_healthy() {
        let req = testing::request(pool()).with_related(report("a", true));
        let out = NodePoolPlugin::reconcile(req).unwrap();
        assert_condition(&out, "Healthy", false, "TooFewHealthy");
    }
}
