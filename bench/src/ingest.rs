//! Ingest: a backlog of genuine results (runs recorded `running`, results published with their tokens) drained
//! by the ingester, verified, stored and acked; beside it JetStream's consume+ack rate and Redis's pipelined
//! hash-write rate, measured in the same run.

use std::time::{Duration, Instant};

use airlock_runtime::nats::{StreamOptions, ensure_streams};
use airlock_schemas::record::{self, field};
use airlock_schemas::{Subjects, env, token};
use anyhow::{Result, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::Scale;
use crate::ceilings;
use crate::report::{Row, cpu_ms, rate};
use crate::world::{SECRET, World};

/// Longest the drain may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the ingest stage (`airlock` false: only its ceilings).
pub async fn run(scale: &Scale, airlock: bool) -> Result<Vec<Row>> {
    let w = World::start().await?;
    ceilings::jetstream_publish(&w, scale.raw).await?;
    let consume = ceilings::jetstream_consume(&w, scale.raw).await?;
    let redis = ceilings::redis_hash_writes(&w, scale.raw).await?;
    let mut rows = Vec::new();
    if airlock {
        let n = scale.ingest;
        backlog(&w, n).await?;
        let ing = w.service("ingester", &[]).await?;
        let stored = || async {
            Ok::<_, anyhow::Error>(
                ing.metrics()
                    .await?
                    .get("airlock_results_stored_total", &[]) as usize,
            )
        };
        // Measured from the first stored result, so the process's start-up is not counted.
        let deadline = Instant::now() + LIMIT;
        let (s0, t0, cpu0) = loop {
            let s = stored().await?;
            if s > 0 {
                break (s, Instant::now(), ing.cpu()?);
            }
            if Instant::now() > deadline {
                bail!("the ingester stored nothing");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let mut last = Instant::now();
        loop {
            let s = stored().await?;
            if s >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("[ingest] only {s}/{n} stored");
            }
            if last.elapsed() >= Duration::from_secs(1) {
                eprintln!("[ingest] {s}/{n} stored");
                last = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (took, cpu) = (t0.elapsed(), ing.cpu()? - cpu0);
        let r = (n - s0) as f64 / took.as_secs_f64();
        eprintln!("[ingest] {n} results stored; {}", rate(r, "results"));
        let (ceiling, c) = if consume < redis {
            ("JetStream consume+ack", consume)
        } else {
            ("Redis pipelined hash writes", redis)
        };
        rows.push(Row {
            what: format!("ingest, draining a {n}-result backlog"),
            figure: rate(r, "results"),
            ceiling: Some((format!("{ceiling} {}", rate(c, "msg")), r / c)),
            cpu: cpu_ms(cpu, n - s0, "ingester"),
        });
        rows.push(Row {
            what: format!("memory: ingester peak RSS draining {n} results"),
            figure: format!("{:.1} MiB", ing.peak_rss()? as f64 / 1048576.0),
            ceiling: None,
            cpu: String::new(),
        });
    }
    rows.push(Row {
        what: "ceiling: JetStream pull consume + ack".into(),
        figure: rate(consume, "msg"),
        ceiling: None,
        cpu: String::new(),
    });
    rows.push(Row {
        what: "ceiling: Redis pipelined hash writes (redis-rs)".into(),
        figure: rate(redis, "writes"),
        ceiling: None,
        cpu: String::new(),
    });
    Ok(rows)
}

/// Records `n` runs `running` and publishes a genuine result for each.
async fn backlog(w: &World, n: usize) -> Result<()> {
    let subjects = Subjects::default();
    ensure_streams(&w.js, &subjects, &StreamOptions::default()).await?;
    let mut conn = w.redis.connection().await?;
    let ids: Vec<String> = (0..n).map(|i| format!("res-{i}")).collect();
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.hset_multiple(
                record::key("airlock", id),
                &[(field::STATUS, "running"), (field::ATTEMPT, "1")],
            )
            .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for id in &ids {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            env::RUN_TOKEN_HEADER,
            token::sign(SECRET.as_bytes(), id).as_str(),
        );
        let body = bytes::Bytes::from_static(br#"{"answer":42}"#);
        acks.push(
            w.js.publish_with_headers(subjects.results(id), h, body)
                .await?
                .into_future(),
        );
        if acks.len() >= 4096
            && let Some(a) = acks.next().await
        {
            a?;
        }
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    eprintln!("[ingest] {n} results published in {:.2?}", start.elapsed());
    Ok(())
}
