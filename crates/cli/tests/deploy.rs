//! The deployment files in `deploy/` stay true to the binary: the compose and Kubernetes node
//! configurations load as `mcloud node` loads them and agree with the ports and names the
//! compose file and the manifests publish; the Secret that `deploy/k8s/credentials.sh` makes
//! from a real enrolment holds every key the StatefulSets mount; and, where the linters are
//! installed (`.ci/run` installs them), `hadolint` passes the Dockerfile and
//! `kubernetes-validate --strict` passes the manifests and the generated Secrets.

mod common;
use common::BIN;

use mcloud::config::{Deployment, NodeConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

const PARTIES: usize = 3;

#[test]
fn compose_configs_load_and_agree_with_the_published_ports() {
    let compose = std::fs::read_to_string(deploy().join("compose/compose.yaml")).unwrap();
    let manifests = std::fs::read_to_string(deploy().join("k8s/mcloud.yaml")).unwrap();
    for p in 0..PARTIES {
        let path = deploy().join(format!("compose/party{p}.toml"));
        let config = NodeConfig::load(&path).unwrap();
        let catalog = config.catalog.as_ref().expect("a catalog voter");
        let cloud = config.cloud.as_ref().expect("a cloud");
        assert_eq!(cloud.party as usize, p);
        assert_eq!(cloud.parties as usize, PARTIES);
        assert_eq!(catalog.node_id, p as u64 + 1);
        assert_eq!(catalog.peers.len(), PARTIES);
        for (port, listen) in [(7000 + p, &catalog.listen), (7100 + p, &cloud.listen)] {
            assert_eq!(listen.to_string(), format!("0.0.0.0:{port}"));
            assert!(
                compose.contains(&format!("127.0.0.1:{port}:{port}")),
                "compose.yaml does not publish {port}"
            );
            assert!(
                manifests.contains(&format!("port: {port}, targetPort: {port}")),
                "mcloud.yaml's Service party{p} does not carry {port}"
            );
        }
        assert!(compose.contains(&format!("./party{p}.toml:/etc/mcloud/node.toml:ro")));
        assert!(compose.contains(&format!("--name party{p}")));
        assert!(manifests.contains(&format!("secretName: mcloud-party{p}-credentials")));
        for peer in &catalog.peers {
            let party = peer.id - 1;
            assert_eq!(
                peer.url,
                format!("https://party{party}:{}", 7000 + party),
                "peers are named by their service"
            );
        }
    }
    let d = Deployment::load(&deploy().join("compose/deployment.toml")).unwrap();
    assert_eq!(d.clouds.len(), PARTIES);
    for (p, c) in d.clouds.iter().enumerate() {
        assert_eq!(c.url, format!("https://party{p}:{}", 7100 + p));
    }
}

/// Runs `tool` if it is on PATH; None (and a SKIPPED line) if not.
fn lint(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED {tool}: not installed (.ci/run installs it from PyPI)");
            None
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

fn passed(tool: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{tool} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_and_manifests_pass_their_linters_and_secrets_match_the_mounts() {
    let dockerfile = deploy().join("Dockerfile");
    if let Some(out) = lint("hadolint", &[dockerfile.to_str().unwrap()]) {
        passed("hadolint", &out);
    }

    // A real enrolment, as the manifests' header says to make it.
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("trust");
    let enrol = Command::new(BIN)
        .args(["authority", "local", "--dir"])
        .arg(&trust)
        .args(["--name", "party0", "--name", "party1", "--name", "party2"])
        .output()
        .unwrap();
    passed("mcloud authority local", &enrol);
    let secrets = Command::new("bash")
        .arg(deploy().join("k8s/credentials.sh"))
        .arg(&trust)
        .output()
        .unwrap();
    passed("credentials.sh", &secrets);
    let secrets = String::from_utf8(secrets.stdout).unwrap();
    let secrets_file = dir.path().join("secrets.yaml");
    std::fs::write(&secrets_file, &secrets).unwrap();

    // Every key a StatefulSet mounts is in its party's Secret.
    let manifests = std::fs::read_to_string(deploy().join("k8s/mcloud.yaml")).unwrap();
    let mut mounted = 0;
    for (p, statefulset) in manifests.split("kind: StatefulSet").skip(1).enumerate() {
        let secret = secrets
            .split("kind: Secret")
            .nth(p + 1)
            .unwrap_or_else(|| panic!("no Secret for party {p}"));
        assert!(secret.contains(&format!("name: mcloud-party{p}-credentials")));
        for line in statefulset.lines().filter(|l| l.contains("{ key: ")) {
            let key = line
                .split("key: ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .unwrap();
            assert!(
                secret.contains(&format!("\n  {key}: ")),
                "party {p}'s Secret lacks {key}"
            );
            mounted += 1;
        }
    }
    assert_eq!(
        mounted,
        PARTIES * 17,
        "each party mounts 17 credential files"
    );

    let manifest = deploy().join("k8s/mcloud.yaml");
    for file in [manifest.as_path(), secrets_file.as_path()] {
        let path = file.to_str().unwrap();
        if let Some(out) = lint("kubernetes-validate", &["--strict", "--quiet", path]) {
            passed("kubernetes-validate", &out);
        }
    }
}
