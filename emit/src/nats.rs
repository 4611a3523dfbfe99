//! A minimal blocking NATS client: enough to publish one message with headers as a request and read its
//! reply (the JetStream publish acknowledgement). Plain TCP only (`nats://host:port`, optional
//! `user:pass@` or `token@`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::EmitError;

/// Where and as whom to connect.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    host_port: String,
    user: Option<String>,
    pass: Option<String>,
}

fn parse_url(url: &str) -> Result<Url, EmitError> {
    let rest = match url.split_once("://") {
        Some(("nats", r)) => r,
        Some((scheme, _)) => {
            return Err(EmitError::Usage(format!(
                "AIRLOCK_NATS_URL scheme {scheme:?} is not supported by airlock-emit (plain nats:// only)"
            )));
        }
        None => url,
    };
    let rest = rest.split(',').next().unwrap_or(rest).trim_end_matches('/');
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let host_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:4222")
    };
    let (user, pass) = match auth.map(|a| a.split_once(':')) {
        None => (None, None),
        Some(Some((u, p))) => (Some(u.to_string()), Some(p.to_string())),
        Some(None) => (auth.map(str::to_string), None),
    };
    Ok(Url {
        host_port,
        user,
        pass,
    })
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    deadline: Instant,
}

impl Conn {
    fn left(&self) -> Result<Duration, EmitError> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                EmitError::Unreachable(
                    "NATS did not answer in time; try again (or raise --timeout)".into(),
                )
            })
    }

    fn line(&mut self) -> Result<String, EmitError> {
        let left = self.left()?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(io_error)?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(io_error)?;
        if n == 0 {
            return Err(EmitError::Unreachable("NATS closed the connection".into()));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, EmitError> {
        let mut buf = vec![0u8; n + 2];
        self.reader.read_exact(&mut buf).map_err(io_error)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), EmitError> {
        self.writer.write_all(bytes).map_err(io_error)
    }
}

fn io_error(e: std::io::Error) -> EmitError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => EmitError::Unreachable(
            "NATS did not answer in time; try again (or raise --timeout)".into(),
        ),
        _ => EmitError::Unreachable(format!("NATS connection failed: {e}")),
    }
}

/// Publishes `body` with `headers` to `subject` as a request and returns the JetStream acknowledgement
/// (`stream` and `seq`), or why it was refused.
pub(crate) fn publish_acked(
    url: &str,
    subject: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<String, EmitError> {
    let u = parse_url(url)?;
    let deadline = Instant::now() + timeout;
    let addr = u
        .host_port
        .to_socket_addrs()
        .map_err(|e| EmitError::Unreachable(format!("cannot resolve {}: {e}", u.host_port)))?
        .next()
        .ok_or_else(|| EmitError::Unreachable(format!("{} has no address", u.host_port)))?;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        EmitError::Unreachable(format!("cannot connect to NATS at {}: {e}", u.host_port))
    })?;
    let writer = stream.try_clone().map_err(io_error)?;
    let mut c = Conn {
        reader: BufReader::new(stream),
        writer,
        deadline,
    };
    let info = c.line()?;
    let info: serde_json::Value = info
        .strip_prefix("INFO ")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| EmitError::Unreachable(format!("{} is not a NATS server", u.host_port)))?;
    if info.get("headers") != Some(&serde_json::Value::Bool(true)) {
        return Err(EmitError::Unreachable(
            "the NATS server does not support headers".into(),
        ));
    }
    if info.get("tls_required") == Some(&serde_json::Value::Bool(true)) {
        return Err(EmitError::Usage(
            "the NATS server requires TLS, which airlock-emit does not speak".into(),
        ));
    }
    let mut connect = String::from(
        r#"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1,"lang":"rust","version":"1","name":"airlock-emit""#,
    );
    match (&u.user, &u.pass) {
        (Some(user), Some(pass)) => connect.push_str(&format!(
            r#","user":{},"pass":{}"#,
            json_str(user),
            json_str(pass)
        )),
        (Some(token), None) => connect.push_str(&format!(r#","auth_token":{}"#, json_str(token))),
        _ => {}
    }
    connect.push('}');
    let inbox = format!(
        "_INBOX.emit{}{}",
        std::process::id(),
        deadline.elapsed().as_nanos()
    );
    let mut head = String::from("NATS/1.0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = format!(
        "CONNECT {connect}\r\nPING\r\nSUB {inbox} 1\r\nHPUB {subject} {inbox} {} {}\r\n{head}",
        head.len(),
        head.len() + body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    c.send(&out)?;
    loop {
        let line = c.line()?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("PING") => c.send(b"PONG\r\n")?,
            Some("PONG") | Some("+OK") | Some("INFO") => {}
            Some("-ERR") => {
                let what = line.trim_start_matches("-ERR").trim().trim_matches('\'');
                let lower = what.to_ascii_lowercase();
                return Err(
                    if lower.contains("permission") || lower.contains("authoriz") {
                        EmitError::Refused(format!(
                            "NATS refused: {what} (this identity may not publish to {subject})"
                        ))
                    } else {
                        EmitError::Unreachable(format!("NATS error: {what}"))
                    },
                );
            }
            Some("MSG") => {
                let n: usize = line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let payload = c.bytes(n)?;
                return ack(&payload, subject);
            }
            Some("HMSG") => {
                let mut nums = line.rsplit(' ');
                let total: usize = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let hdr: usize = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let all = c.bytes(total)?;
                let status = String::from_utf8_lossy(&all[..hdr.min(all.len())]).into_owned();
                if status.starts_with("NATS/1.0 503") {
                    return Err(EmitError::Unreachable(format!(
                        "no stream stores {subject} (no responders): is this Airlock's NATS?"
                    )));
                }
                return ack(&all[hdr.min(all.len())..], subject);
            }
            _ => {}
        }
    }
}

/// Reads a JetStream publish acknowledgement.
fn ack(payload: &[u8], subject: &str) -> Result<String, EmitError> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|_| {
        EmitError::Refused(format!(
            "unexpected reply to the publish on {subject}: {}",
            String::from_utf8_lossy(payload)
        ))
    })?;
    if let Some(err) = v.get("error") {
        let what = err
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("unknown error");
        return Err(EmitError::Refused(format!(
            "the results stream refused the result: {what}"
        )));
    }
    let stream = v.get("stream").and_then(|s| s.as_str()).unwrap_or("?");
    let seq = v.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
    let dup = if v.get("duplicate").and_then(|d| d.as_bool()) == Some(true) {
        ", duplicate"
    } else {
        ""
    };
    Ok(format!("stream {stream}, sequence {seq}{dup}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_address_and_credentials() {
        let u = parse_url("nats://alice:s3cret@127.0.0.1:4333").expect("parses");
        assert_eq!(u.host_port, "127.0.0.1:4333");
        assert_eq!(
            (u.user.as_deref(), u.pass.as_deref()),
            (Some("alice"), Some("s3cret"))
        );
        let u = parse_url("nats://tok@nats").expect("parses");
        assert_eq!(
            (u.host_port.as_str(), u.user.as_deref(), u.pass),
            ("nats:4222", Some("tok"), None)
        );
        assert!(parse_url("tls://x:4222").is_err());
    }

    #[test]
    fn a_stream_error_is_a_refusal() {
        assert!(matches!(
            ack(br#"{"error":{"code":503,"description":"no space"}}"#, "s"),
            Err(EmitError::Refused(_))
        ));
        assert!(ack(br#"{"stream":"AIRLOCK_RESULTS","seq":4}"#, "s").is_ok());
    }
}
