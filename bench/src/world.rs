//! The world a stage runs in: NATS and Redis (as the tests start them), Airlock's services as child processes
//! of this binary, their CPU time and peak RSS from `/proc`, and their `/metrics`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_runtime::metrics::Samples;
use airlock_runtime::{shutdown, telemetry};
use airlock_test_support::{NatsServer, RedisServer, free_port, wait_until};
use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// First argument that makes this binary run a service instead of the benchmark.
pub const SERVICE_ARG: &str = "__service";
/// The token secret the services share.
pub const SECRET: &str = "bench-token-secret-0123456789abcdef";
/// `/proc` clock ticks per second (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// Runs the service named by `args[0]` with the flags that follow, until SIGTERM.
pub async fn serve(args: &[String]) -> Result<()> {
    let (name, flags) = args.split_first().context("which service")?;
    let argv = std::iter::once(format!("airlock-{name}")).chain(flags.iter().cloned());
    let stop = shutdown::on_signals();
    match name.as_str() {
        "dispatcher" => {
            let c = airlock_dispatcher::Config::try_parse_from(argv)?;
            let _telemetry = telemetry::init(c.common.log_format, "airlock-dispatcher");
            airlock_dispatcher::run(c, stop).await?;
        }
        "ingester" => {
            let c = airlock_ingester::Config::try_parse_from(argv)?;
            let _telemetry = telemetry::init(c.common.log_format, "airlock-ingester");
            airlock_ingester::run(c, stop).await?;
        }
        "janitor" => {
            let c = airlock_janitor::Config::try_parse_from(argv)?;
            let _telemetry = telemetry::init(c.common.log_format, "airlock-janitor");
            airlock_janitor::run(c, stop).await?;
        }
        other => bail!("unknown service {other:?}"),
    }
    Ok(())
}

/// NATS and Redis for one stage.
pub struct World {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl World {
    /// Starts NATS and Redis on free ports.
    pub async fn start() -> Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Starts NATS on `nats_addr` (the test cluster's host address, where its pods reach it) and Redis on
    /// loopback.
    pub async fn start_on(nats_addr: std::net::Ipv4Addr) -> Result<Self> {
        let (nats, redis) =
            tokio::try_join!(NatsServer::start_on(nats_addr), RedisServer::start())?;
        let client = nats.client().await?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            nats,
            redis,
            client,
            js,
        })
    }

    /// Starts service `name` with `flags` against this world; returns once it is ready.
    pub async fn service(&self, name: &str, flags: &[String]) -> Result<Child> {
        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg(SERVICE_ARG)
            .arg(name)
            .args(flags)
            .env("AIRLOCK_NATS_URL", self.nats.url())
            .env("AIRLOCK_REDIS_URL", self.redis.url())
            .env("AIRLOCK_TOKEN_SECRET", SECRET)
            .env("AIRLOCK_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("AIRLOCK_SHUTDOWN_GRACE", "2s")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = Child {
            name: name.to_string(),
            child: cmd.spawn().with_context(|| format!("starting {name}"))?,
            port,
        };
        wait_until(
            Duration::from_secs(60),
            &format!("{name} ready"),
            || async { (get(port, "/readyz").await.ok()?.0 == 200).then_some(()) },
        )
        .await?;
        Ok(child)
    }
}

/// A service running as a child process.
pub struct Child {
    name: String,
    child: tokio::process::Child,
    port: u16,
}

impl Child {
    /// CPU time (user + system) the service used so far.
    pub fn cpu(&self) -> Result<Duration> {
        let pid = self.child.id().context("exited")?;
        proc_cpu(&format!("/proc/{pid}/stat"))
    }

    /// CPU time of its children it has waited for (and theirs): for the dispatcher in local mode, the
    /// supervisor processes and their sandboxes.
    pub fn reaped_cpu(&self) -> Result<Duration> {
        let pid = self.child.id().context("exited")?;
        proc_cpu_fields(&format!("/proc/{pid}/stat"), 13..15)
    }

    /// Its peak resident set size, in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        let pid = self.child.id().context("exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("VmHWM")?;
        Ok(kb * 1024)
    }

    /// Its `/metrics`, parsed.
    pub async fn metrics(&self) -> Result<Samples> {
        let (status, body) = get(self.port, "/metrics").await?;
        if status != 200 {
            bail!("{} /metrics answered {status}", self.name);
        }
        Ok(Samples::parse(&body))
    }
}

/// CPU time this process used so far (the emulator and the load generators run here).
pub fn own_cpu() -> Result<Duration> {
    proc_cpu("/proc/self/stat")
}

/// utime + stime of a `/proc/<pid>/stat` file.
fn proc_cpu(path: &str) -> Result<Duration> {
    proc_cpu_fields(path, 11..13)
}

/// The sum of the tick fields `range` (0-based, after the command) of a `/proc/<pid>/stat`.
pub fn proc_cpu_fields(path: &str, range: std::ops::Range<usize>) -> Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, as in proc(5)).
    let ticks: f64 = f
        .get(range)
        .context("stat fields")?
        .iter()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .sum();
    Ok(Duration::from_secs_f64(ticks / TICKS_PER_S))
}

/// `GET path` on 127.0.0.1:`port`: status and body.
async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP status")?;
    Ok((status, body.to_string()))
}

/// Prints `done/total` progress of `stage` about once a second until `done` reaches `total`; returns the
/// elapsed time since `start`.
pub async fn progress<F, Fut>(
    stage: &str,
    total: usize,
    start: Instant,
    limit: Duration,
    mut done: F,
) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let mut last_print = Instant::now();
    loop {
        let n = done().await?;
        if n >= total {
            let took = start.elapsed();
            eprintln!("[{stage}] {n}/{total} in {took:.2?}");
            return Ok(took);
        }
        if start.elapsed() > limit {
            bail!("[{stage}] only {n}/{total} after {limit:?}");
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("[{stage}] {n}/{total}");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `q` quantile (0..1) of the histogram `name` (seconds), its series with `only` labels, from the increase
/// of its cumulative buckets between `before` and `after`, interpolated linearly inside the bucket.
pub fn quantile(
    before: &Samples,
    after: &Samples,
    name: &str,
    only: &[(&str, &str)],
    q: f64,
) -> Option<f64> {
    let buckets = |s: &Samples| -> Vec<(f64, f64)> {
        let mut b: Vec<(f64, f64)> = s
            .series(&format!("{name}_bucket"))
            .filter(|(labels, _)| {
                only.iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .filter_map(|(labels, v)| {
                let le = labels.iter().find(|(k, _)| k == "le")?.1.as_str();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect();
        b.sort_by(|a, b| a.0.total_cmp(&b.0));
        b
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let delta: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, v)| {
            let old = b0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, v)| *v);
            (*le, v - old)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in delta {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let frac = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, c);
    }
    None
}
