//! Starting the emulator and the handle tests use to drive and inspect it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::api::App;
use crate::faults::{FaultAction, FaultRule, RequestRecord};
use crate::kinds::Kind;
use crate::kubelet::{ForcedState, Kubelet, KubeletConfig};
use crate::selector::LabelSelector;
use crate::store::Store;

/// Errors from starting or driving the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Binding, or writing the kubeconfig, failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A label selector did not parse.
    #[error("invalid label selector: {0}")]
    Selector(String),
    /// A wait timed out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The store rejected an object.
    #[error("API error: {0}")]
    Api(String),
}

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Port on 127.0.0.1 (0 picks a free one).
    pub port: u16,
    /// Where to write the kubeconfig (`None`: a file in a private temp dir).
    pub kubeconfig_path: Option<PathBuf>,
    /// The kubeconfig context's default namespace.
    pub default_namespace: String,
    /// Namespaces to create at start, besides `default`, `kube-system` and `kube-public`.
    pub namespaces: Vec<String>,
    /// Delay between a pod's creation and its scheduling by the kubelet.
    pub schedule_delay: Duration,
    /// How many changes the watch history keeps before older resourceVersions expire (410).
    pub history_limit: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Upper bound on the honoured grace period when deleting a running pod.
    pub max_grace_period: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            port: 0,
            kubeconfig_path: None,
            default_namespace: "default".into(),
            namespaces: Vec::new(),
            schedule_delay: Duration::from_millis(50),
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            max_grace_period: Duration::from_secs(5),
        }
    }
}

impl EmulatorConfig {
    /// Set the port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Set where the kubeconfig is written.
    pub fn kubeconfig_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.kubeconfig_path = Some(p.into());
        self
    }
    /// Add a namespace created at start; the first one added also becomes the context's default.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        let ns = ns.into();
        if self.namespaces.is_empty() {
            self.default_namespace = ns.clone();
        }
        self.namespaces.push(ns);
        self
    }
    /// Set the scheduling delay.
    pub fn schedule_delay(mut self, d: Duration) -> Self {
        self.schedule_delay = d;
        self
    }
    /// Set the watch history length.
    pub fn history_limit(mut self, n: usize) -> Self {
        self.history_limit = n;
        self
    }
    /// Set the bookmark interval.
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }
}

/// The emulator entry point.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Bind, create the base namespaces, start the kubelet and the server, write the kubeconfig.
    pub async fn start(cfg: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::new(cfg.history_limit));
        for ns in ["default", "kube-system", "kube-public"]
            .into_iter()
            .map(str::to_string)
            .chain(cfg.namespaces.iter().cloned())
        {
            if store.get(Kind::Namespace, "", &ns).is_some() {
                continue;
            }
            store
                .create(Kind::Namespace, "", namespace_object(&ns))
                .map_err(|e| EmulatorError::Api(e.to_string()))?;
        }
        let kubelet = Kubelet::new(
            store.clone(),
            KubeletConfig {
                schedule_delay: cfg.schedule_delay,
                node_name: "airlock-emulator-node".into(),
                max_grace: cfg.max_grace_period,
            },
        );
        let (_, _, events) = store.snapshot_and_subscribe(Kind::Pod);
        let kubelet_task = tokio::spawn(kubelet.clone().run(events));
        let app = Arc::new(App {
            store: store.clone(),
            kubelet: kubelet.clone(),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            bookmark_interval: cfg.bookmark_interval,
        });
        let router = axum::Router::new()
            .fallback(crate::api::entry)
            .with_state(app.clone());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
        });
        let (tempdir, kubeconfig_path) = match &cfg.kubeconfig_path {
            Some(p) => (None, p.clone()),
            None => {
                let d = tempfile::Builder::new()
                    .prefix("airlock-kube-emulator-")
                    .tempdir()?;
                let p = d.path().join("kubeconfig");
                (Some(d), p)
            }
        };
        let handle = EmulatorHandle {
            addr,
            app,
            kubelet,
            stop: stop_tx,
            tasks: Mutex::new(vec![server, kubelet_task]),
            kubeconfig_path,
            default_namespace: cfg.default_namespace.clone(),
            _tempdir: tempdir,
        };
        handle.write_kubeconfig(&handle.kubeconfig_path)?;
        tracing::info!(url = %handle.url(), "kube emulator listening");
        Ok(handle)
    }
}

fn namespace_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A running emulator. Dropping it stops the server and kills every pod process.
#[derive(Debug)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    app: Arc<App>,
    kubelet: Arc<Kubelet>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    kubeconfig_path: PathBuf,
    default_namespace: String,
    _tempdir: Option<tempfile::TempDir>,
}

