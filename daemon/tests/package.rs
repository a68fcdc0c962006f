//! The Debian package, as an operator on EC2 installs it: built by
//! `deploy/debian/build` around this test's kcld binary, installed with
//! `dpkg -i` on this machine (the test needs root and dpkg), then
//! upgraded over itself with an edited configuration, then purged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_upgrades_and_purges_cleanly() {
    let is_root = text(&run("id", &["-u"])).trim() == "0";
    assert!(
        is_root,
        "installing the package needs root (dpkg -i); run the tests as root, as CI does"
    );
    let out_dir = std::env::temp_dir().join(format!("kcld-deb-{}", std::process::id()));
    let built = run(
        root().join("deploy/debian/build").to_str().unwrap(),
        &[
            "--binary",
            env!("CARGO_BIN_EXE_kcld"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    let deb = text(&built).trim().to_owned();
    assert!(deb.ends_with(".deb"), "{deb}");

    // A package left by an interrupted run would make this one an upgrade.
    let _ = Command::new("dpkg").args(["--purge", "kcld"]).output();
    run("dpkg", &["-i", &deb]);

    let version = text(&run("/usr/bin/kcld", &["--version"]));
    assert_eq!(
        version.trim(),
        format!("kcld {}", env!("CARGO_PKG_VERSION"))
    );
    // The installed unit names the installed binary and passes systemd's
    // own checks.
    let unit = std::fs::read_to_string("/lib/systemd/system/kcld.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/kcld run"), "{unit}");
    run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/kcld.service"],
    );
    // The system user the unit runs as, without a login shell.
    let user = text(&run("getent", &["passwd", "kcld"]));
    assert!(user.trim_end().ends_with("/usr/sbin/nologin"), "{user}");
    // The configuration is the example, readable by that user only.
    let example = std::fs::read_to_string(root().join("config/kcld.example.toml")).unwrap();
    assert_eq!(
        std::fs::read_to_string("/etc/kcld/kcld.toml").unwrap(),
        example
    );
    let mode = text(&run("stat", &["-c", "%a %U %G", "/etc/kcld/kcld.toml"]));
    assert_eq!(mode.trim(), "640 root kcld");
    // kcld(1), generated from the command line's help.
    let man = text(&run(
        "sh",
        &["-c", "gzip -dc /usr/share/man/man1/kcld.1.gz"],
    ));
    assert!(man.contains(".TH kcld 1"), "{man}");
    assert!(man.contains("KCLD CHECK-CONFIG") && man.contains("\\-\\-config"));

    // Installed again over itself (an upgrade): the operator's edits to
    // the configuration are kept, and nothing prompts.
    let edited = format!("{example}\n# edited by the operator\n");
    std::fs::write("/etc/kcld/kcld.toml", &edited).unwrap();
    run("dpkg", &["--force-confold", "-i", &deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/kcld/kcld.toml").unwrap(),
        edited
    );
    let status = text(&run("dpkg", &["-s", "kcld"]));
    assert!(status.contains("Status: install ok installed"), "{status}");

    // Purged: binary, unit, configuration and user gone.
    run("dpkg", &["--purge", "kcld"]);
    for gone in [
        "/usr/bin/kcld",
        "/lib/systemd/system/kcld.service",
        "/etc/kcld/kcld.toml",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    assert!(!Command::new("getent")
        .args(["passwd", "kcld"])
        .status()
        .unwrap()
        .success());
    let _ = std::fs::remove_dir_all(out_dir);
}
