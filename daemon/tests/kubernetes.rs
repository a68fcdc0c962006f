//! The Kubernetes manifests under `deploy/kubernetes/`: valid against the
//! API's schemas (strict, offline, `deploy/kubernetes/validate`), their
//! kcld settings accepted by kcld itself, and the properties a fleet relies
//! on: a grace period above kcld's shutdown budget, readiness on /readyz,
//! a unique worker id per pod, and a disruption budget for the fleet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn validate(files: &[&Path]) -> std::process::Output {
    Command::new(root().join("deploy/kubernetes/validate"))
        .args(files)
        .output()
        .expect("deploy/kubernetes/validate")
}

/// Every document of every manifest, as JSON (PyYAML from the validator's
/// virtualenv reads the YAML).
fn documents() -> Vec<(String, serde_json::Value)> {
    let python = root().join("target/k8s-validate/bin/python");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    docs
}

#[test]
fn the_manifests_are_valid_and_a_fleet_hands_its_shards_over_in_time() {
    let out = validate(&[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The validator rejects what Kubernetes would (a misspelt field).
    let broken = std::env::temp_dir().join(format!("kcld-k8s-{}.yaml", std::process::id()));
    let fleet = std::fs::read_to_string(root().join("deploy/kubernetes/fleet.yaml")).unwrap();
    std::fs::write(
        &broken,
        fleet.replace(
            "terminationGracePeriodSeconds",
            "terminationGracePeriodSecond",
        ),
    )
    .unwrap();
    assert!(!validate(&[&broken]).status.success());
    let _ = std::fs::remove_file(&broken);

    let docs = documents();
    let mut deployments = 0;
    for (file, doc) in &docs {
        if doc["kind"] != "Deployment" {
            continue;
        }
        deployments += 1;
        let pod = &doc["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().unwrap();
        let kcld = containers
            .iter()
            .find(|c| c["name"] == "kcld")
            .unwrap_or_else(|| panic!("{file}: no kcld container"));
        let mut env: HashMap<String, String> = HashMap::new();
        for var in kcld["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap().to_owned();
            match var["value"].as_str() {
                Some(v) => env.insert(name, v.to_owned()),
                None => {
                    // The worker id must differ per pod: the pod's name.
                    assert_eq!(name, "KCLD_WORKER_ID", "{file}");
                    assert_eq!(
                        var["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
                        "{file}"
                    );
                    env.insert(name, "pod-1".into())
                }
            };
        }
        // kcld accepts every setting as written.
        let check = Command::new(env!("CARGO_BIN_EXE_kcld"))
            .arg("check-config")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        // The grace period covers kcld's shutdown budget with room to spare.
        let budget_ms: u64 = env
            .get("KCLD_SHUTDOWN_TIMEOUT_MS")
            .map_or(20_000, |v| v.parse().unwrap());
        let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace_s * 1000 >= budget_ms + 5_000,
            "{file}: grace period {grace_s} s, shutdown budget {budget_ms} ms"
        );
        assert_eq!(
            kcld["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{file}"
        );
        assert_eq!(
            kcld["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{file}"
        );
    }
    assert!(deployments >= 2, "the sidecar and the fleet");

    // The fleet's pods are covered by a disruption budget.
    let labels = |name: &str| {
        docs.iter()
            .find(|(_, d)| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
            .map(|(_, d)| d["spec"]["template"]["metadata"]["labels"].clone())
            .unwrap()
    };
    let pdb = docs
        .iter()
        .find(|(_, d)| d["kind"] == "PodDisruptionBudget")
        .map(|(_, d)| d)
        .expect("a PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        labels("orders-fleet")
    );
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}
