//! The cluster the Kubernetes end-to-end tests run against: the emulator in image mode (default), whose
//! kubelet pulls the job image (busybox plus our `airlock` binary, built by the test and pushed to a
//! loopback registry) and runs it in its rootfs, so a job publishes its result with our own
//! `airlock emit` from inside its image; or the real cluster of `AIRLOCK_TEST_KUBECONFIG`.
#![allow(dead_code)]

use std::path::PathBuf;

use airlock_images::{RegistryConfig, StoreConfig};
use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use airlock_test_support::oci::{self, Pusher};
use airlock_test_support::registry::Registry;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::common::{Runtime, T, request};

/// The marker file content of the job image (`/etc/airlock-marker`), which only the image has.
pub const MARKER: &str = "only in the airlock job image";

/// The sandbox namespace the dispatcher uses by default (`--namespace`).
pub const SANDBOX_NS: &str = "airlock-sandbox";

/// The cluster under test: the emulator (default) or the real cluster of `AIRLOCK_TEST_KUBECONFIG`.
pub struct Cluster {
    pub emu: Option<EmulatorHandle>,
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    pub ns: String,
    /// How a job runs the `airlock` binary.
    pub airlock: String,
    /// The job image.
    pub image: String,
    pub dispatcher_args: Vec<String>,
    /// Emulator only: the loopback registry holding the job image, and a pusher to it.
    pub registry: Option<(Registry, Pusher)>,
    /// Emulator only, when asked for: a TLS registry with htpasswd auth the kubelet trusts (its CA) and
    /// has credentials for, and a pusher to it.
    pub tls: Option<(oci::TlsRegistry, Pusher)>,
    /// Emulator only: the image store's directory.
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// `None` (after printing why) when a real cluster is asked for but the job image or NATS URL is not.
    pub async fn new(name: &str) -> anyhow::Result<Option<Self>> {
        Self::start(name, false).await
    }

    /// The emulator with a TLS registry besides the plain one (see [`Cluster::tls`]); `None` (after saying
    /// so) against a real cluster.
    pub async fn with_tls_registry(name: &str) -> anyhow::Result<Option<Self>> {
        if std::env::var_os("AIRLOCK_TEST_KUBECONFIG").is_some() {
            eprintln!("SKIPPED: needs the emulator's loopback registries");
            return Ok(None);
        }
        Self::start(name, true).await
    }

    /// Emulator only: `None` (after saying so) against a real cluster.
    pub async fn emulator(name: &str) -> anyhow::Result<Option<Self>> {
        if std::env::var_os("AIRLOCK_TEST_KUBECONFIG").is_some() {
            eprintln!("SKIPPED: needs the emulator's loopback registry and its images");
            return Ok(None);
        }
        Self::start(name, false).await
    }

    async fn start(name: &str, with_tls: bool) -> anyhow::Result<Option<Self>> {
        match std::env::var_os("AIRLOCK_TEST_KUBECONFIG") {
            None => {
                let dir = oci::shared_tempdir("airlock-e2e-kube-")?;
                let registry = Registry::start_plain().await?;
                let pusher = Pusher::plain(&registry);
                pusher
                    .push("airlock-job:1", &oci::job_image(MARKER)?)
                    .await?;
                let mut registry_config = RegistryConfig {
                    insecure_registries: vec![registry.host()],
                    system_roots: false,
                    ..RegistryConfig::default()
                };
                let tls = if with_tls {
                    let tls = oci::tls_registry(dir.path()).await?;
                    let host = tls.registry.host();
                    registry_config.extra_ca_files.push(tls.ca_file.clone());
                    registry_config.auth_file =
                        Some(oci::auth_file(dir.path(), &host, oci::USER, oci::PASSWORD)?);
                    let pusher = Pusher::tls(&tls.registry, &tls.ca_pem);
                    Some((tls, pusher))
                } else {
                    None
                };
                let store = StoreConfig {
                    registry: registry_config,
                    ..StoreConfig::new(dir.path().join("images"))
                };
                let emu = Emulator::start(
                    EmulatorConfig::default()
                        .namespace(SANDBOX_NS)
                        .images(store),
                )
                .await?;
                let kubeconfig = emu.kubeconfig_path().to_path_buf();
                let client = client(&kubeconfig).await?;
                Ok(Some(Self {
                    emu: Some(emu),
                    kubeconfig,
                    client,
                    ns: SANDBOX_NS.into(),
                    airlock: "airlock".into(),
                    image: pusher.reference("airlock-job:1"),
                    dispatcher_args: vec!["--nats-egress-cidrs".into(), "127.0.0.1/32".into()],
                    registry: Some((registry, pusher)),
                    tls,
                    _dir: Some(dir),
                }))
            }
            Some(kubeconfig) => {
                let (Ok(image), Ok(nats_url)) = (
                    std::env::var("AIRLOCK_TEST_JOB_IMAGE"),
                    std::env::var("AIRLOCK_TEST_JOB_NATS_URL"),
                ) else {
                    eprintln!(
                        "SKIPPED: AIRLOCK_TEST_KUBECONFIG is set but AIRLOCK_TEST_JOB_IMAGE (an image with sh and \
                         `airlock` on its PATH) or AIRLOCK_TEST_JOB_NATS_URL (how pods reach the test's NATS) is not"
                    );
                    return Ok(None);
                };
                let kubeconfig = PathBuf::from(kubeconfig);
                let client = client(&kubeconfig).await?;
                let ns = format!("airlock-e2e-{name}-{}", std::process::id());
                let nsobj: Namespace =
                    serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
                Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &nsobj)
                    .await?;
                let mut dispatcher_args = vec!["--job-nats-url".into(), nats_url];
                if let Ok(cidrs) = std::env::var("AIRLOCK_TEST_NATS_EGRESS_CIDRS") {
                    dispatcher_args.extend(["--nats-egress-cidrs".into(), cidrs]);
                }
                Ok(Some(Self {
                    emu: None,
                    kubeconfig,
                    client,
                    ns,
                    airlock: "airlock".into(),
                    image,
                    dispatcher_args,
                    registry: None,
                    tls: None,
                    _dir: None,
                }))
            }
        }
    }

    pub fn runtime(&self) -> Runtime {
        Runtime::Kube {
            kubeconfig: self.kubeconfig.clone(),
            namespace: self.ns.clone(),
            dispatcher_args: self.dispatcher_args.clone(),
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

    /// Emulator only: every Pod and NetworkPolicy the API accepted validates against the official
    /// Kubernetes 1.33 schemas (skipped loudly when the schemas are not installed).
    pub fn validate_accepted_objects(&self) {
        let Some(emu) = &self.emu else { return };
        match emu.validate_stored_objects() {
            Ok(report) => {
                assert!(
                    report.is_ok(),
                    "objects failed schema validation: {report:#?}"
                );
                assert!(
                    report.checked >= 2,
                    "at least a pod and a policy were checked: {report:?}"
                );
            }
            Err(e) => eprintln!("SKIPPED schema validation: {e}"),
        }
    }

    pub async fn cleanup(self) {
        if self.emu.is_none() {
            let _ = Api::<Namespace>::all(self.client)
                .delete(&self.ns, &DeleteParams::default())
                .await;
        }
    }
}

pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
