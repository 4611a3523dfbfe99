//! The whole system on Kubernetes: the four services as processes with `--runtime kube`, each with its own
//! ServiceAccount's token, against the real test cluster (see `kube_cluster`): jobs run the job image,
//! busybox plus our `airlock` binary, and publish their results with `airlock emit` from inside it.

mod common;
mod kube_cluster;

use airlock_schemas::RunStatus;
use airlock_test_support::cluster::TestCluster;
use common::{DISPATCHER, System, T};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube_cluster::Cluster;
use serde_json::json;

#[tokio::test]
async fn on_kubernetes_a_run_succeeds_with_its_result_and_logs_and_its_pod_and_policy_are_deleted()
-> anyhow::Result<()> {
    let cluster = Cluster::new("ok").await?;
    let sys = System::start(cluster.runtime()).await?;
    let script = format!(
        r#"echo "hello from $AIRLOCK_RUN_ID"; echo '{{"answer":42}}' | {} emit"#,
        cluster.airlock
    );
    let mut req = cluster.request("kube-ok-1", &script, 60);
    req["labels"] = json!({ "team": "e2e" });
    req["resources"] =
        json!({ "requests": { "cpu": "50m", "memory": "32Mi" }, "limits": { "memory": "64Mi" } });
    sys.submit(&req).await?;
    let (events, rec) = sys.wait_terminal("kube-ok-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded), "{rec:?}");
    common::assert_forward_only(&events, RunStatus::Succeeded);
    let rec = sys
        .wait_record("kube-ok-1", "result", |r| r.result.is_some())
        .await?;
    assert_eq!(rec.result, Some(json!({"answer": 42})));
    assert_eq!(rec.exit_code, Some(0));
    assert!(rec.result_rejections.is_empty(), "{rec:?}");
    let logs = rec.logs.as_deref().unwrap_or_default();
    assert!(logs.contains("hello from kube-ok-1"), "logs: {logs:?}");

    cluster.wait_objects_gone("kube-ok-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_a_job_past_its_deadline_ends_timed_out_and_is_deleted() -> anyhow::Result<()>
{
    let cluster = Cluster::new("deadline").await?;
    let sys = System::start(cluster.runtime()).await?;
    sys.submit(&cluster.request("kube-slow-1", "echo started; sleep 60", 2))
        .await?;
    let (events, rec) = sys.wait_terminal("kube-slow-1").await?;
    common::assert_timed_out(&events, &rec);
    cluster.wait_objects_gone("kube-slow-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_a_cancelled_run_ends_cancelled_and_its_pod_is_deleted() -> anyhow::Result<()>
{
    let cluster = Cluster::new("cancel").await?;
    let sys = System::start(cluster.runtime()).await?;
    let mut events = sys.events("kube-cancel-1").await?;
    sys.submit(&cluster.request("kube-cancel-1", "sleep 60", 120))
        .await?;
    events.until_status("running").await?;
    let reply = sys
        .client
        .request(
            sys.subjects.cancel("kube-cancel-1"),
            r#"{"reason":"no longer needed"}"#.into(),
        )
        .await?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply, json!({"ok": true}));
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Cancelled);
    assert_eq!(terminal.reason.as_deref(), Some("no longer needed"));
    cluster.wait_objects_gone("kube-cancel-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

/// `airlock logs -f` relays the pod's log as it is written (the job waits for the test on the address pods
/// reach the host on) and ends when the run ends; the job delivers its result with `airlock-emit`.
#[tokio::test]
async fn on_kubernetes_logs_follow_streams_a_running_pods_lines_and_airlock_emit_delivers_its_result()
-> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let cluster = Cluster::new("follow").await?;
    let sys = System::start(cluster.runtime()).await?;
    // The job blocks on a connection to the test (on the address pods reach the host on) until the test
    // closes it.
    let host = cluster.test.host_addr()?;
    let gate = tokio::net::TcpListener::bind((host, 0)).await?;
    let script = format!(
        r#"echo line-one; nc {host} {} </dev/null; echo line-two; printf '{{"answer":9}}' | airlock-emit"#,
        gate.local_addr()?.port()
    );
    let req = cluster.request("kube-follow-1", &script, 60);
    sys.submit(&req).await?;
    sys.wait_record("kube-follow-1", "running", |r| {
        r.status == Some(RunStatus::Running)
    })
    .await?;

    let mut follow = tokio::process::Command::new(airlock_test_support::our_binary("airlock")?)
        .args(["logs", "-f", "kube-follow-1"])
        .env("AIRLOCK_NATS_URL", sys.nats.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(T, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("line-one"));
    assert_eq!(
        sys.record("kube-follow-1").await?.status,
        Some(RunStatus::Running)
    );
    let (conn, _) = tokio::time::timeout(T, gate.accept()).await??;
    drop(conn);
    let mut rest = Vec::new();
    while let Some(l) = tokio::time::timeout(T, lines.next_line()).await?? {
        rest.push(l);
    }
    assert!(rest.iter().any(|l| l == "line-two"), "{rest:?}");
    let status = tokio::time::timeout(T, follow.wait()).await??;
    assert!(status.success(), "logs -f ended {status}");

    let rec = sys
        .wait_record("kube-follow-1", "result", |r| r.result.is_some())
        .await?;
    assert_eq!(rec.result, Some(json!({"answer": 9})));
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

/// The namespace label under which a ValidatingAdmissionPolicy refuses the ServiceAccount controller's
/// `default` account: the controller lagging behind a new namespace, held for as long as a test needs.
const HOLD_DEFAULT_SA: &str = "airlock.test/hold-default-serviceaccount";

/// Installs the policy of [`HOLD_DEFAULT_SA`] (idempotently) and returns once the API server enforces it
/// (a policy takes effect a moment after it is created): a dry-run create of `default` in a held namespace
/// is refused by it.
async fn hold_default_service_accounts(test: &TestCluster) -> anyhow::Result<()> {
    let policy = format!(
        r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
  "metadata": {{"name": "airlock-test-hold-default-serviceaccount"}},
  "spec": {{"failurePolicy": "Fail",
    "matchConstraints": {{
      "resourceRules": [{{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["serviceaccounts"]}}],
      "namespaceSelector": {{"matchLabels": {{"{HOLD_DEFAULT_SA}": "true"}}}}}},
    "validations": [{{"expression": "object.metadata.name != 'default'", "message": "held by the test"}}]}}}}
---
{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
  "metadata": {{"name": "airlock-test-hold-default-serviceaccount"}},
  "spec": {{"policyName": "airlock-test-hold-default-serviceaccount", "validationActions": ["Deny"]}}}}
---
{{"apiVersion": "v1", "kind": "Namespace",
  "metadata": {{"name": "airlock-hold-probe", "labels": {{"{HOLD_DEFAULT_SA}": "true"}}}}}}"#
    );
    test.kubectl_run(&["apply", "--server-side", "-f", "-"], Some(&policy))
        .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(test.client().await?, "airlock-hold-probe");
    let default: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    airlock_test_support::wait_until(T, "the hold policy to be enforced", || {
        let (sas, default) = (sas.clone(), default.clone());
        async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            match sas.create(&dry, &default).await {
                // The policy's refusal (422 Invalid, as a ValidatingAdmissionPolicy answers).
                Err(kube::Error::Api(s)) if s.message.contains("held by the test") => Some(()),
                _ => None,
            }
        }
    })
    .await
}

/// Found on a real cluster: a pod created before its namespace's `default` ServiceAccount exists is
/// refused with `403 Forbidden: error looking up service account`; the dispatcher retries it (it used to
/// end the run `failed`), and the run succeeds once the account is there.
#[tokio::test]
async fn on_kubernetes_a_pod_refused_until_its_namespace_has_a_default_service_account_is_retried_and_the_run_succeeds()
-> anyhow::Result<()> {
    let test = TestCluster::from_env()?;
    hold_default_service_accounts(&test).await?;
    let ns = format!("airlock-salag-{}", std::process::id());
    let cluster = Cluster::labelled(&ns, &[(HOLD_DEFAULT_SA, "true")]).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &ns);
    assert!(
        sas.get_opt("default").await?.is_none(),
        "the controller's default account is held back"
    );
    let sys = System::start(cluster.runtime()).await?;
    sys.submit(&cluster.request("kube-salag-1", r#"echo '{"ok":1}' | airlock emit"#, 120))
        .await?;
    let forbidden = [("verb", "create"), ("code", "403")];
    sys.wait_metrics(DISPATCHER, "a pod create refused with 403", |m| {
        m.get("airlock_backend_api_calls_total", &forbidden) >= 1.0
    })
    .await?;
    let rec = sys.record("kube-salag-1").await?;
    assert!(
        rec.status.is_some_and(|s| !s.is_terminal()),
        "not ended by the refusal: {rec:?}"
    );

    // The controller catches up.
    test.kubectl_run(
        &["label", "namespace", &ns, &format!("{HOLD_DEFAULT_SA}-")],
        None,
    )
    .await?;
    // The policy sees the namespace through the API server's cache: until that has the label gone, the
    // create is still refused as held.
    let default: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    airlock_test_support::wait_until(
        T,
        "the default ServiceAccount once the hold is lifted",
        || {
            let (sas, default) = (sas.clone(), default.clone());
            async move {
                match sas.create(&PostParams::default(), &default).await {
                    Ok(_) => Some(Ok(())),
                    Err(kube::Error::Api(s)) if s.code == 409 => Some(Ok(())),
                    Err(kube::Error::Api(s)) if s.message.contains("held by the test") => None,
                    Err(e) => Some(Err(e)),
                }
            }
        },
    )
    .await??;
    let (_, rec) = sys.wait_terminal("kube-salag-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded), "{rec:?}");
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}
