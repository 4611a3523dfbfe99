//! `deploy/base` as an operator applies it, and per-test copies of its sandbox namespace.
//!
//! At `up` the whole base is applied but its Deployments (the tests run the services as processes); each
//! test then gets a sandbox namespace of its own holding what `deploy/base` puts in `airlock-sandbox`
//! (Pod Security `restricted`, the ResourceQuota, the LimitRange, `default-deny-all`, the services'
//! Roles and RoleBindings), and kubeconfigs carrying the tokens of the services' ServiceAccounts, so the
//! shipped RBAC is what a real API server enforces on them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::Value;

use super::TestCluster;

/// Where `deploy/base` puts the services and the jobs.
const SYSTEM_NS: &str = "airlock-system";
const BASE_SANDBOX_NS: &str = "airlock-sandbox";

/// `deploy/base` rendered by the cluster's kubectl (its kustomize), as objects.
async fn render_base(cluster: &TestCluster) -> Result<Vec<Value>> {
    let dir = crate::workspace_root().join("deploy/base");
    let yaml = cluster
        .kubectl_run(&["kustomize", &dir.display().to_string()], None)
        .await?;
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

async fn apply(cluster: &TestCluster, objects: &[Value]) -> Result<()> {
    let docs: Vec<String> = objects.iter().map(Value::to_string).collect();
    cluster
        .kubectl_run(
            &[
                "apply",
                "--server-side",
                "--field-manager=airlock-test-cluster",
                "-f",
                "-",
            ],
            Some(&docs.join("\n---\n")),
        )
        .await?;
    Ok(())
}

/// Applies `deploy/base` but its Deployments.
pub(super) async fn apply_base(cluster: &TestCluster) -> Result<()> {
    let objects: Vec<Value> = render_base(cluster)
        .await?
        .into_iter()
        .filter(|o| o["kind"] != "Deployment")
        .collect();
    apply(cluster, &objects).await
}

/// A sandbox namespace of one test, deleted by [`Sandbox::delete`].
pub struct Sandbox {
    cluster: TestCluster,
    client: kube::Client,
    /// The namespace.
    pub namespace: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// A fresh sandbox namespace `airlock-<name>-<pid>` made as `deploy/base` makes `airlock-sandbox`,
    /// returned once its `default` ServiceAccount exists (pods are refused until then).
    pub async fn sandbox(&self, name: &str) -> Result<Sandbox> {
        let namespace = format!("airlock-{name}-{}", std::process::id());
        let sb = self.sandbox_named(&namespace, &[]).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(sb.client.clone(), &namespace);
        crate::wait_until(
            Duration::from_secs(60),
            "the namespace's default ServiceAccount",
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten().map(|_| ()) }
            },
        )
        .await?;
        Ok(sb)
    }

    /// Like [`TestCluster::sandbox`] with extra namespace `labels`, returned at once (its `default`
    /// ServiceAccount may not exist yet).
    pub async fn sandbox_named(&self, namespace: &str, labels: &[(&str, &str)]) -> Result<Sandbox> {
        if namespace.len() > 63 {
            bail!("namespace name {namespace:?} is longer than 63 characters");
        }
        let mut objects = Vec::new();
        for mut o in render_base(self).await? {
            let is_ns = o["kind"] == "Namespace" && o["metadata"]["name"] == BASE_SANDBOX_NS;
            if is_ns {
                o["metadata"]["name"] = namespace.into();
                for (k, v) in labels {
                    o["metadata"]["labels"][*k] = (*v).into();
                }
            } else if o["metadata"]["namespace"] == BASE_SANDBOX_NS {
                o["metadata"]["namespace"] = namespace.into();
            } else {
                continue;
            }
            objects.push(o);
        }
        // The namespace first: the rest lands in it.
        objects.sort_by_key(|o| o["kind"] != "Namespace");
        apply(self, &objects).await?;
        Ok(Sandbox {
            cluster: self.clone(),
            client: self.client().await?,
            namespace: namespace.to_string(),
            dir: tempfile::Builder::new()
                .prefix("airlock-sandbox-")
                .tempdir()?,
        })
    }
}

impl Sandbox {
    /// A kubeconfig for service `service` (`dispatcher`, `janitor`, `api`): the token of its
    /// ServiceAccount `airlock-<service>` in `airlock-system`, as its pod would mount it.
    pub async fn kubeconfig_for(&self, service: &str) -> Result<PathBuf> {
        let sa = format!("airlock-{service}");
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(self.client.clone(), SYSTEM_NS)
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {SYSTEM_NS}/{sa}"))?
            .status
            .context("TokenRequest without a status")?
            .token;
        let path = self.dir.path().join(format!("{sa}.kubeconfig"));
        let ca = std::fs::read_to_string(self.cluster.dir.join("pki/ca.crt"))?;
        let server = self.cluster.var("API_SERVER")?;
        super::certs::write_kubeconfig(&path, server, &ca, &sa, &format!("token: {token}"))?;
        Ok(path)
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Deletes the namespace (and so everything in it); does not wait for it to go.
    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &DeleteParams::default())
            .await?;
        Ok(())
    }
}
