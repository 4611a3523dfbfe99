//! The cluster the Kubernetes end-to-end tests run against: the real test cluster of
//! `AIRLOCK_TEST_CLUSTER` (`scripts/test-cluster up DIR`; `scripts/test` starts one for the run). Each test
//! gets a sandbox namespace of its own made as `deploy/base` makes `airlock-sandbox`, the services use
//! their ServiceAccounts' tokens (so the shipped RBAC is enforced), and jobs run the job image (busybox
//! plus our `airlock` and `airlock-emit`), pushed by digest to the cluster's loopback registry, publishing
//! their results to the test's NATS on the address pods reach the host on.
#![allow(dead_code)]

use std::path::PathBuf;

use airlock_test_support::cluster::{Sandbox, TestCluster};
use airlock_test_support::oci::{self, Pusher};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::common::{Kubeconfigs, Runtime, T, request};

/// The marker file content of the job image (`/etc/airlock-marker`), which only the image has.
pub const MARKER: &str = "only in the airlock job image";

/// The cluster under test, and one test's sandbox namespace in it.
pub struct Cluster {
    pub test: TestCluster,
    sandbox: Option<Sandbox>,
    /// The admin kubeconfig (for `kubectl` and the test's own reads).
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    pub ns: String,
    /// How a job runs the `airlock` binary.
    pub airlock: String,
    /// The job image, by digest.
    pub image: String,
    pub dispatcher_args: Vec<String>,
    /// Pushes to the cluster's plain registry.
    pub pusher: Pusher,
    /// Pushes to the cluster's TLS registry with htpasswd auth (the kubelet has its credentials).
    pub tls: Pusher,
    kubeconfigs: Kubeconfigs,
}

impl Cluster {
    /// A sandbox namespace `airlock-<name>-<pid>` on the test cluster, with the job image pushed.
    pub async fn new(name: &str) -> anyhow::Result<Self> {
        let test = TestCluster::from_env()?;
        let sandbox = test.sandbox(name).await?;
        Self::with(test, sandbox).await
    }

    /// [`Cluster::new`] in a sandbox namespace `namespace` with extra `labels`, returned without waiting
    /// for its `default` ServiceAccount.
    pub async fn labelled(namespace: &str, labels: &[(&str, &str)]) -> anyhow::Result<Self> {
        let test = TestCluster::from_env()?;
        let sandbox = test.sandbox_named(namespace, labels).await?;
        Self::with(test, sandbox).await
    }

    async fn with(test: TestCluster, sandbox: Sandbox) -> anyhow::Result<Self> {
        let pusher = Pusher::plain_host(&test.registry()?);
        let tls = Pusher::tls_host(&test.tls_registry()?, &test.ca_pem()?);
        let image = pusher
            .push_once("airlock-job:1", &oci::job_image(MARKER)?)
            .await?;
        let kubeconfigs = Kubeconfigs {
            dispatcher: sandbox.kubeconfig_for("dispatcher").await?,
            janitor: sandbox.kubeconfig_for("janitor").await?,
            api: sandbox.kubeconfig_for("api").await?,
        };
        let host = test.host_addr()?;
        Ok(Self {
            kubeconfig: test.kubeconfig(),
            client: sandbox.client(),
            ns: sandbox.namespace.clone(),
            airlock: "airlock".into(),
            image,
            dispatcher_args: vec!["--nats-egress-cidrs".into(), format!("{host}/32")],
            pusher,
            tls,
            kubeconfigs,
            sandbox: Some(sandbox),
            test,
        })
    }

    pub fn runtime(&self) -> Runtime {
        Runtime::Kube {
            kubeconfigs: self.kubeconfigs.clone(),
            namespace: self.ns.clone(),
            dispatcher_args: self.dispatcher_args.clone(),
            nats_addr: self.test.host_addr().ok(),
        }
    }

    pub fn request(&self, id: &str, script: &str, deadline_seconds: u64) -> serde_json::Value {
        let mut r = request(id, &["sh", "-c", script], deadline_seconds);
        r["image"] = json!(self.image);
        r
    }

    /// Waits until the run's Pod and NetworkPolicy are gone.
    pub async fn wait_objects_gone(&self, run_id: &str) -> anyhow::Result<()> {
        let name = format!("airlock-run-{run_id}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let nps: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &self.ns);
        tokio::time::timeout(
            T,
            await_condition(pods, &name, |p: Option<&Pod>| p.is_none()),
        )
        .await??;
        tokio::time::timeout(
            T,
            await_condition(nps, &name, |p: Option<&NetworkPolicy>| p.is_none()),
        )
        .await??;
        Ok(())
    }

    /// Deletes the test's namespace.
    pub async fn cleanup(mut self) {
        if let Some(sb) = self.sandbox.take() {
            let _ = sb.delete().await;
        }
    }
}
