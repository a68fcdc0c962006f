//! A stack of its own for a test that stops and restarts the emulators:
//! the same `deploy/local/stack` script, in its own directory, on free
//! ports, with both emulators' data kept on disk so that a restart keeps
//! streams, records and lease tables. Other tests keep using the shared
//! stack undisturbed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::Stack;

/// A running private stack; stopped (and its directory removed) on drop.
pub struct PrivateStack {
    pub stack: Stack,
    dir: PathBuf,
    vars: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(vars: &HashMap<String, String>, args: &[&str]) -> Result<String> {
    let out = Command::new(script())
        .args(args)
        .envs(vars)
        .output()
        .context("deploy/local/stack")?;
    if !out.status.success() {
        bail!(
            "stack {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl PrivateStack {
    /// Starts both emulators with persistence on.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique_name("kcld-stack"));
        let vars = HashMap::from([
            ("KCLD_STACK_DIR".to_owned(), dir.display().to_string()),
            (
                "KCLD_STACK_KINESIS_PORT".to_owned(),
                free_port()?.to_string(),
            ),
            (
                "KCLD_STACK_KINESIS_TLS_PORT".to_owned(),
                free_port()?.to_string(),
            ),
            (
                "KCLD_STACK_DYNAMODB_PORT".to_owned(),
                free_port()?.to_string(),
            ),
            ("KCLD_STACK_PERSIST".to_owned(), "true".to_owned()),
            // Kinesis and the lease table only.
            ("KCLD_STACK_STREAMS".to_owned(), "false".to_owned()),
        ]);
        run(&vars, &["up"])?;
        let exported: HashMap<String, String> = run(&vars, &["env"])?
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let stack = Stack::from_vars(|name| {
            exported
                .get(name)
                .cloned()
                .with_context(|| format!("{name} missing from `stack env`"))
        });
        let private = PrivateStack {
            stack: stack?,
            dir,
            vars,
        };
        Ok(private)
    }

    /// Stops one emulator: "kinesis" or "dynamodb".
    pub fn stop(&self, name: &str) -> Result<()> {
        run(&self.vars, &["stop", name]).map(|_| ())
    }

    /// Starts it again, with the data it had.
    pub fn start_again(&self, name: &str) -> Result<()> {
        run(&self.vars, &["start", name]).map(|_| ())
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = run(&self.vars, &["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
