//! A wall clock a test can move for the agents it starts: Debian's libfaketime, preloaded
//! into the `hearth` processes only (`FAKETIME_ONLY_CMDS`), reads its offset from a file on
//! every call. Only the wall clock moves: the monotonic clock, which timers, Raft and
//! gossip use, stays real, as it does when an operator's NTP steps a server's clock.

use std::path::{Path, PathBuf};

/// An offset from real time, in a file the agents' libfaketime reads.
pub struct FakeClock {
    file: PathBuf,
    offset_s: i64,
}

/// Where Debian's `libfaketime` package puts the library, whatever the architecture.
fn library() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketime.so.1"))
            .find(|p| p.is_file())
    });
    found.expect("libfaketime not found: install the `libfaketime` package (scripts/test.sh does)")
}

impl FakeClock {
    /// A clock at real time, its offset kept in `dir`.
    pub fn new(dir: &Path) -> FakeClock {
        let clock = FakeClock {
            file: dir.join("faketime"),
            offset_s: 0,
        };
        clock.write();
        clock
    }

    fn write(&self) {
        std::fs::write(&self.file, format!("{:+}\n", self.offset_s)).expect("write faketime");
    }

    /// The environment that puts an agent on this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", library().display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            ("FAKETIME_ONLY_CMDS", "hearth".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Unix seconds on this clock now.
    pub fn now(&self) -> u64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        real.saturating_add_signed(self.offset_s)
    }

    /// Moves the agents' clock to `unix_s` (forward or back) from this moment on.
    pub fn set(&mut self, unix_s: u64) {
        let real = self.now() as i64 - self.offset_s;
        self.offset_s = unix_s as i64 - real;
        self.write();
    }
}
