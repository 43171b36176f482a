//! A local restic repository for a test's backup target: a directory of the test's holding
//! the repository's password file, with the repository itself made by the agents on first
//! use.

use std::path::PathBuf;

use crate::{TempDir, TestAgent};

/// The password file and location of a repository in a temporary directory.
pub struct LocalRepo {
    pub dir: TempDir,
    pub password: PathBuf,
    /// The repository's location as restic takes it (a path).
    pub location: String,
}

impl LocalRepo {
    pub fn new(name: &str) -> LocalRepo {
        let dir = TempDir::new(name);
        let password = dir.path().join("password");
        std::fs::write(&password, "the co-op's restic password\n").expect("a password file");
        let location = dir.path().join("repo").display().to_string();
        LocalRepo {
            dir,
            password,
            location,
        }
    }

    /// `hearth backup target put NAME` of this repository, as `agent`'s admin.
    pub fn put_target(&self, agent: &TestAgent, name: &str) {
        agent.cli(&[
            "backup",
            "target",
            "put",
            name,
            "--location",
            &self.location,
            "--password-file",
            self.password.to_str().expect("a UTF-8 path"),
        ]);
    }
}