impl EmulatorHandle {
    /// The server URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig the emulator wrote at start.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The kubeconfig text (context `airlock-emulator`, no auth).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: airlock-emulator\n  cluster:\n    server: {url}\ncontexts:\n- name: airlock-emulator\n  context:\n    cluster: airlock-emulator\n    user: airlock-emulator\n    namespace: {ns}\ncurrent-context: airlock-emulator\nusers:\n- name: airlock-emulator\n  user: {{}}\npreferences: {{}}\n",
            url = self.url(),
            ns = self.default_namespace
        )
    }

    /// Write a kubeconfig for this emulator to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Every stored object of a kind, across namespaces.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.app.store.list(kind, None).0
    }

    /// One stored object.
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.app.store.get(kind, ns, name)
    }

    /// Add a fault rule.
    pub fn inject_fault(&self, rule: FaultRule) {
        if let Ok(mut f) = self.app.faults.lock() {
            f.push(rule);
        }
    }

    /// Fail the next `count` requests with `method` (or any) whose path contains `path_contains`.
    pub fn fail_next(
        &self,
        method: Option<&str>,
        path_contains: &str,
        action: FaultAction,
        count: u32,
    ) {
        self.inject_fault(FaultRule::new(method, path_contains, action, count));
    }

    /// Remove every pending fault rule.
    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.app.faults.lock() {
            f.clear();
        }
    }

    /// Keep pods matching `label_selector` Pending with PodScheduled=False/Unschedulable.
    pub fn hold_pending(&self, label_selector: &str) -> Result<(), EmulatorError> {
        let sel = LabelSelector::parse(label_selector).map_err(EmulatorError::Selector)?;
        self.kubelet.hold_pending(sel);
        Ok(())
    }

    /// Release every Pending hold.
    pub fn release_pending(&self) {
        self.kubelet.release_holds();
    }

    /// Force a final state onto a pod (kills its process). False if the pod has no kubelet task.
    pub fn force_pod_state(&self, namespace: &str, name: &str, state: ForcedState) -> bool {
        self.kubelet.force(namespace, name, state)
    }

    /// The pod's captured log (stdout and stderr interleaved), if its container started.
    pub fn pod_log(&self, namespace: &str, name: &str) -> Option<String> {
        self.kubelet
            .log(namespace, name)
            .map(|l| String::from_utf8_lossy(&l.bytes()).into_owned())
    }

    /// Every request served so far (admin API calls excluded).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.app
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// How many objects of a kind were deleted (cascades included).
    pub fn delete_count(&self, kind: Kind) -> u64 {
        self.app.store.delete_count(kind)
    }

    /// How many objects of a kind were created.
    pub fn create_count(&self, kind: Kind) -> u64 {
        self.app.store.create_count(kind)
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.app.store.current_rv()
    }

    /// Forget the watch history: any resourceVersion older than now gets 410 Expired.
    pub fn compact_history(&self) {
        self.app.store.compact();
    }

    /// Wait until `pred` holds, re-checking on every store change (no polling sleeps).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&EmulatorHandle) -> bool,
    ) -> Result<(), EmulatorError> {
        let mut rx = self.app.store.subscribe_changes();
        let fut = async {
            loop {
                rx.borrow_and_update();
                if pred(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| EmulatorError::Timeout(timeout, what.to_string()))
    }

    /// Wait until the object exists and satisfies `pred`; returns it.
    pub async fn wait_for_object(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, EmulatorError> {
        let what = format!("{kind} {namespace}/{name}");
        self.wait_for(&what, timeout, |h| {
            h.object(kind, namespace, name).is_some_and(|o| pred(&o))
        })
        .await?;
        self.object(kind, namespace, name)
            .ok_or(EmulatorError::Timeout(timeout, what))
    }

    /// Wait until a pod reaches `phase`; returns it.
    pub async fn wait_for_pod_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> Result<Value, EmulatorError> {
        self.wait_for_object(Kind::Pod, namespace, name, timeout, |p| {
            p.pointer("/status/phase").and_then(Value::as_str) == Some(phase)
        })
        .await
    }

    /// Wait until an object is gone.
    pub async fn wait_for_absent(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), EmulatorError> {
        self.wait_for(
            &format!("{kind} {namespace}/{name} to be deleted"),
            timeout,
            |h| h.object(kind, namespace, name).is_none(),
        )
        .await
    }

    /// Stop serving and kill every pod process.
    pub async fn shutdown(self) {
        self.stop_now();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    fn stop_now(&self) {
        self.kubelet.kill_all();
        self.stop.send_replace(true);
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.stop_now();
        if let Ok(mut t) = self.tasks.lock() {
            for task in t.drain(..) {
                task.abort();
            }
        }
    }
}
