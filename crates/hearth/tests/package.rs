//! The Debian package from `scripts/build-deb.sh`, built from the binary under test and
//! installed on this machine with dpkg: it builds reproducibly, installs the binary, the
//! unit (which `systemd-analyze verify` accepts), completions and man pages, and the user
//! and directories the unit needs, upgrades in place, keeps the data when removed and deletes it when purged.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hearth_testkit::TempDir;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `program args`; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `scripts/build-deb.sh` of the binary under test at `version`, into `out`; the .deb's path.
fn build(version: &str, out: &Path) -> PathBuf {
    let output = Command::new(workspace().join("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(bin())
        .args(["--version", version, "--compress", "none", "--out"])
        .arg(out)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "hearth"]).output();
    }
}

fn installed_version() -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", "hearth"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.strip_prefix("install ok installed ")
        .map(str::to_owned)
}

#[test]
fn the_package_installs_upgrades_removes_and_purges_cleanly() {
    assert_eq!(
        installed_version(),
        None,
        "a hearth package is installed on this machine; this test would replace it"
    );
    let dir = TempDir::new("deb");
    let first = build("0.1.0", &dir.path().join("a"));
    let again = build("0.1.0", &dir.path().join("b"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&again).unwrap(),
        "the package builds reproducibly"
    );

    let _installed = Installed;
    run("dpkg", &["-i", first.to_str().unwrap()]);
    assert_eq!(installed_version().as_deref(), Some("0.1.0"));
    let version = run("/usr/bin/hearth", &["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("hearth "));
    let user = run("getent", &["passwd", "hearth"]);
    let uid: u32 = String::from_utf8_lossy(&user.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let data = std::fs::metadata("/var/lib/hearth").unwrap();
    assert_eq!((data.uid(), data.mode() & 0o777), (uid, 0o700));
    let config = std::fs::metadata("/etc/hearth").unwrap();
    assert_eq!((config.uid(), config.mode() & 0o777), (0, 0o750));
    for file in [
        "/usr/share/bash-completion/completions/hearth",
        "/usr/share/zsh/vendor-completions/_hearth",
        "/usr/share/man/man1/hearth.1.gz",
        "/usr/share/man/man1/hearth-doctor.1.gz",
    ] {
        assert!(Path::new(file).is_file(), "{file}");
    }
    let completions = std::fs::read_to_string("/usr/share/bash-completion/completions/hearth");
    assert!(completions.unwrap().contains("doctor"));
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/hearth.service"],
    );
    assert!(
        verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // An upgrade replaces the package in place.
    let newer = build("0.1.0+up1", &dir.path().join("c"));
    run("dpkg", &["-i", newer.to_str().unwrap()]);
    assert_eq!(installed_version().as_deref(), Some("0.1.0+up1"));

    // Removal keeps the data; purge removes it.
    std::fs::write("/var/lib/hearth/kept", "a member's data").unwrap();
    run("dpkg", &["--remove", "hearth"]);
    assert!(!Path::new("/usr/bin/hearth").exists());
    assert!(Path::new("/var/lib/hearth/kept").exists());
    run("dpkg", &["--purge", "hearth"]);
    assert!(!Path::new("/var/lib/hearth").exists());
    assert!(!Path::new("/etc/hearth").exists());
    assert_eq!(installed_version(), None);
}
