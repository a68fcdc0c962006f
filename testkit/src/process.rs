//! A kcld process under test: started with exactly the environment a test
//! gives it, its stdout lines collected, stopped gracefully or killed; and
//! what tests read back from it (HTTP endpoints, metrics, record lines).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A running kcld process with its stdout lines collected.
pub struct Kcld {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Kcld {
    /// Starts `binary` with `args` and exactly `env` on top of a clean
    /// environment (PATH and HOME kept), so no stray variable changes it.
    /// Unless `env` says otherwise, the ops listener takes a free port
    /// (`KCLD_OPS__LISTEN=127.0.0.1:0`), so instances never collide; see
    /// [`Kcld::ops_addr`].
    pub fn spawn(binary: &str, args: &[&str], env: &HashMap<String, String>) -> Result<Self> {
        let mut env = env.clone();
        env.entry("KCLD_OPS__LISTEN".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        let env = &env;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME"))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawn {binary}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Ok(Kcld {
            child,
            lines: rx,
            stderr: log,
        })
    }

    /// Collects stdout lines until `n` arrived or `within` passed.
    pub async fn take_lines(&mut self, n: usize, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::with_capacity(n.min(4096));
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => out.push(line),
                _ => break,
            }
        }
        out
    }

    /// Lines that arrive within `quiet`, for checking that nothing more comes.
    pub async fn drain_for(&mut self, quiet: Duration) -> Vec<String> {
        self.take_lines(usize::MAX, quiet).await
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The address of the ops listener, once kcld logged it.
    pub async fn ops_addr(&self, within: Duration) -> Result<std::net::SocketAddr> {
        let deadline = Instant::now() + within;
        loop {
            let text = self.stderr_text();
            if let Some(rest) = text.split("metrics and health on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr
                    .parse()
                    .with_context(|| format!("ops address {addr:?}"));
            }
            if Instant::now() > deadline {
                bail!("kcld did not open its ops listener:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id, for signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to checkpoint or release. Lines
    /// it printed before dying can still be taken afterwards.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(self, within: Duration) -> Result<std::process::ExitStatus> {
        self.signal("TERM", within).await
    }

    /// Sends signal `name` (`TERM`, `HUP`, ...) and waits up to `within`
    /// for the process to exit (killing it after that).
    pub async fn signal(
        mut self,
        name: &str,
        within: Duration,
    ) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("kcld did not exit within {within:?} of SIG{name}")
            }
        }
    }

    /// SIGTERM, and panics unless kcld exits 0 within `within` (with its
    /// stderr in the message).
    pub async fn stop_cleanly(self, within: Duration) {
        let stderr = self.stderr.clone();
        let status = self.terminate(within).await;
        let text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        match status {
            Ok(s) if s.success() => {}
            other => panic!("kcld did not stop cleanly ({other:?}):\n{text}"),
        }
    }

    /// Waits for the process to exit by itself: its exit code, its
    /// `kcld: error:` lines and all of stderr.
    pub async fn exited(self, within: Duration) -> Result<Exited> {
        let (status, stderr) = self.wait_with_stderr(within).await?;
        let errors = stderr
            .lines()
            .filter(|l| l.starts_with("kcld: error:"))
            .map(str::to_owned)
            .collect();
        Ok(Exited {
            code: status.code(),
            errors,
            stderr,
        })
    }

    /// Waits for the process to exit by itself; its status and everything
    /// it wrote to stderr.
    pub async fn wait_with_stderr(
        self,
        within: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        let stderr = self.stderr.clone();
        let status = self.wait(within).await?;
        // Let the stderr reader catch the last line.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = stderr.lock().map(|t| t.clone()).unwrap_or_default();
        Ok((status, text))
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(mut self, within: Duration) -> Result<std::process::ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("kcld did not exit within {within:?}")
            }
        }
    }
}

/// A kcld process that exited by itself.
#[derive(Debug)]
pub struct Exited {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its `kcld: error:` lines.
    pub errors: Vec<String>,
    /// All it wrote to stderr.
    pub stderr: String,
}

impl Exited {
    /// The one error line of a process that failed; panics, showing its
    /// stderr, when it succeeded or said more or less than one error.
    pub fn one_error(&self) -> &str {
        assert_ne!(self.code, Some(0), "kcld succeeded:\n{}", self.stderr);
        assert_eq!(self.errors.len(), 1, "not one error line:\n{}", self.stderr);
        &self.errors[0]
    }
}

/// Runs `kcld doctor --json` with `env`, expects it to exit 1 (a check
/// failed), and returns every check it reported.
pub async fn doctor_checks(
    binary: &str,
    env: &HashMap<String, String>,
) -> Result<Vec<serde_json::Value>> {
    let mut doctor = Kcld::spawn(binary, &["doctor", "--json"], env)?;
    let out = doctor.drain_for(Duration::from_secs(30)).await.join("\n");
    let code = doctor.wait(Duration::from_secs(30)).await?.code();
    if code != Some(1) {
        bail!("kcld doctor exited with {code:?}, not 1:\n{out}");
    }
    Ok(serde_json::from_str(&out)?)
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

/// The sum of every series of metric `name` in a Prometheus text page, and
/// how many series there were.
pub fn metric_sum(page: &str, name: &str) -> (f64, usize) {
    let mut sum = 0.0;
    let mut n = 0;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let series_name = line.split(['{', ' ']).next().unwrap_or_default();
        if series_name == name {
            if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sum += v;
                n += 1;
            }
        }
    }
    (sum, n)
}

/// A record line of kcld's stdout, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub shard_id: String,
    pub sequence_number: String,
    /// Present for user records of a KPL aggregate.
    pub sub_sequence_number: Option<u64>,
    pub partition_key: String,
    pub data: Vec<u8>,
    /// The record's stream and its region, as Lambda names them.
    pub event_source_arn: String,
    pub aws_region: String,
}

impl Delivered {
    pub fn parse(line: &str) -> Result<Self> {
        use base64::Engine;
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        let k = &v["kinesis"];
        let event_id = v["eventID"].as_str().context("eventID")?;
        let seq = k["sequenceNumber"].as_str().context("sequenceNumber")?;
        let sub = k["subSequenceNumber"].as_u64();
        let suffix = match sub {
            Some(sub) => format!(":{seq}:{sub}"),
            None => format!(":{seq}"),
        };
        let shard_id = event_id.strip_suffix(&suffix).with_context(|| {
            format!("eventID {event_id} is not shardId:sequenceNumber[:subSequenceNumber]")
        })?;
        Ok(Delivered {
            shard_id: shard_id.to_owned(),
            sequence_number: seq.to_owned(),
            sub_sequence_number: sub,
            partition_key: k["partitionKey"]
                .as_str()
                .context("partitionKey")?
                .to_owned(),
            data: base64::engine::general_purpose::STANDARD
                .decode(k["data"].as_str().context("data")?)
                .context("data is not base64")?,
            event_source_arn: v["eventSourceARN"].as_str().unwrap_or_default().to_owned(),
            aws_region: v["awsRegion"].as_str().unwrap_or_default().to_owned(),
        })
    }
}
