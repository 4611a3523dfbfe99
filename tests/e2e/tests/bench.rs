//! The benchmark never rots: `airlock-bench all --quick` runs every stage with small counts and prints its
//! table (figures and ratios; no time is asserted). Its `kube-real` stage runs on the test cluster of
//! `AIRLOCK_TEST_CLUSTER`, as the other Kubernetes tests do (`scripts/test` sets it).

use airlock_test_support::our_binary;

#[tokio::test]
async fn the_quick_benchmark_prints_a_table_with_every_stage_and_ratios() -> anyhow::Result<()> {
    let out = tokio::process::Command::new(our_binary("airlock-bench")?)
        .args(["all", "--quick"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    let table = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "exited with {}: {table}", out.status);
    assert!(
        table.starts_with("| What | Airlock | Ceiling (same run) | Ratio | CPU per item |"),
        "{table}"
    );
    for row in [
        "| dispatch (kube, pods held Pending), 1 replica |",
        "| dispatch (kube, pods held Pending), 2 replicas |",
        "| ingest, draining a ",
        "| reap, ",
        "| reap lag p50 / p99 / max, the bench's own: ",
        "| reap lag p50 / p99, janitor `from=\"observed\"`",
        "| memory: dispatcher peak RSS with ",
        "| local: ",
        "| ceiling: JetStream pull consume + ack |",
        "| ceiling: Redis pipelined hash writes (redis-rs) |",
        "| ceiling: bare bubblewrap around `true`, in a row |",
        "| ceiling: emulator creating NetworkPolicy+Pod pairs, 16 concurrent |",
        KUBE_REAL_DISPATCH,
        "| kube-real: API server per held run ",
        "| kube-real: dispatcher API calls per held run |",
        "| ceiling: client-go (`pairs`) creating NetworkPolicy+Pod pairs on the real API server, 16 concurrent |",
        "| kube-real: 10 small runs end to end ",
        "| ceiling: the same 10 pods created directly ",
        "| kube-real: p50 / p99 submit → succeeded (burst) |",
        "| kube-real: reap lag p50 / p99 / max, the bench's own: ",
        "| kube-real: reap lag p50 / p99, janitor `from=\"observed\"` |",
    ] {
        assert!(table.contains(row), "no {row:?} in:\n{table}");
    }
    // Every measured stage is judged against a ceiling: a ratio in percent.
    let ratios = table.lines().filter(|l| l.contains("% |")).count();
    assert!(ratios >= 3, "{table}");
    let real = table.lines().find(|l| l.starts_with(KUBE_REAL_DISPATCH));
    assert!(
        real.is_some_and(|l| l.contains("| client-go ") && l.contains("% |")),
        "the real API server's dispatch rate is not judged against client-go's:\n{table}"
    );
    Ok(())
}

/// The row of the dispatch rate on the real API server.
const KUBE_REAL_DISPATCH: &str =
    "| kube-real: dispatch on a real API server (pods held unschedulable), 1 replica, ";
