//! The Debian package from `scripts/build-deb.sh`, built from the binary under test and
//! installed on this machine with dpkg: it builds reproducibly; the previous release's
//! package (built by that release's own script from `target/previous-release`) installs the
//! user and directories the unit needs, and this one upgrades it in place, keeping the data,
//! with the binary, the unit (which `systemd-analyze verify` accepts), completions and man
//! pages; it keeps the data when removed and deletes it when purged.

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

/// The previous release's package (`dist/previous-release`), built by that release's own
/// `scripts/build-deb.sh` from its binary (`scripts/build-previous-release.sh` made both).
fn build_previous(out: &Path) -> (String, PathBuf) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("previous-release");
    let tag = std::fs::read_to_string(root.join("tag"))
        .unwrap_or_else(|e| panic!("{}/tag: {e}: run ./scripts/build-previous-release.sh target/previous-release (scripts/test.sh does)", root.display()));
    let version = tag.trim().trim_start_matches('v').to_owned();
    let output = Command::new(root.join("src/scripts/build-deb.sh"))
        .arg("--binary")
        .arg(root.join("hearth"))
        .args(["--version", &version, "--compress", "none", "--out"])
        .arg(out)
        .current_dir(root.join("src"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the previous release's build-deb.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (version, deb)
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
    let this = env!("CARGO_PKG_VERSION");
    let first = build(this, &dir.path().join("a"));
    let again = build(this, &dir.path().join("b"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&again).unwrap(),
        "the package builds reproducibly"
    );

    // The previous release installs; a member's data and the admin's config are there.
    let (previous, old) = build_previous(&dir.path().join("old"));
    let _installed = Installed;
    run("dpkg", &["-i", old.to_str().unwrap()]);
    assert_eq!(installed_version().as_deref(), Some(previous.as_str()));
    std::fs::write("/var/lib/hearth/kept", "a member's data").unwrap();
    std::fs::write("/etc/hearth/hearth.toml", "# the admin's config\n").unwrap();

    // This build upgrades it in place and keeps both.
    run("dpkg", &["-i", first.to_str().unwrap()]);
    assert_eq!(installed_version().as_deref(), Some(this));
    assert!(Path::new("/var/lib/hearth/kept").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/hearth/hearth.toml").unwrap(),
        "# the admin's config\n"
    );
    let version = run("/usr/bin/hearth", &["--version"]);
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert_eq!(
        version.trim(),
        format!("hearth {}", env!("CARGO_PKG_VERSION"))
    );
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

    // Removal keeps the data; purge removes it.
    run("dpkg", &["--remove", "hearth"]);
    assert!(!Path::new("/usr/bin/hearth").exists());
    assert!(Path::new("/var/lib/hearth/kept").exists());
    run("dpkg", &["--purge", "hearth"]);
    assert!(!Path::new("/var/lib/hearth").exists());
    assert!(!Path::new("/etc/hearth").exists());
    assert_eq!(installed_version(), None);
}
